"""Joint-embedding pretraining (issue #17, item 2): random views made in the step — different, reproducible
per key, the identity when nothing may change — NT-Xent's terms, and SimCLR through THE loop on any backbone,
resumable bit-identically, its projection head dropped at transfer."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import transfer_checks
from jaxtransfer import config as config_lib, errors, rules, train, views
from jaxtransfer.objectives import simclr

IDENTITY = views.ViewConfig(crop_scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate=0.0, shear=0.0, translate=0.0,
                            stroke=0.0, contrast=0.0, brightness=0.0)


def digits(n=4, size=28):
  """Bars of different positions and widths on a black background (glyph-like test images)."""
  x = np.zeros((n, size, size, 1), np.float32)
  for i in range(n):
    x[i, 4 + 3 * i:10 + 3 * i, 6:22] = 1.0
    x[i, 6:22, 12 + i:14 + 2 * i] = 1.0
  return jnp.asarray(x)


def test_views_differ_and_are_reproducible_per_key():
  x = digits()
  two = jax.jit(lambda x, k: views.two_views(x, k, views.ViewConfig()))
  v1, v2 = two(x, jax.random.key(0))
  assert v1.shape == x.shape and np.isfinite(v1).all()
  assert np.abs(np.asarray(v1) - np.asarray(v2)).mean() > 0.02          # the two views differ
  assert np.abs(np.asarray(v1) - np.asarray(x)).mean() > 0.02           # and from the image
  again = two(x, jax.random.key(0))
  np.testing.assert_array_equal(again[0], v1)
  np.testing.assert_array_equal(again[1], v2)
  other = two(x, jax.random.key(1))[0]
  assert not np.allclose(other, v1)
  # Each image its own draw: the same image twice in a batch gets two different views.
  pair = views.random_views(jnp.stack([x[0], x[0]]), jax.random.key(2), views.ViewConfig())
  assert not np.allclose(pair[0], pair[1])


def test_a_view_that_may_change_nothing_is_the_image():
  x = digits()
  np.testing.assert_allclose(views.random_views(x, jax.random.key(3), IDENTITY), x, atol=1e-6)


def test_stroke_width_thickens_or_thins_the_ink():
  x = digits()[0]
  cfg = views.ViewConfig(**{**IDENTITY.__dict__, 'stroke': 1.0})
  view = jax.jit(lambda k: views.random_view(x, k, cfg))
  ink = [float(view(jax.random.key(k)).sum()) for k in range(8)]
  assert all(i != pytest.approx(float(x.sum())) for i in ink)                      # always changed, both ways
  assert min(ink) < float(x.sum()) < max(ink)


def test_bilinear_sampling_is_map_coordinates():
  from jax.scipy import ndimage
  img = jax.random.uniform(jax.random.key(0), (2, 9, 7, 1))
  ys = jax.random.uniform(jax.random.key(1), (2, 63), minval=-2, maxval=10)
  xs = jax.random.uniform(jax.random.key(2), (2, 63), minval=-2, maxval=8)
  ours = views._bilinear(img, ys, xs).reshape(2, 63)
  ref = jnp.stack([ndimage.map_coordinates(img[i, ..., 0], [ys[i], xs[i]], order=1, mode='constant', cval=0.0)
                   for i in range(2)])
  np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_bad_view_config_is_one_line():
  with pytest.raises(errors.ConfigError, match='views.crop_scale'):
    views.ViewConfig(crop_scale=(0.0, 1.0))


def test_pair_terms_match_optax_ntxent_and_find_twins():
  z = jax.random.normal(jax.random.key(0), (8, 5))
  nll, top1 = simclr.pair_terms(z, 0.5)
  labels = jnp.concatenate([jnp.arange(4), jnp.arange(4)])
  np.testing.assert_allclose(nll.mean(), optax.losses.ntxent(z, labels, 0.5), rtol=1e-5)
  twins = jnp.concatenate([z[:4], z[:4] + 1e-3])           # each view's twin is (almost) itself
  nll2, top2 = simclr.pair_terms(twins, 0.5)
  np.testing.assert_array_equal(top2, 1.0)
  assert float(nll2.mean()) < float(nll.mean())
  # An invalid row (eval padding) is no one's negative and scores 0.
  valid = jnp.array([True, True, True, False] * 2)
  nll3, top3 = simclr.pair_terms(z, 0.5, valid)
  assert float(nll3[3]) == 0.0 and float(top3[7]) == 0.0
  sub = jnp.concatenate([z[:3], z[4:7]])
  np.testing.assert_allclose(nll3[jnp.array([0, 1, 2, 4, 5, 6])], simclr.pair_terms(sub, 0.5)[0], rtol=1e-5)


TINY = {'name': 'cnn', 'stages': [4, 8], 'dense': [16]}


def simclr_config(data_dir, steps):
  c = config_lib.base()
  c.data, c.input.data_dir, c.input.eval_split = 'glyphs/small', data_dir, 'test[:64]'
  c.objective, c.model.backbone = 'simclr', dict(TINY)
  c.simclr.proj_hidden, c.simclr.proj_dim = 16, 8
  c.optim.lr, c.optim.warmup_steps = 3e-3, 2
  c.train.steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = steps, 32, 2, 2
  c.train.eval_batch_size = 32
  return c


def test_simclr_through_the_loop_resumes_bit_identically_and_transfers(data_dir, tmp_path):
  c = simclr_config(data_dir, 4)
  c.monitor.knn_data, c.monitor.knn_train_split, c.monitor.knn_eval_split = 'glyphs/small', 'train[:200]', 'test[:100]'
  whole = train.train(c, str(tmp_path / 'whole'))
  assert 0 <= whole.metrics['pair_accuracy'] <= 1 and np.isfinite(whole.metrics['loss'])
  assert 0 < whole.metrics['knn_accuracy'] <= 1                    # the k-NN monitor, at the final evaluation
  logged = [json.loads(x) for x in open(tmp_path / 'whole' / 'metrics.jsonl')]
  assert any('eval/knn_accuracy' in x for x in logged)
  train.train(simclr_config(data_dir, 4), str(tmp_path / 'split'), stop_after=2)   # preempted, then resumed
  resumed = train.train(simclr_config(data_dir, 4), str(tmp_path / 'split'))
  assert resumed.init == 'resume'
  for a, b in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  saved = rules.flatten(whole.params)
  assert {k for k in saved if k.startswith('head/')} >= {'head/layer_0/kernel', 'head/out/kernel'}

  transfer_checks.assert_head_only_transfer_drops_the_head(str(tmp_path / 'whole'), saved, data_dir,
                                                          str(tmp_path / 'probe'))


def test_supervised_augmentation_trains_on_random_views_of_the_batch():
  """input.augment: the classification step sees a random view of each image (made from the step key), so
  its gradients differ from the plain step's and repeat exactly with the same key; evaluation is plain."""
  from jaxtransfer import objectives
  from jaxtransfer.models import model as model_lib
  c = config_lib.base()
  c.model.backbone = dict(TINY)
  plain = objectives.from_config(c)
  c.input.augment = True
  augmented = objectives.from_config(c)
  assert type(augmented).__name__ == 'AugmentedClassification'
  model = model_lib.build({'backbone': TINY, 'head': {'name': 'linear', 'num_outputs': 4}})
  params = model_lib.init(model, jax.random.key(0), (28, 28, 1))['params']
  batch = {'image': digits(), 'label': jnp.arange(4), 'mask': jnp.ones(4)}
  fwd = objectives.Forward(model, {}, (), {})
  grads = lambda obj, k: jax.jit(lambda key: obj.grads(fwd, params, {}, batch, key)[0])(jax.random.key(k))
  g_plain, g_aug, g_again = grads(plain, 0), grads(augmented, 0), grads(augmented, 0)
  leaves = lambda t: jax.tree_util.tree_leaves(t)
  assert any(not np.allclose(a, b) for a, b in zip(leaves(g_plain), leaves(g_aug)))
  for a, b in zip(leaves(g_aug), leaves(g_again)):
    np.testing.assert_array_equal(a, b)
  variables = model_lib.variables(params, {})
  np.testing.assert_array_equal(augmented.predict(model, variables, batch), plain.predict(model, variables, batch))


def test_knn_accuracy_votes_with_the_nearest_neighbours():
  from jaxtransfer import features, monitors
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 8)) * 5
  y_tr, y_te = rng.integers(0, 3, 300), rng.integers(0, 3, 100)
  train_f = features.Features(centres[y_tr] + rng.normal(size=(300, 8)), y_tr)
  test_f = features.Features(centres[y_te] + rng.normal(size=(100, 8)), y_te)
  assert monitors.knn_accuracy(train_f, test_f, k=20) == 1.0
  shuffled = features.Features(train_f.x, rng.permutation(y_tr))          # labels unrelated to the features
  assert monitors.knn_accuracy(shuffled, test_f, k=20) < 0.6
  assert monitors.knn_accuracy(train_f, test_f, k=1000) > 0.3              # k larger than the split: all vote


def test_the_online_probe_sends_no_gradient_into_the_backbone(data_dir):
  """monitor.online_probe: the same gradients with and without the probe (stop-gradient), and the probe —
  in the objective state — learns from the batch's labels."""
  from jaxtransfer import objectives, steps
  from jaxtransfer.models import model as model_lib
  c = simclr_config(data_dir, 4)
  off = objectives.from_config(c)
  c.monitor.online_probe = True
  on = objectives.from_config(c)
  assert on.probe_classes == 62 and on.has_state and not off.has_state
  model = model_lib.build(steps.model_spec(c, 8, on))
  params = model_lib.init(model, jax.random.key(0), (28, 28, 1))['params']
  state = on.init_state(params)
  batch = {'image': jnp.concatenate([digits()] * 2), 'label': jnp.arange(8), 'mask': jnp.ones(8)}
  fwd = objectives.Forward(model, {}, (), {})
  g_off, _, _, m_off = jax.jit(lambda k: off.grads(fwd, params, {}, batch, k))(jax.random.key(1))
  g_on, _, new_state, m_on = jax.jit(lambda st, k: on.grads(fwd, params, st, batch, k))(state, jax.random.key(1))
  for a, b in zip(jax.tree_util.tree_leaves(g_off), jax.tree_util.tree_leaves(g_on)):
    np.testing.assert_array_equal(a, b)
  assert float(m_on['loss']) == float(m_off['loss']) and 'probe_accuracy' in m_on
  assert np.abs(np.asarray(new_state['probe']['params']['kernel'])).sum() > 0     # the probe moved
  np.testing.assert_array_equal(state['probe']['params']['kernel'], 0)
