"""Masked autoencoding (issue #17, item 1): exact masking, an encoder that never sees the hidden patches, a
loss that ignores the visible ones, and pretraining through THE loop whose decoder transfer drops."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transfer_checks
from jaxtransfer import config as config_lib, errors, objectives, rules, train
from jaxtransfer.models import model as model_lib
from jaxtransfer.objectives import mae

PATCHES = {'name': 'transformer', 'stem': 'patches', 'patch_size': 7, 'num_layers': 1, 'width': 16, 'num_heads': 2,
           'mlp_dim': 32, 'pool': 'mean'}


@pytest.mark.parametrize('n,ratio,hidden', [(16, 0.75, 12), (49, 0.75, 37), (16, 0.5, 8), (4, 0.99, 3)])
def test_masking_hides_exactly_the_ratio_uniformly_and_reproducibly(n, ratio, hidden):
  keep, restore, mask = mae.random_masking(jax.random.key(0), 8, n, ratio)
  assert keep.shape == (8, n - hidden) and restore.shape == (8, n) and mask.shape == (8, n)
  np.testing.assert_array_equal(np.sum(mask, 1), hidden)
  assert not np.take_along_axis(np.asarray(mask), np.asarray(keep), 1).any()     # kept = not hidden
  np.testing.assert_array_equal(np.sort(restore, 1), np.broadcast_to(np.arange(n), (8, n)))
  assert len({tuple(np.flatnonzero(r)) for r in np.asarray(mask)}) > 1             # rows differ
  again = mae.random_masking(jax.random.key(0), 8, n, ratio)
  np.testing.assert_array_equal(again[2], mask)
  assert (np.asarray(mae.random_masking(jax.random.key(1), 8, n, ratio)[2]) != np.asarray(mask)).any()


def test_num_masked_keeps_one_visible_and_one_hidden():
  assert mae.num_masked(16, 0.01) == 1 and mae.num_masked(16, 0.999) == 15
  with pytest.raises(errors.ConfigError, match='1 patch'):
    mae.num_masked(1, 0.75)


def test_patchify_follows_the_patch_stem_order():
  images = jax.random.uniform(jax.random.key(0), (2, 14, 21, 3))
  patches = np.asarray(mae.patchify(images, 7))
  assert patches.shape == (2, 6, 7 * 7 * 3)
  for i in range(2):
    for j in range(3):
      np.testing.assert_array_equal(patches[1, i * 3 + j], np.asarray(images[1, 7 * i:7 * i + 7, 7 * j:7 * j + 7]).ravel())
  t = np.asarray(mae.patch_targets(images, 7, norm_pix=True))
  np.testing.assert_allclose(t.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(t.std(-1), 1, atol=1e-3)


@pytest.mark.parametrize('pool', ['mean', 'cls'])
def test_the_encoder_never_sees_hidden_patches(pool):
  bb = model_lib.build_backbone({**PATCHES, 'pool': pool})
  x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  v = bb.init(jax.random.key(1), x)
  keep, _, hidden = mae.random_masking(jax.random.key(2), 2, 16, 0.75)
  pixel_hidden = np.repeat(np.repeat(np.asarray(hidden).reshape(2, 4, 4), 7, 1), 7, 2)[..., None]
  noise = jax.random.uniform(jax.random.key(3), x.shape)
  seq, _ = bb.apply(v, x, keep=keep, method=bb.encode)
  assert seq.shape == (2, 4 + (pool == 'cls'), 16)
  seq2, _ = bb.apply(v, jnp.where(pixel_hidden, noise, x), keep=keep, method=bb.encode)
  np.testing.assert_array_equal(seq2, seq)                              # hidden pixels changed: same outputs
  seq3, _ = bb.apply(v, jnp.where(pixel_hidden, x, noise), keep=keep, method=bb.encode)
  assert not np.allclose(seq3, seq)                                     # visible pixels changed: not


def test_visible_patches_carry_no_loss():
  pred = jax.random.normal(jax.random.key(0), (3, 16, 49))
  target = jax.random.normal(jax.random.key(1), (3, 16, 49))
  _, _, hidden = mae.random_masking(jax.random.key(2), 3, 16, 0.75)
  err, count = mae.masked_errors(pred, target, hidden)
  np.testing.assert_array_equal(count, 12)
  expected = np.sum(np.where(hidden, np.mean((np.asarray(pred) - np.asarray(target)) ** 2, -1), 0), 1)
  np.testing.assert_allclose(err, expected, rtol=1e-6)
  moved_visible = jnp.where(hidden[..., None], pred, pred + 5.0)
  np.testing.assert_array_equal(mae.masked_errors(moved_visible, target, hidden)[0], err)
  moved_hidden = jnp.where(hidden[..., None], pred + 5.0, pred)
  assert (np.asarray(mae.masked_errors(moved_hidden, target, hidden)[0]) > np.asarray(err)).all()


def test_mae_needs_a_patch_transformer():
  c = config_lib.base()
  c.objective = 'mae'
  with pytest.raises(errors.ConfigError, match="objective mae needs model.backbone = a transformer with stem=patches"):
    objectives.from_config(c)


def mae_config(data_dir):
  c = config_lib.base()
  c.data, c.input.data_dir, c.input.eval_split = 'glyphs/small', data_dir, 'test[:64]'
  c.objective, c.model.backbone = 'mae', dict(PATCHES)
  c.mae.decoder_width, c.mae.decoder_heads = 16, 2
  c.optim.lr, c.optim.warmup_steps = 3e-3, 5
  c.train.steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = 40, 32, 5, 40
  return c


def test_mae_pretrains_through_the_loop_and_transfer_drops_the_decoder(data_dir, tmp_path):
  c = mae_config(data_dir)
  c.monitor.online_probe = True
  out = train.train(c, str(tmp_path / 'mae'))
  assert np.isfinite(out.metrics['loss']) and out.metrics['hidden_patches'] == 64 * 12
  logged = [json.loads(x) for x in open(tmp_path / 'mae' / 'metrics.jsonl')]
  losses = [r['train/loss'] for r in logged if 'train/loss' in r]
  assert np.mean(losses[-2:]) < 0.9 * losses[0]             # reconstruction improves
  probe = [r['train/probe_accuracy'] for r in logged if 'train/probe_accuracy' in r]
  assert len(probe) == len(losses) and all(0 <= p <= 1 for p in probe)       # the online probe, in the state
  assert np.abs(np.asarray(out.opt_state['probe']['params']['kernel'])).sum() > 0
  saved = rules.flatten(out.params)
  assert any(k.startswith('head/layer_0/') for k in saved) and 'head/mask_token' in saved

  transfer_checks.assert_head_only_transfer_drops_the_head(str(tmp_path / 'mae'), saved, data_dir,
                                                          str(tmp_path / 'probe'))
