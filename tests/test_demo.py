"""`jaxtransfer demo --quick`: the whole pipeline end to end, and the results files it promises."""

import json
import os

from jaxtransfer import demo


def test_quick_demo_writes_results(tmp_path, data_dir, monkeypatch):
  monkeypatch.setenv('JAXTRANSFER_DATA_DIR', data_dir)
  results = demo.run(str(tmp_path), seeds=2, quick=True, per_class=(1,), strategies=('scratch', 'head+A-digits'))
  on_disk = json.load(open(tmp_path / 'results.json'))
  assert on_disk['accuracy'] == results['accuracy']
  assert set(on_disk['accuracy']) == {'scratch', 'head+A-digits'}
  for by_k in on_disk['accuracy'].values():
    cell = by_k['1']
    assert 0.0 <= cell['mean'] <= 1.0 and cell['std'] >= 0.0 and cell['n'] == 2
  # The warm-started head begins at A's digit answers: far above chance even after a tiny budget.
  assert on_disk['accuracy']['head+A-digits']['1']['mean'] > 0.2
  table = open(tmp_path / 'results.md').read()
  assert '| scratch |' in table and '1/class' in table
  assert os.path.getsize(tmp_path / 'results.png') > 5000
  assert os.path.isdir(tmp_path / 'finetune' / 'scratch' / '1_per_class' / 'seed_1' / 'checkpoints')


def test_learning_rates_per_budget_nearest_in_log_scale():
  for s, spec in demo.STRATEGIES.items():
    assert set(spec['lr']) == set(demo.PER_CLASS), s
    assert demo.learning_rate(s, 10) == spec['lr'][10]
    assert demo.learning_rate(s, 5) == spec['lr'][10]      # log 5 is nearer log 10 than log 1
    assert demo.learning_rate(s, 1000) == spec['lr'][100]
  c = demo.finetune_config('head', 100, 0, '/nowhere', {}, quick=True)
  assert c.optim.lr == demo.STRATEGIES['head']['lr'][100] and c.trainable == 'head'
