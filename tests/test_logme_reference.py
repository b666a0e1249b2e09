"""LogME against an independent reference: the evidence of Bayesian linear regression maximised by brute force.

`transferability.logme` maximises the evidence with MacKay's fixed point on one SVD of the features. The
reference here shares none of that: for each one-hot label column t it evaluates the log marginal
likelihood log N(t | 0, β⁻¹I + α⁻¹FFᵀ) (Bishop, PRML eq. 3.77–3.86: w ~ N(0, α⁻¹I), t | w ~ N(Fw, β⁻¹I))
directly with a dense covariance, takes the best point of a log-grid over (α, β) and refines it with
Nelder–Mead. The cases include N < D features of low rank (zero singular values: the (D − r)·log α term of
the log-determinant matters) scaled so that the optimal α is far from 1. The fixed point agrees with the
maximum to 1e-4 (relative) on every case.
"""

import numpy as np
import pytest
import scipy.optimize

from jaxtransfer import transferability


def log_evidence(f: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
  """log p(t | α, β) of Bayesian linear regression, from the marginal t ~ N(0, β⁻¹I + α⁻¹FFᵀ)."""
  n = len(t)
  cov = np.eye(n) / beta + f @ f.T / alpha
  _, logdet = np.linalg.slogdet(cov)
  return -0.5 * (n * np.log(2 * np.pi) + logdet + t @ np.linalg.solve(cov, t))


def log_evidence_textbook(f: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
  """The same quantity in PRML's form (3.86): D/2 log α + N/2 log β − E(m) − ½ log|A| − N/2 log 2π."""
  n, d = f.shape
  a = alpha * np.eye(d) + beta * f.T @ f
  m = beta * np.linalg.solve(a, f.T @ t)
  e = beta / 2 * np.sum((t - f @ m) ** 2) + alpha / 2 * m @ m
  _, logdet_a = np.linalg.slogdet(a)
  return d / 2 * np.log(alpha) + n / 2 * np.log(beta) - e - 0.5 * logdet_a - n / 2 * np.log(2 * np.pi)


def max_log_evidence(f: np.ndarray, t: np.ndarray) -> float:
  """max over (α, β) of `log_evidence`: best point of a log-grid e^-10 … e^10, then Nelder–Mead in log space."""
  neg = lambda z: -log_evidence(f, t, np.exp(z[0]), np.exp(z[1]))
  grid = np.linspace(-10, 10, 41)
  start = min(((a, b) for a in grid for b in grid), key=neg)
  res = scipy.optimize.minimize(neg, start, method='Nelder-Mead',
                                options={'xatol': 1e-7, 'fatol': 1e-10, 'maxiter': 4000})
  return float(-min(res.fun, neg(start)))


def reference_logme(f: np.ndarray, y: np.ndarray, k: int) -> float:
  """Mean over classes of the maximised evidence per example (LogME's definition)."""
  return float(np.mean([max_log_evidence(f, (y == c).astype(np.float64)) / len(y) for c in range(k)]))


def features(n: int, d: int, k: int, *, rank: int | None = None, scale: float = 1.0, seed: int = 0):
  """Class-clustered features (N, D) for labels 0…k−1; with `rank`, F = Z W has rank `rank` < min(N, D)."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % k
  width = rank or d
  z = rng.normal(size=(n, width)) + 1.5 * rng.normal(size=(k, width))[y]
  x = z @ rng.normal(size=(rank, d)) if rank else z
  return scale * x, y


CASES = {
    'n40_d6': dict(n=40, d=6, k=3),
    'n30_d8_scaled_up': dict(n=30, d=8, k=2, scale=5.0),
    'n24_d60_rank5_scaled_down': dict(n=24, d=60, k=3, rank=5, scale=0.1),   # N < D, 19 zero singular values
    'n16_d40_rank6': dict(n=16, d=40, k=4, rank=6, scale=3.0),              # N < D, 10 zero singular values
}


def test_reference_evidence_forms_agree():
  """The reference itself: the marginal-Gaussian form equals PRML's (3.86) at arbitrary (α, β)."""
  f, y = features(12, 30, 3, rank=4, seed=3)
  t = (y == 1).astype(np.float64)
  for alpha, beta in [(0.01, 3.0), (2.0, 0.5), (40.0, 100.0)]:
    assert log_evidence(f, t, alpha, beta) == pytest.approx(log_evidence_textbook(f, t, alpha, beta), rel=1e-9)


@pytest.mark.parametrize('case', list(CASES))
def test_logme_equals_the_brute_force_maximum_of_the_evidence(case):
  spec = CASES[case]
  f, y = features(**spec, seed=1)
  ref = reference_logme(f, y, spec['k'])
  got = transferability.logme(f, y)
  assert got == pytest.approx(ref, rel=1e-4)
  # The fixed point lands on one (α, β): its evidence cannot exceed the maximum.
  assert got <= ref + 1e-6
  # float32 features are scored in float64 (the SVD of float32 would move the value by ~1e-7).
  assert transferability.logme(f.astype(np.float32), y) == transferability.logme(f.astype(np.float32).astype(np.float64), y)


@pytest.mark.parametrize('scale', [1e-3, 0.1, 10.0, 1e3])
def test_logme_is_invariant_to_the_feature_scale(scale):
  """Scaling F by s is undone by α → α·s² (the prior precision): the maximum evidence is the same."""
  for spec in (CASES['n40_d6'], CASES['n24_d60_rank5_scaled_down']):
    f, y = features(**spec, seed=1)
    assert transferability.logme(scale * f, y) == pytest.approx(transferability.logme(f, y), rel=1e-6)


def test_logme_ignores_zero_feature_columns_and_rotations():
  """Exact invariances of the evidence: zero columns carry no data (their weights only meet the prior), and
  the isotropic prior makes F and F·Q (Q orthogonal) equivalent — so N < D must give the same number."""
  f, y = features(20, 12, 4, seed=2)
  base = transferability.logme(f, y)
  padded = np.concatenate([f, np.zeros((20, 100))], 1)              # N = 20 < D = 112
  assert transferability.logme(padded, y) == pytest.approx(base, rel=1e-6)
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(112, 112)))
  assert transferability.logme(padded @ q, y) == pytest.approx(base, rel=1e-4)
