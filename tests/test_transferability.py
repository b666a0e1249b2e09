"""Transferability scores: LogME / H-score / LEEP behave, and LogME ranks a pretrained backbone above
a randomly initialised one on the real digits; `advise` recommends by B's size and the score."""

import numpy as np
import pytest

from jaxtransfer import advise, config as config_lib, train, transferability

CNN = {'name': 'cnn', 'stages': [8, 16], 'dense': [32]}


def _blobs(informative, n=300, d=16, k=5, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, k, n)
  x = rng.normal(size=(n, d))
  if informative:
    x += 3 * rng.normal(size=(k, d))[y]
  return x, y


def test_scores_prefer_informative_features():
  xi, y = _blobs(True)
  xn, _ = _blobs(False)
  assert transferability.logme(xi, y) > transferability.logme(xn, y) + 0.1
  assert transferability.hscore(xi, y) > transferability.hscore(xn, y) * 3
  # N < D (few-shot): zero singular values are accounted for — zero feature columns carry no evidence, so
  # padding 20 examples' 16 features with 100 zeros leaves LogME unchanged (values: test_logme_reference.py).
  xw = np.concatenate([xi[:20], np.zeros((20, 100))], 1)
  assert transferability.logme(xw, y[:20]) == pytest.approx(transferability.logme(xi[:20], y[:20]), rel=1e-6)
  # LEEP: a source whose classes map one-to-one onto B's labels scores ≈ 0; a uninformative one log(1/K).
  onehot = np.eye(5)[y] * 0.999 + 0.0002
  assert transferability.leep(onehot, y) > -0.01
  assert transferability.leep(np.full((300, 7), 1 / 7), y) == pytest.approx(np.mean(np.log(np.bincount(y)[y] / 300)), abs=1e-6)


def hscore_reference(f, y, shrinkage):
  """H-score from its definition (Bao et al.): tr(cov(f)⁻¹ cov(E[f | y])), the covariance shrunk toward
  its mean eigenvalue; population covariances (np.cov with bias=True), class means by a dict."""
  f = np.asarray(f, np.float64)
  d = f.shape[1]
  cov = np.cov(f, rowvar=False, bias=True)
  cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)
  means = {c: f[y == c].mean(0) for c in set(y.tolist())}
  g = np.stack([means[c] for c in y.tolist()])
  return float(np.trace(np.linalg.inv(cov) @ np.cov(g, rowvar=False, bias=True)))


def leep_reference(theta, y):
  """LEEP from its definition (Nguyen et al.), with loops: P(y, z) = 1/n Σ_i θ_iz [y_i = y];
  P(y | z) = P(y, z) / Σ_y' P(y', z); LEEP = 1/n Σ_i log Σ_z P(y_i | z) θ_iz."""
  theta = np.asarray(theta, np.float64)
  n, zs = theta.shape
  labels = sorted(set(y.tolist()))
  joint = {(c, z): sum(theta[i, z] for i in range(n) if y[i] == c) / n for c in labels for z in range(zs)}
  marg = {z: sum(joint[(c, z)] for c in labels) for z in range(zs)}
  return float(np.mean([np.log(sum(joint[(y[i], z)] / marg[z] * theta[i, z] for z in range(zs))) for i in range(n)]))


@pytest.mark.parametrize('shrinkage', [0.0, 0.1, 0.5])
def test_hscore_matches_its_definition(shrinkage):
  x, y = _blobs(True, n=60, d=6, k=4, seed=3)
  x32 = x.astype(np.float32)                   # float32 features are scored in float64
  assert transferability.hscore(x, y) == transferability.hscore(x, y, shrinkage=0.1)   # the documented default
  ref = hscore_reference(x32, y, shrinkage)
  assert transferability.hscore(x32, y, shrinkage=shrinkage) == pytest.approx(ref, rel=1e-10)
  # Invariant to a per-feature shift and to the features' scale.
  shift = np.random.default_rng(0).normal(size=6) * 10
  assert transferability.hscore(3 * x + shift, y, shrinkage=shrinkage) == pytest.approx(
      transferability.hscore(x, y, shrinkage=shrinkage), rel=1e-8)


def test_leep_matches_its_definition():
  rng = np.random.default_rng(4)
  y = rng.integers(0, 3, 40)
  theta = rng.dirichlet(np.ones(5), size=40).astype(np.float32)
  theta[y == 1, 2] += 2.0                      # source class 2 predicts B's class 1
  theta /= theta.sum(1, keepdims=True)
  got = transferability.leep(theta, y)
  assert got == pytest.approx(leep_reference(theta, y), rel=1e-10)
  assert got > leep_reference(rng.permutation(theta), y)   # predictions unrelated to y score lower


@pytest.mark.parametrize('per_class, best, random, answer', [
    # LogME gain over random init: 0.05 (NO_GAIN) decides whether the source transfers at all …
    (10, 1.06, 1.0, 'lp-ft'), (10, 1.04, 1.0, 'scratch'), (11, -0.94, -1.0, 'lp-ft'),
    (400, -0.96, -1.0, 'scratch'), (11, 1.04, 1.0, 'scratch'),
    # … then 50 labels per class (MEDIUM) splits LP-FT from the large-B strategies …
    (50, 0.5, 0.0, 'lp-ft'), (51, 0.5, 0.0, 'drop1+mlp2'),
    # … where a gain under 0.2 (LARGE_B_GAIN) loses to scratch; no random twin: the gain is unknown.
    (51, 0.21, 0.0, 'drop1+mlp2'), (51, 0.19, 0.0, 'scratch'), (51, 0.19, None, 'drop1+mlp2'),
    (50, 0.19, 0.0, 'lp-ft'), (1, -5.0, None, 'lp-ft'),
])
def test_recommendation_on_both_sides_of_each_threshold(per_class, best, random, answer):
  assert advise.recommend(per_class, best, random).split(':')[0] == answer
  # Few labels and nothing transferable: the advice is to collect more, not only to train from scratch.
  assert ('collect more' in advise.recommend(per_class, best, random)) == (answer == 'scratch' and per_class <= 10)


def test_recommendation_by_size_and_score():
  assert advise.recommend(5, 0.3, 0.0).startswith('lp-ft')
  assert advise.recommend(50, 0.3, 0.0).startswith('lp-ft')
  assert advise.recommend(400, 0.3, 0.0).startswith('drop1+mlp2')
  assert advise.recommend(400, 0.01, 0.0).startswith('scratch')
  assert advise.recommend(5, 0.01, 0.0).startswith('scratch')
  # A weak source (the 1000-glyph A: gain 0.16) loses to scratch only when B is large.
  assert advise.recommend(400, 0.16, 0.0).startswith('scratch')
  assert advise.recommend(10, 0.16, 0.0).startswith('lp-ft')
  assert advise.recommend(400, 0.16, None).startswith('drop1+mlp2')


def _glyph_pretraining(tmp_path_factory, data_dir, name, *, steps, batch_size, lr) -> str:
  """A small CNN pretrained on glyphs/small for `steps` steps at `lr`; its workdir."""
  c = config_lib.pretrain()
  c.data, c.input.data_dir, c.input.eval_split = 'glyphs/small', data_dir, 'test[:16]'
  c.model.backbone = CNN
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = steps, batch_size, steps, steps
  c.optim.lr, c.optim.warmup_steps = lr, 0
  workdir = str(tmp_path_factory.mktemp(name))
  train.train(c, workdir)
  return workdir


def test_logme_ranks_pretrained_above_random_init_on_real_digits(tmp_path_factory, data_dir):
  workdir = _glyph_pretraining(tmp_path_factory, data_dir, 'tr_pretrain', steps=40, batch_size=64, lr=3e-3)
  result = advise.advise([workdir], 'real_digits', layers=(0, 1), per_class=20, data_dir=data_dir)
  pre, cut, rand = result['candidates']
  assert not pre['random_init'] and not cut['random_init'] and rand['random_init']
  assert pre['n'] == cut['n'] == 200 and (pre['dim'], cut['dim']) == (32, 16 * 7 * 7)
  assert pre['logme'] > rand['logme'], result
  assert pre['leep'] is not None and np.isfinite(pre['leep']) and cut['leep'] is None
  # The best candidate and the advice follow from the scores: here the cut backbone (measured: LogME +0.19
  # over random init, the full one only +0.05, at the NO_GAIN threshold) → lp-ft at 20 labels per class.
  best = max((pre, cut), key=lambda r: r['logme'])
  assert result['best'] == best['name'] and result['random_init_logme'] == rand['logme']
  assert result['recommendation'] == advise.recommend(20, best['logme'], rand['logme'])
  assert best['logme'] - rand['logme'] > 0.1, result
  assert result['recommendation'].startswith('lp-ft: 20 labels per class'), result['recommendation']


def test_a_gain_within_the_scores_own_noise_means_scratch_at_every_budget():
  """advise acts on its evidence: a LogME gain smaller than NOISE_SIGMAS × its spread over random halves of B is
  no evidence of transfer, whatever the label budget; the same gain with little noise is."""
  for per_class in (1, 10, 50, 400):
    noisy = advise.recommend(per_class, 0.12, 0.0, noise=0.07)
    assert noisy.startswith('scratch') and 'within noise' in noisy and 'at any label budget' in noisy, noisy
    assert not advise.recommend(per_class, 0.30, 0.0, noise=0.01).startswith('scratch')
  assert 'self-supervised' in advise.recommend(10, 0.12, 0.0, noise=0.07, unlabelled=4000, labelled=100)
  assert 'self-supervised' not in advise.recommend(10, 0.12, 0.0, noise=0.07, unlabelled=400, labelled=100)


def test_logme_noise_is_the_spread_over_random_halves():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), 30)
  informative = np.eye(4)[y] * 3 + rng.normal(size=(120, 4))
  noise = advise.logme_noise(informative, y, seed=0)
  assert noise == advise.logme_noise(informative, y, seed=0) > 0             # deterministic by seed
  assert noise != advise.logme_noise(informative, y, seed=1)
  few = np.concatenate([np.flatnonzero(y == k)[:6] for k in range(4)])
  assert advise.logme_noise(informative[few], y[few], seed=0) > noise         # fewer labels, a noisier score
  assert advise.logme_noise(informative[:3], y[:3]) == 0.0


def test_advise_recommends_scratch_when_the_source_is_no_better_than_its_random_twin(tmp_path_factory, data_dir):
  """A 'pretraining' of one step at a tiny lr is a random init in all but name: advise must say so."""
  workdir = _glyph_pretraining(tmp_path_factory, data_dir, 'tr_untrained', steps=1, batch_size=16, lr=1e-8)
  result = advise.advise([workdir], 'real_digits', layers=(0,), per_class=20, data_dir=data_dir)
  pre, rand = result['candidates']
  assert abs(pre['logme'] - rand['logme']) < advise.NO_GAIN     # two random inits
  assert result['gain_noise'] > 0 and pre['logme_std'] > 0 and rand['logme_std'] > 0
  assert result['recommendation'].startswith('scratch') and 'any label budget' in result['recommendation']
  assert '± (halves)' in advise.format_report(result)
