"""Damaged checkpoints (issue #19): resume falls back to the newest step that restores; evaluate and
init_from name the damaged checkpoint and file in one line (CheckpointError, exit code 2 on the CLI)."""

import glob
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxtransfer import checkpoint, errors, evaluation, train, transfer
from jaxtransfer import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_CNN = {'name': 'cnn', 'stages': [8, 16], 'dense': [32]}


def run_cfg(data_dir):
  c = config_lib.finetune(init_from='', trainable='all', per_class=5)
  c.model.backbone = SMALL_CNN
  c.input.data_dir = data_dir
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 12, 16, 4, 4
  c.train.keep_checkpoints = 3
  return c


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_dir):
  """An uninterrupted 12-step run, and the same run "preempted" after 8 steps (checkpoints 4 and 8)."""
  root = tmp_path_factory.mktemp('damage')
  full = train.train(run_cfg(data_dir), str(root / 'full'))
  cut = train.train(run_cfg(data_dir), str(root / 'cut'), stop_after=8)
  assert cut.step == 8
  return root, full


def copy_of(runs, tmp_path, name='cut'):
  root, _ = runs
  dst = str(tmp_path / name)
  shutil.copytree(str(root / name), dst)
  return dst


def truncate_largest(item_dir):
  """Halve the largest data file of a PyTree item (the arrays' bytes); return its path."""
  files = [f for f in glob.glob(os.path.join(item_dir, '**', 'd', '*'), recursive=True) if os.path.isfile(f)]
  victim = max(files, key=os.path.getsize)
  with open(victim, 'r+b') as f:
    f.truncate(os.path.getsize(victim) // 2)
  return victim


def test_resume_falls_back_to_the_previous_checkpoint_bit_identically(runs, data_dir, tmp_path, caplog):
  _, full = runs
  workdir = copy_of(runs, tmp_path)
  step8 = os.path.join(workdir, 'checkpoints', '8')
  victim = truncate_largest(os.path.join(step8, 'params'))
  with caplog.at_level(logging.WARNING, logger='jaxtransfer'):
    resumed = train.train(run_cfg(data_dir), workdir)
  assert resumed.init == 'resume' and resumed.step == 12
  warnings = [r.getMessage() for r in caplog.records if 'skipping damaged checkpoint step 8' in r.getMessage()]
  assert len(warnings) == 1 and '\n' not in warnings[0] and victim in warnings[0], warnings
  # Steps 5–12 were redone from step 4; the damaged step is kept aside, step 8 was written again.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['12', '4', '8', '8.damaged']
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.params, full.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.opt_state, full.opt_state)
  assert resumed.metrics['accuracy'] == full.metrics['accuracy']


def test_resume_with_every_checkpoint_damaged_stops_with_one_line(runs, data_dir, tmp_path):
  workdir = copy_of(runs, tmp_path)
  for step in ('4', '8'):
    os.remove(os.path.join(workdir, 'checkpoints', step, 'meta', 'metadata'))
  with pytest.raises(checkpoint.CheckpointError, match=r'^no checkpoint in .* restores') as e:
    train.train(run_cfg(data_dir), workdir)
  assert '\n' not in str(e.value) and 'meta/metadata' in str(e.value)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8']  # nothing moved or deleted


def test_evaluate_names_the_removed_metadata_file(runs, tmp_path):
  workdir = copy_of(runs, tmp_path, 'full')
  missing = os.path.join(workdir, 'checkpoints', '12', 'meta', 'metadata')
  os.remove(missing)
  with pytest.raises(checkpoint.CheckpointError) as e:
    evaluation.evaluate_checkpoint(workdir)
  assert isinstance(e.value, errors.Error)
  message = str(e.value)
  assert '\n' not in message and len(message) < 400, message
  assert message.startswith(f'checkpoint {os.path.join(workdir, "checkpoints", "12")}') and missing in message


@pytest.mark.parametrize('damage', ['truncate', 'delete'])
def test_evaluate_and_init_from_name_the_damaged_item(runs, tmp_path, damage):
  workdir = copy_of(runs, tmp_path, 'full')
  params_dir = os.path.join(workdir, 'checkpoints', '12', 'params')
  victim = truncate_largest(params_dir)
  if damage == 'delete':
    os.remove(victim)
  # The message names the step and the data file that cannot be read (and the stored array in it).
  expected = f'checkpoint {os.path.join(workdir, "checkpoints", "12")} is damaged: cannot read {victim} (value '
  with pytest.raises(checkpoint.CheckpointError) as e:
    evaluation.evaluate_checkpoint(workdir)
  assert str(e.value).startswith(expected) and '\n' not in str(e.value), str(e.value)
  # init_from reads the same params item (the backbone only): the same one-line error.
  _, full = runs
  with pytest.raises(checkpoint.CheckpointError) as e:
    transfer.init_from(workdir, full.params, full.batch_stats)
  assert str(e.value).startswith(expected) and '\n' not in str(e.value), str(e.value)


def test_cli_evaluate_on_a_damaged_checkpoint_is_one_line_and_exit_code_2(runs, tmp_path, data_dir):
  workdir = copy_of(runs, tmp_path, 'full')
  truncate_largest(os.path.join(workdir, 'checkpoints', '12', 'params'))
  env = dict(os.environ, JAXTRANSFER_DATA_DIR=data_dir)
  p = subprocess.run([sys.executable, '-m', 'jaxtransfer.cli', 'evaluate', f'--workdir={workdir}'], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2, p.stderr
  assert 'Traceback' not in p.stderr, p.stderr
  lines = [l for l in p.stderr.splitlines() if 'error' in l.lower()]
  assert len(lines) == 1 and lines[0].startswith('jaxtransfer: error: checkpoint '), p.stderr
  assert 'is damaged: cannot read' in lines[0], p.stderr
