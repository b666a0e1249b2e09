"""The training loop end to end on embedded data: pretrain → checkpoint → transfer → fine-tune → resume."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtransfer import checkpoint
from jaxtransfer import config as config_lib
from jaxtransfer import errors, evaluation, rules, train
from jaxtransfer import objectives as objectives_lib

SMALL_CNN = {'name': 'cnn', 'stages': [8, 16], 'dense': [32]}


def pretrain_cfg(data_dir):
  c = config_lib.pretrain()
  c.data, c.input.data_dir = 'glyphs/small', data_dir
  c.model.backbone = SMALL_CNN
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 60, 64, 30, 30
  c.train.eval_every = 30
  c.optim.lr, c.optim.warmup_steps = 3e-3, 0
  return c


def finetune_cfg(data_dir, init_from, trainable='all', steps=12):
  c = config_lib.finetune(init_from=init_from, trainable=trainable, per_class=5)
  c.input.data_dir = data_dir
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = steps, 16, 4, 4
  return c


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('pretrain'))
  out = train.train(pretrain_cfg(data_dir), workdir)
  return workdir, out


def test_pretrain_writes_the_documented_workdir(pretrained):
  workdir, out = pretrained
  assert out.init == 'scratch' and out.step == 60
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['30', '60']
  assert {'params', 'meta', 'opt_state'} <= set(os.listdir(os.path.join(workdir, 'checkpoints', '60')))
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [l['step'] for l in lines if 'train/loss' in l] == [30, 60]
  assert any('eval/accuracy' in l for l in lines)
  assert lines[-1]['eval/count'] == 500
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(workdir, 'tb')))
  # Learns the 62 glyph classes (chance = 1.6%): evaluation loss falls, accuracy well above chance.
  evals = [l for l in lines if 'eval/loss' in l]
  assert evals[-1]['eval/loss'] < evals[0]['eval/loss']
  assert out.metrics['accuracy'] > 2 / 62


def test_evaluate_checkpoint_matches_the_training_run(pretrained):
  workdir, out = pretrained
  again = evaluation.evaluate_checkpoint(workdir)
  assert again['count'] == 500
  assert again['accuracy'] == pytest.approx(out.metrics['accuracy'], abs=1e-6)


@pytest.mark.parametrize('trainable', ['head', 'last:1'])
def test_finetune_from_checkpoint_freezes_as_asked(pretrained, data_dir, tmp_path, trainable):
  pre_dir, pre = pretrained
  out = train.train(finetune_cfg(data_dir, pre_dir, trainable), str(tmp_path))
  assert out.init == 'init_from'
  assert out.params['head']['out']['kernel'].shape == (32, 10)
  labels = rules.flatten(rules.freeze_labels(trainable, out.params))
  before, after = rules.flatten(pre.params), rules.flatten(out.params)
  for path, label in labels.items():
    if path.startswith('backbone/'):
      assert np.array_equal(before[path], after[path]) == (label == rules.FREEZE), path


def test_resume_is_bit_identical_and_never_reloads_init_from(pretrained, data_dir, tmp_path):
  pre_dir, _ = pretrained
  full = train.train(finetune_cfg(data_dir, pre_dir), str(tmp_path / 'full'))
  # "Preempted" after 6 steps: the last checkpoint is step 4; steps 5–6 are lost and redone.
  copy = str(tmp_path / 'pre_copy')
  shutil.copytree(pre_dir, copy)
  cut = train.train(finetune_cfg(data_dir, copy), str(tmp_path / 'cut'), stop_after=6)
  assert cut.step == 6
  shutil.rmtree(copy)  # Resuming must not need (nor read) the pretraining checkpoint.
  resumed = train.train(finetune_cfg(data_dir, copy), str(tmp_path / 'cut'))
  assert resumed.init == 'resume'
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.params, full.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.opt_state, full.opt_state)
  assert resumed.metrics['accuracy'] == full.metrics['accuracy']


def test_drop_last_block_and_mlp_head(pretrained, data_dir, tmp_path):
  pre_dir, pre = pretrained
  c = finetune_cfg(data_dir, pre_dir, trainable='head')
  c.transfer.drop_last_blocks = 1
  c.model.head, c.model.head_hidden = 'mlp', (24, 24)
  out = train.train(c, str(tmp_path))
  assert list(out.params['backbone']) == ['block_0', 'block_1']
  assert list(out.params['head']) == ['layer_0', 'layer_1', 'out']
  assert out.params['head']['layer_0']['kernel'].shape == (7 * 7 * 16, 24)
  np.testing.assert_array_equal(out.params['backbone']['block_1']['conv_0']['kernel'],
                                pre.params['backbone']['block_1']['conv_0']['kernel'])


def test_label_out_of_range_is_reported(data_dir, tmp_path):
  c = finetune_cfg(data_dir, '')
  c.model.backbone = SMALL_CNN
  c.model.num_outputs = 5
  with pytest.raises(ValueError, match=r'label [5-9] out of range for a head with 5 classes \(real_digits split train\)'):
    train.train(c, str(tmp_path))


# --- divergence: train.on_nonfinite ----------------------------------------------------------------------


class Poisoned(objectives_lib.classification_lib.Classification):
  """Classification whose loss is NaN on the steps whose key says so (rate), e.g. a corrupt batch."""

  def __init__(self, rate: float):
    self.rate = rate

  def grads(self, fwd, trainable, state, batch, key):
    poison = jax.random.bernoulli(jax.random.fold_in(key, 7), self.rate)
    grads, stats, state, metrics = super().grads(fwd, trainable, state, batch, key)
    grads = jax.tree_util.tree_map(lambda g: jnp.where(poison, jnp.nan, g), grads)
    return grads, stats, state, metrics


objectives_lib.register('test_poison_some')(lambda config: Poisoned(0.3))
objectives_lib.register('test_poison_all')(lambda config: Poisoned(1.0))


def scratch_cfg(data_dir, **train):
  c = config_lib.base()
  c.input.data_dir, c.input.eval_split, c.input.per_class = data_dir, 'test[:32]', 5
  c.model.backbone = {'name': 'cnn', 'stages': [4], 'dense': [8]}
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 6, 8, 1, 1
  c.train.keep_checkpoints = 10
  c.train.update(train)
  return c


def _finite_checkpoints(workdir):
  """{step: whether every saved array of params, batch_stats and opt_state is finite}."""
  mngr, _ = checkpoint.open_for_reading(workdir)
  try:
    return {s: all(np.isfinite(np.asarray(x)).all()
                   for item in ('params', 'batch_stats', 'opt_state')
                   if os.path.isdir(os.path.join(workdir, 'checkpoints', str(s), item))
                   for x in jax.tree_util.tree_leaves(checkpoint.restore_subtree(mngr, s, item, None)))
            for s in mngr.all_steps()}
  finally:
    mngr.close()


def test_divergence_stops_with_one_line_and_no_nonfinite_checkpoint(data_dir, tmp_path):
  c = scratch_cfg(data_dir, log_every=100)      # detected at a checkpoint save, not a log step
  c.optim.lr = 1e12
  with pytest.raises(train.NonFiniteError, match=r'^step (\d+): .* last good checkpoint: (.*/checkpoints/\d+ '
                                                 r'\(step \d+\)|none)$') as e:
    train.train(c, str(tmp_path))
  message = str(e.value)
  assert '\n' not in message and 'train.on_nonfinite=stop' in message
  bad_step = int(message.split(':')[0].split()[1])
  saved = _finite_checkpoints(str(tmp_path))
  assert saved and all(saved.values()) and max(saved) < bad_step, saved   # only good states were written
  assert message.endswith(f'checkpoints/{max(saved)} (step {max(saved)})')


def test_divergence_through_the_cli_is_one_line_and_exit_code_2(data_dir, tmp_path):
  config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments', 'configs',
                        'scratch_digits.py')
  p = subprocess.run([sys.executable, '-m', 'jaxtransfer.cli', 'finetune', f'--config={config}',
                      f'--workdir={tmp_path}', f'--config.input.data_dir={data_dir}', '--config.optim.lr=1e12',
                      "--config.model.backbone={'name': 'cnn', 'stages': [4], 'dense': [8]}",
                      '--config.train.steps=4', '--config.train.checkpoint_every=1', '--config.train.batch_size=8'],
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 2, p.stderr
  lines = [l for l in p.stderr.splitlines() if 'error' in l.lower()]
  assert len(lines) == 1 and 'non-finite' in lines[0] and 'last good checkpoint' in lines[0], p.stderr
  assert all(_finite_checkpoints(str(tmp_path)).values())


@pytest.mark.parametrize('backbone', ['cnn', 'resnet'])
def test_skip_policy_skips_poisoned_steps_and_stops_after_n_in_a_row(data_dir, tmp_path, backbone):
  c = scratch_cfg(data_dir, on_nonfinite='skip', max_nonfinite=3)
  if backbone == 'resnet':   # BatchNorm: a skipped step must keep the old running statistics too
    c.model.backbone = {'name': 'resnet', 'depth': [1], 'width': 4}
  c.objective = 'test_poison_some'
  out = train.train(c, str(tmp_path / 'some'))
  lines = [json.loads(l) for l in open(tmp_path / 'some' / 'metrics.jsonl') if 'train/loss' in l]
  skipped = [int(l['train/skipped']) for l in lines]
  assert out.step == 6 and skipped[-1] == out.opt_state.total_notfinite and 0 < skipped[-1] < 6, skipped
  mngr, _ = checkpoint.open_for_reading(str(tmp_path / 'some'))
  items = ('params', 'batch_stats') if backbone == 'resnet' else ('params',)
  saved = {item: {s: checkpoint.restore_subtree(mngr, s, item, None) for s in mngr.all_steps()} for item in items}
  mngr.close()
  for item, by_step in saved.items():
    for s in range(2, 7):   # a skipped step leaves every parameter (and statistic) exactly as it was
      same = jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, by_step[s], by_step[s - 1]))
      assert same == (skipped[s - 1] > skipped[s - 2]), (item, s, skipped)
  c.objective = 'test_poison_all'
  with pytest.raises(train.NonFiniteError, match=r'^step 3: 3 steps in a row had non-finite gradients and were '
                                                 r'skipped \(train.on_nonfinite=skip\).*checkpoints/2 \(step 2\)$'):
    train.train(c, str(tmp_path / 'all'))
  assert sorted(_finite_checkpoints(str(tmp_path / 'all'))) == [1, 2]


def test_resuming_with_another_nonfinite_policy_is_a_one_line_config_error(data_dir, tmp_path):
  """'skip' wraps the optimizer state (optax.apply_if_finite): switching policy on resume is named, not
  reported as an unreadable checkpoint."""
  c = scratch_cfg(data_dir, steps=4, checkpoint_every=2)
  train.train(c, str(tmp_path / 'run'), stop_after=2)
  c.train.on_nonfinite = 'skip'
  with pytest.raises(errors.ConfigError, match=r"^train.on_nonfinite='skip', but the checkpoints in .* were written "
                                               r"with 'stop'"):
    train.train(c, str(tmp_path / 'run'))
  c.train.on_nonfinite = 'stop'
  assert train.train(c, str(tmp_path / 'run')).init == 'resume'
