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


@pytest.mark.parametrize('args', [['--help'], ['-h'], [], ['help']])
def test_help_lists_the_verbs_and_exits_0(args, data_dir):
  code, out, err = run_cli(*args, data_dir=data_dir)
  assert code == 0, err
  verbs = [l.split()[0] for l in out.splitlines() if l.startswith('  ')]
  assert verbs == ['pretrain', 'finetune', 'evaluate', 'demo', 'import-weights', 'advise', 'export'], out
  assert 'Unknown command line flag' not in out + err


@pytest.mark.parametrize('verb, flags, config_help', [
    ('finetune', ['--config', '--workdir', '--verbosity'], True),
    ('pretrain', ['--config', '--workdir'], True),
    ('evaluate', ['--workdir', '--split', '--data'], False),
    ('advise', ['--checkpoints', '--layers', '--per_class', '--data'], False),
])
def test_verb_help_shows_its_flags_and_exits_0(verb, flags, config_help, data_dir):
  code, out, err = run_cli(verb, '--help', data_dir=data_dir)
  assert code == 0, err
  shown = {l.split(':')[0].strip() for l in out.splitlines() if l.startswith('  --')}
  assert set(flags) <= shown, out
  assert ('--seeds' in shown) is False                        # demo's flag is not listed for other verbs
  assert ('--config.<key>=<value>' in out) == config_help and ('--config.train.steps=' in out) == config_help, out


def test_config_value_out_of_range_is_one_line_and_exit_code_2(tmp_path, data_dir):
  code, _, err = run_cli('finetune', f'--config={SCRATCH}', '--config.train.steps=-5', f'--workdir={tmp_path}/w',
                         data_dir=data_dir)
  assert code == 2, err
  assert err.strip().splitlines() == ['jaxtransfer: error: config.train.steps=-5: must be >= 1'], err
  assert not os.path.exists(tmp_path / 'w')


NOISE = ('OpenCV is not installed', 'Given directory is read only', 'sys.meta_path is None', 'Traceback',
         'dataset_info.json', 'Exception ignored')


def test_output_holds_no_third_party_noise_unless_verbosity_asks(tmp_path, data_dir):
  """A tiny fine-tune on a JPEG folder prints only jaxtransfer's own lines; --verbosity shows the rest."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for cls in ('ants', 'bees'):
      os.makedirs(tmp_path / 'photos' / split / cls)
      for i in range(2):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / 'photos' / split / cls / f'{i}.jpg')
  workdir = f'--workdir={tmp_path}/run'
  code, _, err = run_cli('finetune', f'--config={SCRATCH}', f'--config.data=imagefolder:{tmp_path}/photos?size=12',
                         '--config.train.steps=2', '--config.input.per_class=0', '--config.train.batch_size=4',
                         "--config.model.backbone={'name': 'cnn', 'stages': [4], 'dense': [8]}", workdir,
                         data_dir=data_dir)
  assert code == 0, err
  assert 'init=scratch' in err and 'step 2 eval accuracy' in err, err
  for noise in NOISE:
    assert noise not in err, (noise, err)
  # The same third-party warnings are there, and shown, when --verbosity asks (evaluate reads the run
  # read-only and decodes the JPEGs again).
  code, out, verbose = run_cli('evaluate', workdir, '--verbosity=-1', data_dir=data_dir)
  assert code == 0 and 'accuracy=' in out, verbose
  assert 'Given directory is read only' in verbose and 'OpenCV is not installed' in verbose, verbose
