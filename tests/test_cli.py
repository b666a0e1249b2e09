"""The `jaxtransfer` command: bad input gives one clear line and exit code 2; a killed run resumes exactly."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxtransfer import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINETUNE = os.path.join(ROOT, 'experiments', 'configs', 'finetune_digits.py')
SCRATCH = os.path.join(ROOT, 'experiments', 'configs', 'scratch_digits.py')
SMALL = ["--config.model.backbone={'name': 'cnn', 'stages': [8, 16], 'dense': [32]}"]


def jaxtransfer(*args, data_dir, **kw):
  env = dict(os.environ, JAXTRANSFER_DATA_DIR=data_dir)
  return subprocess.Popen([sys.executable, '-m', 'jaxtransfer.cli', *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run_cli(*args, data_dir):
  p = jaxtransfer(*args, data_dir=data_dir)
  out, err = p.communicate(timeout=300)
  return p.returncode, out, err


def error_lines(err):
  return [l for l in err.splitlines() if 'error' in l.lower()]


@pytest.mark.parametrize('args, message', [
    (['finetune', f'--config={FINETUNE}', '--config.transfer.init_from=/nonexistent/pretrain'],
     'no checkpoint directory at /nonexistent/pretrain'),
    (['finetune', f'--config={SCRATCH}', '--config.trainable=backbone/block_9/.*', *SMALL],
     "freeze rule 'backbone/block_9/.*' matches no parameter"),
    (['finetune', f'--config={SCRATCH}', '--config.train.stepz=3'], "unknown config key 'stepz'"),
    (['finetune', f'--config={SCRATCH}', '--config.model.num_outputs=7', *SMALL],
     'out of range for a head with 7 classes'),
    (['finetune', '--config=/nonexistent/config.py'], 'No such file or directory'),
    (['frobnicate'], 'expected one verb of pretrain | finetune | evaluate | demo'),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, data_dir, args, message):
  code, _, err = run_cli(*args, f'--workdir={tmp_path}/w', data_dir=data_dir)
  assert code == 2, err
  lines = error_lines(err)
  assert len(lines) == 1, err
  assert lines[0].startswith('jaxtransfer: error: ') and message in lines[0], err
  # The run stopped before its first step: nothing a re-run would resume from (saves start at the first
  # checkpoint_every step, so look for any step, committed or half-written).
  assert checkpoint_leftovers(tmp_path / 'w') == [], checkpoint_leftovers(tmp_path / 'w')


def checkpoint_leftovers(workdir) -> list[str]:
  """What a run left in `<workdir>/checkpoints`: committed steps (as the manager sees them) and any other
  entry, e.g. a `<step>.orbax-checkpoint-tmp-…` directory of a save cut short."""
  ckpts = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(ckpts):
    return []
  mngr = checkpoint.manager(ckpts, read_only=True)
  steps = [str(s) for s in mngr.all_steps()]
  mngr.close()
  return sorted(set(steps) | set(os.listdir(ckpts)))


def _final_params(workdir):
  mngr, step = checkpoint.open_for_reading(workdir)
  params = checkpoint.restore_subtree(mngr, step, 'params', None)
  return step, params


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(tmp_path, data_dir):
  """SIGKILL mid-run (wherever it lands, even mid-save), re-run the same command: identical final weights."""
  args = ['finetune', f'--config={SCRATCH}', *SMALL, '--config.train.steps=60', '--config.train.checkpoint_every=5',
          '--config.train.keep_checkpoints=3', '--config.train.batch_size=16']
  code, _, err = run_cli(*args, f'--workdir={tmp_path}/full', data_dir=data_dir)
  assert code == 0, err
  victim = jaxtransfer(*args, f'--workdir={tmp_path}/cut', data_dir=data_dir)
  deadline = time.time() + 240
  while not os.path.isdir(tmp_path / 'cut' / 'checkpoints' / '10') and time.time() < deadline:
    time.sleep(0.05)
  victim.send_signal(signal.SIGKILL)
  victim.communicate()
  assert victim.returncode == -signal.SIGKILL
  assert '5' in checkpoint_leftovers(tmp_path / 'cut')   # what the bad-input test looks for is really left
  code, _, err = run_cli(*args, f'--workdir={tmp_path}/cut', data_dir=data_dir)
  assert code == 0, err
  assert 'init=resume' in err
  step_a, full = _final_params(str(tmp_path / 'full'))
  step_b, resumed = _final_params(str(tmp_path / 'cut'))
  assert step_a == step_b == 60
  jax.tree_util.tree_map(np.testing.assert_array_equal, full, resumed)
