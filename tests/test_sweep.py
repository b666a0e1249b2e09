"""The sweep runner: cached runs are not run again, a worker pool gives the same results and ends with a
killed sweep, the summary is the sample (ddof=1) mean ± std of each seed's own value, and the writer's
files say the same."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from jaxtransfer import config as config_lib
from jaxtransfer import errors, sweep


def fake_run(config, workdir):
  """A stand-in run: accuracy from (lr, seed); counts its calls in the workdir; lr < 0 has no data."""
  if config.optim.lr < 0:
    raise errors.DataError('no training example')
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'calls'), 'a') as f:
    f.write('x')
  return {'accuracy': config.optim.lr * 10 + 0.01 * config.seed ** 2, 'params': np.zeros(3)}


def _runs(base, lrs=(0.01, 0.02), seeds=(0, 1, 2), no_result=()):
  out = []
  for lr in lrs:
    for seed in seeds:
      c = config_lib.base()
      c.optim.lr, c.seed = lr, seed
      out.append(sweep.Run(f'lr={lr}', 10, seed, c, os.path.join(base, str(lr), f'seed_{seed}'), fn=fake_run,
                           no_result=no_result))
  return out


def _calls(run):
  return len(open(os.path.join(run.workdir, 'calls')).read())


def test_runs_are_cached_in_their_workdirs_and_summarized_with_ddof_1(tmp_path):
  runs = _runs(str(tmp_path))
  first = sweep.run(runs)
  assert [(r.row, r.seed) for r in first] == [(r.row, r.seed) for r in runs]
  assert all(_calls(r) == 1 for r in runs)
  assert set(first[0].metrics) == {'accuracy'}                    # scalars only: the probe's params are dropped
  again = sweep.run(runs)                                         # nothing runs twice
  assert all(_calls(r) == 1 for r in runs) and again == first
  vals = sweep.values(first, 'accuracy')
  want = [0.1, 0.11, 0.14]
  np.testing.assert_allclose(vals['lr=0.01'][10], want)
  cell = sweep.summarize(vals)['lr=0.01']['10']
  assert cell['n'] == 3
  assert cell['mean'] == pytest.approx(np.mean(want))
  assert cell['std'] == pytest.approx(np.std(want, ddof=1)) and cell['std'] > np.std(want)
  # A finished workdir that ran another config is an error, not a silent reuse.
  other = _runs(str(tmp_path), lrs=(0.01,))[0]
  other.config.optim.weight_decay = 0.1
  with pytest.raises(errors.ConfigError, match=r'a run of another config \(optim.weight_decay differ\)'):
    sweep.run([other])
  with pytest.raises(errors.ConfigError, match='share the workdir'):
    sweep.run([runs[0], runs[0]])
  # A run train.train finished (its config.json) without a final.json: resumed only if it is the same config.
  fresh = _runs(str(tmp_path / 'trained'), lrs=(0.03,), seeds=(0,))[0]
  os.makedirs(fresh.workdir)
  saved = fresh.config.to_dict()
  saved['optim']['lr'], saved['a_key_of_an_older_schema'] = 0.5, 1
  json.dump(saved, open(os.path.join(fresh.workdir, 'config.json'), 'w'), default=str)
  with pytest.raises(errors.ConfigError, match=r'config.json: a run of another config \(optim.lr differ\)'):
    sweep.run([fresh])
  saved['optim']['lr'] = 0.03
  json.dump(saved, open(os.path.join(fresh.workdir, 'config.json'), 'w'), default=str)
  assert sweep.run([fresh])[0].metrics['accuracy'] == pytest.approx(0.3)


def test_no_result_errors_are_recorded_and_other_errors_raise(tmp_path):
  runs = _runs(str(tmp_path), lrs=(-1.0,), seeds=(0,), no_result=(errors.DataError,))
  (r,) = sweep.run(runs)
  assert r.metrics is None
  assert json.load(open(os.path.join(runs[0].workdir, sweep.FINAL)))['metrics'] is None
  assert sweep.summarize(sweep.values([r], 'accuracy')) == {'lr=-1.0': {}}
  with pytest.raises(errors.DataError):
    sweep.run(_runs(str(tmp_path / 'b'), lrs=(-1.0,), seeds=(0,)))


def test_worker_pool_gives_the_serial_results(tmp_path):
  runs = _runs(str(tmp_path / 'pool'), lrs=(0.01,), seeds=(0, 1))
  pooled = sweep.run(runs, workers=2)
  serial = sweep.run(_runs(str(tmp_path / 'serial'), lrs=(0.01,), seeds=(0, 1)))
  assert [r.metrics for r in pooled] == [r.metrics for r in serial]
  assert all(_calls(r) == 1 for r in runs)


KILLED_SWEEP = textwrap.dedent("""
    import os, sys, time
    from jaxtransfer import config as config_lib, sweep

    def slow(config, workdir):
      open(os.path.join(sys.argv[1], f'worker_{os.getpid()}'), 'w').close()
      time.sleep(300)
      return {'accuracy': 1.0}

    if __name__ == '__main__':
      sweep.run([sweep.Run('r', 0, s, config_lib.base(), os.path.join(sys.argv[1], f's{s}'), fn=slow)
                 for s in range(2)], workers=2)
""")


def _running(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'    # a zombie has ended
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='reads process states from /proc (Linux)')
def test_a_killed_sweep_takes_its_workers_with_it(tmp_path):
  """SIGTERM to the sweep's process skips the pool's own cleanup: the workers must notice and end, not train on."""
  script = tmp_path / 'sweep_script.py'
  script.write_text(KILLED_SWEEP)
  parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stderr=subprocess.DEVNULL)
  workers: list[int] = []
  try:
    deadline = time.time() + 120
    while len(workers) < 2 and time.time() < deadline and parent.poll() is None:
      time.sleep(0.2)
      workers = [int(f.name.split('_')[1]) for f in tmp_path.glob('worker_*')]
    assert len(workers) == 2, 'the two workers never started their runs'
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=30)
    deadline = time.time() + 15
    while any(map(_running, workers)) and time.time() < deadline:
      time.sleep(0.2)
    assert not any(map(_running, workers)), f'workers {[w for w in workers if _running(w)]} outlived the sweep'
    assert not any(tmp_path.glob(f's*/{sweep.FINAL}'))    # the cut runs left no result to be taken as finished
  finally:
    parent.kill()
    for w in workers:
      if _running(w):
        os.kill(w, signal.SIGKILL)


def test_single_seed_std_and_missing_cells_in_the_written_table(tmp_path):
  summary = {'a': {'1': sweep.stats([0.5]), '10': sweep.stats([0.6, 0.8])}, 'b': {'10': sweep.stats([None, 0.7])}}
  assert summary['a']['1'] == {'mean': 0.5, 'std': 0.0, 'n': 1}
  assert summary['b']['10'] == {'mean': 0.7, 'std': 0.0, 'n': 1}
  assert sweep.stats([None]) is None
  table = sweep.write_results(str(tmp_path), {'accuracy': summary, 'extra': 1}, title='T', caption='over {n} seeds',
                              col_label=lambda k: f'{k}/class', xscale='log', notes='N')
  md = open(tmp_path / 'results.md').read()
  assert md == f'# T\n\nover 2 seeds\n\n{table}\n\nN\n'
  assert table.splitlines() == ['| strategy | 1/class | 10/class |', '|---|---|---|',
                                f'| a | 50.0 ± – | 70.0 ± {100 * np.std([0.6, 0.8], ddof=1):.1f} |',
                                '| b | – | 70.0 ± – |']
  assert json.load(open(tmp_path / 'results.json')) == {'accuracy': summary, 'extra': 1}
  assert open(tmp_path / 'results.png', 'rb').read(4) == b'\x89PNG'


def fake_val_run(config, workdir):
  """Validation accuracy peaking at lr 1e-2 for 'a' and at 1e-3 for 'b'; must run on the validation split."""
  assert (config.input.train_split, config.input.eval_split) == ('train[:3000]', 'train[3000:]')
  best = 1e-2 if config.trainable == 'head' else 1e-3
  return {'accuracy': 0.9 - abs(np.log10(config.optim.lr / best)) / 10 + 0.001 * config.seed}


def test_tuning_stage_picks_the_best_lr_per_budget_on_the_validation_split(tmp_path):
  from experiments import transfer_vs_data_size, tune_lr

  def make(strategy, k, seed, lr):
    c = config_lib.finetune(init_from='/ckpt', per_class=k, trainable='head' if strategy == 'a' else 'all')
    c.seed, c.optim.lr = seed, lr
    return c

  out = tune_lr.tune(make, ('a', 'b'), (1, 0), ('1e-3', '1e-2'), (100, 101), str(tmp_path), run_fn=lambda s: fake_val_run)
  assert out['best_lr'] == {'a': {1: 1e-2, 0: 1e-2}, 'b': {1: 1e-3, 0: 1e-3}}
  assert out['val_accuracy']['a']['1e-2']['all'] == pytest.approx([0.9 + 0.1, 0.9 + 0.101])
  saved = json.load(open(tmp_path / 'results.json'))
  assert saved['best_lr'] == {'a': {'1': '1e-2', '0': '1e-2'}, 'b': {'1': '1e-3', '0': '1e-3'}}
  assert saved['accuracy']['a lr=1e-2']['1']['n'] == 2
  # Ties within TIE go to the smaller lr.
  assert tune_lr.choose({'1e-3': {1: [0.800]}, '1e-2': {1: [0.803]}}, 1) == '1e-3'
  assert tune_lr.choose({'1e-3': {1: [0.80]}, '1e-2': {1: [0.81]}}, 1) == '1e-2'
  # The study refuses tuning seeds that are also reporting seeds.
  with pytest.raises(SystemExit):
    transfer_vs_data_size.parse(['--seeds=3', '--tune_seeds=2,100'])
  a = transfer_vs_data_size.parse(['--quick'])
  assert (a.steps, a.per_class, a.tune_seeds, a.lr_grid) == (10, (1, 10), (100,), ('1e-3', '1e-2'))


def test_a_diverging_tuning_run_rules_its_lr_out_instead_of_stopping_the_study(tmp_path, capsys):
  from experiments import tune_lr
  from jaxtransfer import train

  def diverging(config, workdir):
    if config.optim.lr == 1e-2 and config.seed == 101:
      raise train.NonFiniteError('step 3: the loss became non-finite (NaN/inf)')
    return fake_val_run(config, workdir)

  def make(strategy, k, seed, lr):
    c = config_lib.finetune(init_from='/ckpt', per_class=k, trainable='head')
    c.seed, c.optim.lr = seed, lr
    return c

  out = tune_lr.tune(make, ('a',), (1,), ('1e-3', '1e-2'), (100, 101), str(tmp_path), run_fn=lambda s: diverging)
  assert out['val_accuracy']['a']['1e-2'][1] == [pytest.approx(1.0), None]
  assert out['best_lr'] == {'a': {1: 1e-3}}            # 1e-2 scores higher on seed 100 but diverged on 101
  assert 'diverged (no result)' in capsys.readouterr().out


def test_multitask_grid_tunes_each_cell_on_the_validation_split_then_reports_at_that_lr(tmp_path):
  from absl import flags

  from experiments import multitask_runs as R
  flags.FLAGS.mark_as_parsed()
  seen = []

  def fake_mtl_run(config, workdir):
    seen.append((config.input.train_split, config.input.eval_split, config.seed, config.optim.lr))
    best = 1e-2 if config.mtl.unknown_policy == 'mask' else 1e-3
    return {'mean_ap': 0.7 - abs(np.log10(config.optim.lr / best)) / 10 + 0.001 * config.seed}

  def make(policy, split):
    def config(seed):
      c = config_lib.base()
      c.seed, c.mtl.unknown_policy, c.input.train_split, c.optim.lr = seed, policy, split, 3e-3
      return c
    return config

  g = R.grid([('mask', make('mask', 'train')), ('neg', make('negative', 'train[:250]')),
              ('big', make('negative', 'train[:5000]'))], 2, str(tmp_path), fn=fake_mtl_run)
  assert g.lr == {'mask': 1e-2, 'neg': 1e-3, 'big': 1e-3}
  tuning = {(t, e) for t, e, seed, _ in seen if seed >= 100}
  assert tuning == {('train[:4000]', 'train[4000:]'), ('train[:250]', 'train[4000:]')}   # never the test split
  report = sorted((t, e, seed, lr) for t, e, seed, lr in seen if seed < 100)
  assert report == [('train', 'test', 0, 1e-2), ('train', 'test', 1, 1e-2),
                    ('train[:250]', 'test', 0, 1e-3), ('train[:250]', 'test', 1, 1e-3),
                    ('train[:5000]', 'test', 0, 1e-3), ('train[:5000]', 'test', 1, 1e-3)]
  assert g.values['mask'] == pytest.approx([0.7, 0.701])
  with pytest.raises(errors.ConfigError, match='no validation twin'):
    R.validation(make('mask', 'train[10%:]')(0))


@pytest.mark.parametrize('xscale, cols, ticks_at_columns', [('linear', (0, 12000, 13000), False),
                                                            ('linear', (0, 30, 50, 70), True),
                                                            ('log', (100, 300, 1600), True)])
def test_plot_ticks_every_column_unless_a_linear_axis_is_crowded(tmp_path, monkeypatch, xscale, cols,
                                                                 ticks_at_columns):
  """Close columns on a linear axis (a curve's 12000 and 13000 steps) would print overlapping labels: there the
  axis keeps matplotlib's round ticks; evenly spread columns and a log axis of budgets keep one tick per column."""
  import matplotlib.figure
  seen = {}
  real = matplotlib.figure.Figure.savefig
  monkeypatch.setattr(matplotlib.figure.Figure, 'savefig',
                      lambda fig, *a, **k: (seen.setdefault('ticks', list(fig.axes[0].get_xticks())), real(fig, *a, **k)))
  summary = {'row': {str(c): {'mean': 0.5, 'std': 0.1, 'n': 2} for c in cols}}
  sweep.plot(str(tmp_path / 'p.png'), summary, xlabel='x', ylabel='y', xscale=xscale)
  assert (tmp_path / 'p.png').stat().st_size > 0
  assert (sorted(seen['ticks']) == [float(c) for c in cols]) is ticks_at_columns
