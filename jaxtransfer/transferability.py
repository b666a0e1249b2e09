"""Transferability scores from cached features: which checkpoint (and layer) to fine-tune, before training.

  logme(f, y)            LogME (You et al., ICML 2021): the log marginal evidence, per example, of a
                         Bayesian linear model from features to each one-hot label column, averaged
                         over classes; the evidence is maximised over the prior/noise precisions by
                         MacKay's fixed point on one SVD of f. Higher = better. No training, no tuning.
  hscore(f, y)           H-score (Bao et al., 2019): tr(cov(f)⁻¹ cov(E[f | y])), with a shrunk
                         covariance (f has more dimensions than few-shot examples). Higher = better.
  leep(source_probs, y)  LEEP (Nguyen et al., ICML 2020): log-likelihood of B's labels under the
                         "expected empirical predictor" built from the SOURCE head's class
                         probabilities (needs the source head: only for the full backbone).

    feats = cache.get('runs/demo/pretrain', 'real_digits', 'train')
    logme(feats.x, feats.y)   # e.g. 1.2 for the glyph CNN, 0.6 for the same CNN at random init
"""

import numpy as np


def logme(f: np.ndarray, y: np.ndarray, *, num_classes: int | None = None, max_iter: int = 200) -> float:
  """LogME of features `f` (N, D) for integer labels `y` (N,): mean over classes of the per-example evidence.

  The maximum evidence does not depend on the features' scale (the prior precision α absorbs it): α starts
  at, and its guard against ‖m‖² = 0 is measured in, the mean squared feature, so the fixed point does not
  either (with a fixed 1e-5 guard, features × 100 lost 5 %). Iterates to a 1e-5 relative change of α/β
  (≤ `max_iter` steps; 20 steps to 1e-3 stopped 0.001 nats, 1 %, short of it on real 5-per-class features).
  """
  f = np.asarray(f, np.float64)
  n, d = f.shape
  k = num_classes or int(y.max()) + 1
  u, s, _ = np.linalg.svd(f, full_matrices=False)          # f = u diag(s) vh, rank r = min(N, D)
  sigma = s ** 2
  scale = float(np.mean(f ** 2)) or 1.0                     # α ∝ scale, ‖m‖² ∝ 1 / scale
  out = []
  for c in range(k):
    t_col = (y == c).astype(np.float64)
    x = u.T @ t_col                                           # targets in the singular basis
    x2 = x ** 2
    res_x2 = max(float(t_col @ t_col - x2.sum()), 0.0)        # the part outside the column space of f
    alpha, beta = scale, 1.0
    for _ in range(max_iter):
      t = alpha / beta
      gamma = float((sigma / (sigma + t)).sum())
      m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
      res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + res_x2
      alpha, beta = gamma / (m2 + 1e-5 / scale), (n - gamma) / (res2 + 1e-5)
      if abs(alpha / beta - t) / t <= 1e-5:
        break
    t = alpha / beta
    m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
    res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + res_x2
    # D − r zero singular values contribute log(alpha) each to −½ Σ log(alpha + beta σ).
    log_det = np.sum(np.log(alpha + beta * sigma)) + (d - len(sigma)) * np.log(alpha)
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det - beta / 2 * res2
                - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    out.append(evidence / n)
  return float(np.mean(out))


def hscore(f: np.ndarray, y: np.ndarray, *, shrinkage: float = 0.1) -> float:
  """H-score with covariance shrinkage toward its mean eigenvalue (Ledoit–Wolf style, fixed `shrinkage`)."""
  f = np.asarray(f, np.float64)
  f = f - f.mean(0, keepdims=True)
  cov = f.T @ f / len(f)
  mu = np.trace(cov) / len(cov)
  cov = (1 - shrinkage) * cov + shrinkage * mu * np.eye(len(cov))
  g = np.zeros_like(f)
  for c in np.unique(y):
    g[y == c] = f[y == c].mean(0)
  cov_g = g.T @ g / len(f)
  return float(np.trace(np.linalg.solve(cov, cov_g)))


def leep(source_probs: np.ndarray, y: np.ndarray, *, num_classes: int | None = None) -> float:
  """LEEP from the source model's class probabilities θ (N, Z) on B's examples and B's labels y (N,)."""
  theta = np.asarray(source_probs, np.float64)
  k = num_classes or int(y.max()) + 1
  joint = np.zeros((k, theta.shape[1]))
  for c in range(k):
    joint[c] = theta[y == c].sum(0)
  joint /= len(y)                                            # P(y, z)
  cond = joint / np.maximum(joint.sum(0, keepdims=True), 1e-12)   # P(y | z)
  eep = theta @ cond.T                                       # (N, K): Σ_z P(y|z) θ_z
  return float(np.mean(np.log(np.maximum(eep[np.arange(len(y)), y], 1e-12))))
