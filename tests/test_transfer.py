"""Strict backbone transfer from an Orbax checkpoint."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtransfer import checkpoint, rules, transfer
from jaxtransfer.models import model as model_lib

BACKBONE = {'name': 'cnn', 'stages': [4, 8], 'dense': [16]}
X = jnp.zeros((1, 12, 12, 1))


def _init(spec, seed):
  v = model_lib.build(spec).init(jax.random.key(seed), X)
  return v['params'], v.get('batch_stats', {})


def _save(tmp_path, spec, seed=0, shift=0.0):
  """Save a model initialised from `seed`, every parameter and statistic moved by `shift` (away from any init)."""
  params, stats = jax.tree_util.tree_map(lambda x: x + shift, _init(spec, seed))
  mngr = checkpoint.manager(str(tmp_path / 'pre' / 'checkpoints'))
  checkpoint.save(mngr, 7, params=params, batch_stats=stats, opt_state={'x': jnp.zeros(2)},
                  meta={'model_spec': spec, 'config': {}})
  mngr.wait_until_finished()
  mngr.close()
  return str(tmp_path / 'pre'), params, stats


def test_new_head_shape_restores_backbone_and_keeps_fresh_head(tmp_path):
  # Saved weights shifted by 0.5: no saved leaf (biases included, zero at init) equals a fresh one, so a
  # restore that silently keeps any fresh backbone value fails here.
  path, saved, _ = _save(tmp_path, {'backbone': BACKBONE, 'head': {'name': 'linear', 'num_outputs': 62}}, shift=0.5)
  target, stats = _init({'backbone': BACKBONE, 'head': {'name': 'linear', 'num_outputs': 10}}, seed=1)
  params, _ = transfer.init_from(path, target, stats)
  got, want, fresh = rules.flatten(params['backbone']), rules.flatten(saved['backbone']), rules.flatten(target['backbone'])
  assert list(got) == list(want) and len(got) == 10
  for p, x in got.items():
    np.testing.assert_array_equal(x, want[p], err_msg=p)
    assert np.all(np.asarray(x) != np.asarray(fresh[p])), p
  for p, x in rules.flatten(params['head']).items():
    np.testing.assert_array_equal(x, rules.flatten(target['head'])[p])
  assert params['head']['out']['kernel'].shape == (16, 10)


def test_wider_layer_is_one_error_naming_the_path(tmp_path):
  path, _, _ = _save(tmp_path, {'backbone': BACKBONE, 'head': {'name': 'linear', 'num_outputs': 10}})
  wider = dict(BACKBONE, dense=[17])
  target, stats = _init({'backbone': wider, 'head': {'name': 'linear', 'num_outputs': 10}}, seed=1)
  with pytest.raises(transfer.TransferError) as e:
    transfer.init_from(path, target, stats)
  msg = str(e.value)
  assert '\n' not in msg
  assert 'backbone/block_2/dense/kernel (checkpoint (72, 16), model (72, 17))' in msg
  assert 'backbone/block_2/dense/bias' in msg and 'block_1' not in msg


def test_extra_or_missing_blocks_are_reported(tmp_path):
  path, _, _ = _save(tmp_path, {'backbone': BACKBONE, 'head': {'name': 'linear', 'num_outputs': 10}})
  deeper = dict(BACKBONE, dense=[16, 16])
  target, stats = _init({'backbone': deeper, 'head': {'name': 'linear', 'num_outputs': 10}}, seed=1)
  with pytest.raises(transfer.TransferError, match='missing in checkpoint: backbone/block_3/dense/bias'):
    transfer.init_from(path, target, stats)
  shallower = dict(BACKBONE, dense=[])  # Fewer blocks without asking for drop_last: unexpected leftovers.
  target, stats = _init({'backbone': shallower, 'head': {'name': 'linear', 'num_outputs': 10}}, seed=1)
  with pytest.raises(transfer.TransferError, match='unexpected in checkpoint: backbone/block_2/dense'):
    transfer.init_from(path, target, stats)


def test_drop_last_blocks_restores_the_kept_blocks(tmp_path):
  spec = {'backbone': BACKBONE, 'head': {'name': 'linear', 'num_outputs': 10}}
  path, saved, _ = _save(tmp_path, spec)
  cut = transfer.source_backbone_spec(path, drop_last=1)
  assert cut['drop_last'] == 1
  target, stats = _init({'backbone': cut, 'head': {'name': 'mlp', 'num_outputs': 5, 'hidden': [8, 8]}}, seed=1)
  params, _ = transfer.init_from(path, target, stats, drop_last=1)
  assert list(params['backbone']) == ['block_0', 'block_1']
  np.testing.assert_array_equal(params['backbone']['block_1']['conv_1']['kernel'],
                                saved['backbone']['block_1']['conv_1']['kernel'])


def test_resnet_batch_stats_are_transferred(tmp_path):
  spec = {'backbone': {'name': 'resnet', 'depth': [1], 'width': 4}, 'head': {'name': 'linear', 'num_outputs': 3}}
  params, stats = _init(spec, 0)
  stats = jax.tree_util.tree_map(lambda x: x + 1.5, stats)
  mngr = checkpoint.manager(str(tmp_path / 'r' / 'checkpoints'))
  checkpoint.save(mngr, 1, params=params, batch_stats=stats, opt_state={'x': jnp.zeros(1)}, meta={'model_spec': spec})
  mngr.wait_until_finished()
  target, target_stats = _init({**spec, 'head': {'name': 'linear', 'num_outputs': 4}}, 1)
  _, got = transfer.init_from(str(tmp_path / 'r'), target, target_stats)
  np.testing.assert_array_equal(got['backbone']['block_1']['norm_0']['var'], stats['backbone']['block_1']['norm_0']['var'])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='no checkpoint directory at .*nowhere'):
    transfer.init_from(str(tmp_path / 'nowhere'), {}, {})
  os.makedirs(tmp_path / 'empty' / 'checkpoints')
  with pytest.raises(checkpoint.CheckpointError, match='no complete checkpoint'):
    transfer.init_from(str(tmp_path / 'empty'), {}, {})


def test_half_written_checkpoint_is_not_taken(tmp_path):
  """A step directory without Orbax's commit marker (a save killed mid-way) is never restored."""
  path, _, _ = _save(tmp_path, {'backbone': BACKBONE, 'head': {'name': 'linear', 'num_outputs': 10}})
  ckpts = tmp_path / 'pre' / 'checkpoints'
  os.makedirs(ckpts / '9.orbax-checkpoint-tmp-123' / 'params')
  mngr, step = checkpoint.open_for_reading(path)
  assert step == 7


def test_head_from_class_names_copies_the_matching_outputs(tmp_path):
  spec = {'backbone': BACKBONE, 'head': {'name': 'linear', 'num_outputs': 4}}
  params, stats = _init(spec, 0)
  mngr = checkpoint.manager(str(tmp_path / 'a' / 'checkpoints'))
  checkpoint.save(mngr, 1, params=params, batch_stats=stats, opt_state={'x': jnp.zeros(1)},
                  meta={'model_spec': spec, 'class_names': ['0', '1', 'A', 'B']})
  mngr.wait_until_finished()
  target, _ = _init({'backbone': BACKBONE, 'head': {'name': 'linear', 'num_outputs': 2}}, 1)
  got = transfer.head_from_class_names(str(tmp_path / 'a'), target, ['B', '0'])
  np.testing.assert_array_equal(got['head']['out']['kernel'], np.asarray(params['head']['out']['kernel'])[:, [3, 0]])
  np.testing.assert_array_equal(got['head']['out']['bias'], np.asarray(params['head']['out']['bias'])[[3, 0]])
  np.testing.assert_array_equal(got['backbone']['block_0']['conv_0']['kernel'], target['backbone']['block_0']['conv_0']['kernel'])
  with pytest.raises(transfer.TransferError, match=r"\['7'\] not among the checkpoint's 4 classes"):
    transfer.head_from_class_names(str(tmp_path / 'a'), target, ['0', '7'])
  no_out = {**target, 'head': {'layer_0': target['head']['out']}}      # a head without an output layer `out`
  with pytest.raises(transfer.TransferError, match='needs a head with an output layer `out` on both sides'):
    transfer.head_from_class_names(str(tmp_path / 'a'), no_out, ['B', '0'])


def test_backbone_dropout_replaces_the_checkpoint_s_own(tmp_path):
  """An encoder pretrained without dropout is fine-tuned with model.backbone_dropout; None keeps the spec's."""
  from jaxtransfer import config as config_lib
  from jaxtransfer import errors
  from jaxtransfer import steps as step_lib
  encoder = {'name': 'transformer', 'num_layers': 1, 'width': 8, 'num_heads': 2, 'mlp_dim': 16, 'vocab_size': 20,
             'max_len': 6, 'dropout': 0.0}
  x = jnp.arange(1, 7, dtype=jnp.int32)[None]
  saved = {'backbone': encoder, 'head': {'name': 'linear', 'num_outputs': 5}}
  mngr = checkpoint.manager(str(tmp_path / 'mlm' / 'checkpoints'))
  checkpoint.save(mngr, 1, params=model_lib.build(saved).init(jax.random.key(0), x)['params'], batch_stats={},
                  opt_state={'x': jnp.zeros(1)}, meta={'model_spec': saved, 'config': {}})
  mngr.wait_until_finished()
  c = config_lib.base()
  c.model.backbone, c.transfer.init_from = None, str(tmp_path / 'mlm')
  assert step_lib.model_spec(c, 2)['backbone'] == encoder                      # None: the checkpoint's 0.0
  c.model.backbone_dropout = 0.3
  spec = step_lib.model_spec(c, 2)
  assert spec['backbone'] == {**encoder, 'dropout': 0.3}
  model = model_lib.build(spec)                                                # and the module trains with it
  variables = model.init(jax.random.key(0), x)
  out = lambda k: model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(k)})
  assert not np.allclose(out(1), out(2))
  c.model.backbone = dict(BACKBONE)                                            # a CNN has no dropout to replace
  with pytest.raises(errors.ConfigError, match="bad backbone spec .*dropout"):
    model_lib.build(step_lib.model_spec(c, 2))
