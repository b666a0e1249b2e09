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
  # N < D works (few-shot): zero singular values are accounted for.
  xw = np.concatenate([xi[:20], np.zeros((20, 100))], 1)
  assert np.isfinite(transferability.logme(xw, y[:20]))
  # LEEP: a source whose classes map one-to-one onto B's labels scores ≈ 0; a uninformative one log(1/K).
  onehot = np.eye(5)[y] * 0.999 + 0.0002
  assert transferability.leep(onehot, y) > -0.01
  assert transferability.leep(np.full((300, 7), 1 / 7), y) == pytest.approx(np.mean(np.log(np.bincount(y)[y] / 300)), abs=1e-6)


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


def test_logme_ranks_pretrained_above_random_init_on_real_digits(tmp_path_factory, data_dir):
  c = config_lib.pretrain()
  c.data, c.input.data_dir, c.input.eval_split = 'glyphs/small', data_dir, 'test[:16]'
  c.model.backbone = CNN
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 40, 64, 40, 40
  c.optim.lr, c.optim.warmup_steps = 3e-3, 0
  workdir = str(tmp_path_factory.mktemp('tr_pretrain'))
  train.train(c, workdir)
  result = advise.advise([workdir], 'real_digits', layers=(0,), per_class=20, data_dir=data_dir)
  pre, rand = result['candidates']
  assert not pre['random_init'] and rand['random_init']
  assert pre['logme'] > rand['logme'], result
  assert pre['leep'] is not None and np.isfinite(pre['leep'])
  assert result['recommendation'].split(':')[0] in ('lp-ft', 'scratch')
