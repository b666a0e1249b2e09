"""Feature cache and closed-form probes: the cached head equals the head a `trainable='head'` run trains."""

import jax
import numpy as np
import pytest

from jaxtransfer import config as config_lib
from jaxtransfer import features, train

CNN = {'name': 'cnn', 'stages': [4, 8], 'dense': [16]}


@pytest.fixture(scope='module')
def checkpoint(tiny_glyph_checkpoint):
  """The shared 3-step glyph pretraining of `CNN` (conftest.tiny_glyph_checkpoint)."""
  return tiny_glyph_checkpoint


def test_linear_probe_on_cached_features_matches_the_head_only_run(checkpoint, data_dir, tmp_path):
  c = config_lib.finetune(init_from=checkpoint, trainable='head', per_class=3)
  c.input.data_dir, c.input.eval_split = data_dir, 'test[:200]'
  c.optim.lr = 1e-2
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 6, 8, 6, 6
  cache = features.FeatureCache(str(tmp_path / 'cache'), data_dir=data_dir)
  probe = features.linear_probe(c, cache=cache)
  ref = train.train(c, str(tmp_path / 'ref'))
  for a, b in zip(jax.tree_util.tree_leaves(probe['params']['head']), jax.tree_util.tree_leaves(ref.params['head'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert probe['accuracy'] == pytest.approx(ref.metrics['accuracy'], abs=1e-3)
  assert probe['count'] == 200
  # Cached: a second probe extracts nothing; a new cache object reads the .npz files.
  misses = cache.misses
  features.linear_probe(c, cache=cache)
  assert cache.misses == misses
  again = features.FeatureCache(str(tmp_path / 'cache'), data_dir=data_dir)
  tr = again.get(checkpoint, 'real_digits', 'train')
  assert again.misses == 0 and tr.x.shape == (4000, 16)


def test_closed_form_probes():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(5, 20)) * 3
  y = np.repeat(np.arange(5), 40)
  x = centers[y] + rng.normal(size=(200, 20))
  yt = np.repeat(np.arange(5), 20)
  xt = centers[yt] + rng.normal(size=(100, 20))
  for probe in (features.ridge_probe, features.logistic_probe):
    assert probe(x, y, xt, yt)['accuracy'] > 0.95
    assert probe(x[::40], y[::40], xt, yt)['accuracy'] > 0.6        # 1 per class
  # Ridge is the closed-form minimiser: the normal equations hold (primal and dual forms agree).
  a, _ = features._standardize(x, xt)
  t = np.eye(5)[y] - 0.2
  w = np.linalg.solve(a.T @ a + 1e-2 * 200 * np.eye(20), a.T @ t)
  np.testing.assert_array_equal(features.ridge_probe(x, y, xt)['pred'], np.argmax(features._standardize(x, xt)[1] @ w, -1))
  wide = np.concatenate([x, rng.normal(size=(200, 300))], 1)      # N < D: dual form
  wide_t = np.concatenate([xt, rng.normal(size=(100, 300))], 1)
  assert features.ridge_probe(wide, y, wide_t, yt)['accuracy'] > 0.9
  curve = features.fewshot_curve(features.Features(x, y), features.Features(xt, yt), [1, 5, None], seeds=(0, 1))
  assert set(curve) == {'1', '5', 'all'} and curve['5']['n'] == 2 and curve['all']['n'] == 1
