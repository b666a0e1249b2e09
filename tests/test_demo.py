"""`jaxtransfer demo --quick`: the whole pipeline end to end, and the results files it promises.

The summary is checked against each seed's own final evaluation (its metrics.jsonl), so a summary that
reports the best seed as the mean, or a population std, fails.
"""

import json
import os
import types

import numpy as np
import pytest

from jaxtransfer import demo, finetune, sweep, train

STRATEGIES, PER_CLASS, SEEDS = ('scratch', 'head+A-digits'), (1,), 2


@pytest.fixture(scope='module')
def quick_demo(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('demo')
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('JAXTRANSFER_DATA_DIR', data_dir)
    results = demo.run(str(workdir), seeds=SEEDS, quick=True, per_class=PER_CLASS, strategies=STRATEGIES)
  return workdir, results


def _final_eval_accuracy(run_dir) -> float:
  """The accuracy of the last eval line of a run's metrics.jsonl."""
  lines = [json.loads(line) for line in open(os.path.join(run_dir, 'metrics.jsonl'))]
  return [m for m in lines if 'eval/accuracy' in m][-1]['eval/accuracy']


def test_quick_demo_writes_results(quick_demo):
  workdir, results = quick_demo
  on_disk = json.load(open(workdir / 'results.json'))
  assert on_disk['accuracy'] == results['accuracy']
  assert list(on_disk['accuracy']) == list(STRATEGIES)
  assert on_disk['pretrain']['dataset'] == 'glyphs/small' and 0.0 < on_disk['pretrain']['accuracy'] <= 1.0
  # The warm-started head begins at A's digit answers: far above chance even after a tiny budget.
  assert on_disk['accuracy']['head+A-digits']['1']['mean'] > 0.2
  table = open(workdir / 'results.md').read()
  assert table.startswith('# Transfer demo: glyphs → real handwritten digits')
  assert f'mean ± std over {SEEDS} seed(s)' in table
  assert '| strategy | 1/class |' in table
  for s in STRATEGIES:   # every table cell is the summary's, in %
    cell = on_disk['accuracy'][s]['1']
    assert f'| {s} | {100 * cell["mean"]:.1f} ± {100 * cell["std"]:.1f} |' in table
  png = open(workdir / 'results.png', 'rb').read()
  assert png.startswith(b'\x89PNG') and len(png) > 5000
  # Each run ran the config of its strategy: scratch from random init, the A-digits head from A's outputs.
  for s, init_from, head_init in (('scratch', '', 'fresh'), ('head+A-digits', str(workdir / 'pretrain'), 'class_names')):
    for seed in range(SEEDS):
      cfg = json.load(open(os.path.join(demo.run_dir(str(workdir), s, 1, seed), 'config.json')))
      assert cfg['transfer']['init_from'] == init_from and cfg['transfer']['head_init'] == head_init
      assert cfg['seed'] == cfg['input']['subset_seed'] == seed
      assert cfg['optim']['lr'] == finetune.TUNED_LR[s][1]
  assert os.path.isdir(os.path.join(demo.run_dir(str(workdir), 'scratch', 1, 1), 'checkpoints'))


def test_summary_is_recomputed_from_each_seeds_own_final_eval(quick_demo):
  workdir, results = quick_demo
  spread = []
  for s in STRATEGIES:
    for k in PER_CLASS:
      accs = [_final_eval_accuracy(demo.run_dir(str(workdir), s, k, seed)) for seed in range(SEEDS)]
      spread.append(max(accs) - min(accs))
      cell = results['accuracy'][s][str(k)]
      assert cell['n'] == SEEDS
      assert cell['mean'] == pytest.approx(np.mean(accs), abs=1e-9)
      assert cell['std'] == pytest.approx(np.std(accs, ddof=1), abs=1e-9)     # sample std (ddof=1)
      for seed, acc in enumerate(accs):   # final.json holds the same final metrics the summary used
        done = json.load(open(os.path.join(demo.run_dir(str(workdir), s, k, seed), sweep.FINAL)))
        assert done['metrics']['accuracy'] == pytest.approx(acc, abs=1e-9)
  assert max(spread) > 1e-3   # the seeds differ, so a best-seed "mean" or a ddof=0 std would be caught


def test_rerun_reuses_finished_runs(quick_demo, data_dir, monkeypatch):
  workdir, results = quick_demo
  pretrain_dir = str(workdir / 'pretrain')
  calls = []

  def no_training(config, run_workdir, **kw):
    calls.append(run_workdir)
    if run_workdir != pretrain_dir:
      raise AssertionError(f'finished run trained again: {run_workdir}')
    return types.SimpleNamespace(metrics={'accuracy': results['pretrain']['accuracy']})

  monkeypatch.setattr(train, 'train', no_training)
  monkeypatch.setenv('JAXTRANSFER_DATA_DIR', data_dir)
  again = demo.run(str(workdir), seeds=SEEDS, quick=True, per_class=PER_CLASS, strategies=STRATEGIES)
  assert calls == [pretrain_dir]
  assert again['accuracy'] == results['accuracy']


def test_every_demo_strategy_is_in_the_one_table_with_tuned_rates():
  for s in demo.STRATEGIES:
    assert s in finetune.STRATEGIES
    lrs = finetune.TUNED_LR[s]
    assert set(lrs) == set(demo.PER_CLASS), s
    assert demo.learning_rate(s, 10) == lrs[10]
    assert demo.learning_rate(s, 5) == lrs[10]      # log 5 is nearer log 10 than log 1
    assert demo.learning_rate(s, 1000) == lrs[100]
    assert demo.learning_rate(s, 0) == lrs[100]     # 0 = all labels: the largest budget
  c = demo.finetune_config('head', 100, 0, '/nowhere', {}, quick=True)
  assert c.optim.lr == finetune.TUNED_LR['head'][100] and c.trainable == 'head'
  assert c.transfer.init_from == '/nowhere'
  c = demo.finetune_config('scratch', 1, 3, '/nowhere', {'name': 'cnn', 'stages': [4]}, quick=True, lr=0.5)
  assert c.optim.lr == 0.5 and c.transfer.init_from == '' and c.model.backbone == {'name': 'cnn', 'stages': [4]}
  assert c.seed == c.input.subset_seed == 3


def test_the_demo_pretrains_on_random_views_of_the_glyphs():
  from experiments.configs import pretrain_glyphs
  assert demo.pretrain_config(quick=False).input.augment
  assert pretrain_glyphs.get_config('augment').to_dict() == demo.pretrain_config(quick=False).to_dict()
  assert not pretrain_glyphs.get_config().input.augment          # the plain one the earlier studies used
  with pytest.raises(ValueError, match=':augment'):
    pretrain_glyphs.get_config('augmented')


def test_a_pretraining_of_another_config_is_not_reused(quick_demo, monkeypatch):
  workdir, _ = quick_demo
  other = demo.pretrain_config(quick=True)
  other.input.augment = True
  monkeypatch.setattr(demo, 'pretrain_config', lambda quick: other)
  monkeypatch.setattr(train, 'train', lambda *a, **kw: pytest.fail('trained on a stale pretraining'))
  from jaxtransfer import errors
  with pytest.raises(errors.ConfigError, match=r'pretrain/config.json: a run of another config \(input.augment'):
    demo.run(str(workdir), seeds=SEEDS, quick=True, per_class=PER_CLASS, strategies=STRATEGIES)
