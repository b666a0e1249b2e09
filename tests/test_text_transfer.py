"""experiments/text_transfer.py without training: each strategy's config, the budgets and seeds it refuses,
and the TF-IDF cell on a small file of its own."""

import os

import pytest

from experiments import text_transfer as T


def test_each_strategy_builds_the_config_it_names(tmp_path):
  a = T.parse([f'--workdir={tmp_path}', '--mlm=/ckpt/mlm', '--minilm=/ckpt/minilm'])
  assert a.budgets == (100, 300, 1000, 0) and a.tune_seeds == (100, 101) and a.seeds == 3
  c = T.make_config('scratch', 300, 2, 1e-3, a=a)
  assert (c.transfer.init_from, c.text.tokenizer, c.trainable) == ('', 'from:/ckpt/mlm', 'all')
  assert c.model.backbone['name'] == 'transformer' and c.model.backbone['vocab_size'] == 0
  assert (c.input.per_class, c.input.subset_seed, c.seed, c.optim.lr) == (150, 2, 2, 1e-3)   # 300 labels = 150/class
  c = T.make_config('mlm head', 0, 0, 1e-2, a=a)
  assert (c.transfer.init_from, c.trainable, c.input.per_class, c.model.backbone) == ('/ckpt/mlm', 'head', 0, None)
  # the MLM encoder and its from-scratch twin fine-tune with the same dropout, whatever the pretraining used
  from experiments.configs import pretrain_mlm_wikitext
  twins = {T.make_config(s, 300, 0, 1e-3, a=a).model.backbone_dropout for s in ('scratch', 'mlm full')}
  assert twins == {pretrain_mlm_wikitext.BACKBONE['dropout']} == {0.1}
  assert T.make_config('minilm lora:8', 100, 0, 1e-3, a=a).trainable == 'lora:8'
  c = T.make_config('minilm llrd', 100, 0, 1e-4, a=a)
  assert (c.transfer.init_from, c.trainable, c.optim.llrd) == ('/ckpt/minilm', 'all', 0.8)
  assert T.make_config('minilm dapt full', 100, 0, 5e-5, a=a).transfer.init_from == os.path.join(str(tmp_path), 'dapt')
  d = T.dapt_config(a)   # the domain-adaptive MLM sees only training sentences
  assert (d.objective, d.input.train_split, d.transfer.init_from) == ('mlm', 'train', '/ckpt/minilm')


@pytest.mark.parametrize('argv, message', [(['--budgets=101'], 'even numbers'), (['--seeds=3', '--tune_seeds=2'], 'overlap'),
                                           (['--strategies=minilm huge'], 'unknown')])
def test_bad_arguments_are_refused(argv, message, capsys):
  with pytest.raises(SystemExit):
    T.parse(argv)
  assert message in capsys.readouterr().err


def test_tfidf_cell_trains_on_the_subset_and_scores_the_evaluation_split(tmp_path):
  pos = ['great phone', 'love it', 'works great', 'very good', 'good value', 'love the screen']
  neg = ['bad phone', 'hate it', 'broken again', 'very bad', 'poor value', 'hate the screen']
  path = tmp_path / 'r.tsv'
  path.write_text(''.join(f'{t} {i}\t{lab}\n' for i in range(5) for ts, lab in ((pos, 'pos'), (neg, 'neg')) for t in ts))
  a = T.parse([f'--workdir={tmp_path}', f'--data_dir={tmp_path / "tfds"}'])
  c = T.tfidf_config(0, 0, a)
  c.data = f'textfile:{path}'
  out = T.tfidf_run(c, str(tmp_path / 'cell'))
  assert out['accuracy'] > 0.8 and out['C'] > 0
  c.input.per_class = 1                 # 1 example per class cannot be cross-validated: a one-line error
  from jaxtransfer import errors
  with pytest.raises(errors.DataError, match='2\\+ training texts'):
    T.tfidf_run(c, str(tmp_path / 'cell'))


def test_curve_fine_tunes_every_kept_checkpoint_and_puts_scratch_at_step_0(tmp_path, monkeypatch):
  from jaxtransfer import sweep
  a = T.parse([f'--workdir={tmp_path}', '--mlm=/ckpt/mlm', '--seeds=2'])
  monkeypatch.setattr(T, 'curve_steps', lambda mlm: [500, 1000])
  lrs = {'mlm full': {300: 3e-4}}
  runs = T.curve_runs(a, ['scratch', 'mlm full'], lrs)
  assert [(r.col, r.seed) for r in runs] == [(500, 0), (500, 1), (1000, 0), (1000, 1)]
  assert {r.config.transfer.init_from for r in runs} == {'/ckpt/mlm/checkpoints/500', '/ckpt/mlm/checkpoints/1000'}
  assert {(r.config.optim.lr, r.config.input.per_class, r.config.trainable) for r in runs} == {(3e-4, 150, 'all')}
  assert T.curve_runs(a, ['scratch', 'mlm head'], lrs) == []                 # no 'mlm full': no curve
  result = lambda row, col, seed, acc: sweep.Result(row, col, seed, '', {'accuracy': acc}, 0.0, 0.0)
  grid = [result('scratch', 300, 0, 0.6), result('scratch', 300, 1, 0.7), result('scratch', 100, 0, 0.1),
          result('mlm full', 300, 0, 0.9)]
  curve = [result('mlm full', 500, s, 0.65 + s / 10) for s in (0, 1)]
  cs = T.curve_summary(grid, curve)['mlm full at 300 labels']
  assert list(cs) == ['0', '500'] and cs['0']['mean'] == pytest.approx(0.65) and cs['500']['mean'] == pytest.approx(0.70)


def test_minilm_fine_tunes_take_their_own_step_budget_and_untuned_budgets_the_nearest_lr(tmp_path, monkeypatch):
  a = T.parse([f'--workdir={tmp_path}', '--mlm=/ckpt/mlm', '--minilm=/ckpt/minilm', '--tune_budgets=300,0',
               '--steps=300', '--minilm_steps=100'])
  assert a.tune_budgets == (300, 0)
  steps = {s: T.make_config(s, 300, 0, 1e-3, a=a).train.steps for s in T.STRATEGIES}
  assert steps == {'scratch': 300, 'mlm head': 300, 'mlm full': 300, 'minilm head': 300, 'minilm full': 100,
                   'minilm lora:8': 100, 'minilm llrd': 100, 'minilm dapt full': 100}
  c = T.make_config('minilm full', 300, 0, 1e-3, a=a)
  assert (c.train.checkpoint_every, c.optim.warmup_steps) == (100, 10)
  # 100 → 300 (log distance 1.10 vs 2.77), 1000 → 1600 (0.47 vs 1.20)
  assert [T.nearest_tuned(n, a.tune_budgets) for n in (100, 300, 1000, 0)] == [300, 300, 0, 0]
  tuned = []

  def fake_tune(make, strategies, budgets, lrs, seeds, workdir, **kw):
    tuned.append((strategies[0], tuple(budgets)))
    return {'best_lr': {strategies[0]: {300: 1e-4, 0: 5e-5}}}

  from experiments import tune_lr
  monkeypatch.setattr(tune_lr, 'tune', fake_tune)
  lrs = T.stage_tune(a, [T.TFIDF, 'minilm dapt full', 'minilm head'])
  # DAPT is not tuned itself: 'minilm full' is, once, at the tune budgets only
  assert tuned == [('minilm full', (300, 0)), ('minilm head', (300, 0))]
  assert lrs['minilm dapt full'] == {100: 1e-4, 300: 1e-4, 1000: 5e-5, 0: 5e-5} and T.TFIDF not in lrs


def test_twin_gains_subtract_the_scratch_twin_seed_by_seed(tmp_path):
  """The own-MLM rows minus scratch, per budget and seed (not the difference of means: a seed missing on
  either side is left out); MiniLM and TF-IDF rows have no twin; the report writes it to results.json/md."""
  import json

  from jaxtransfer import sweep
  result = lambda row, col, seed, acc: sweep.Result(row, col, seed, '', None if acc is None else {'accuracy': acc},
                                                    0.0, 0.0)
  grid = [result('scratch', 300, 0, 0.60), result('scratch', 300, 1, 0.70), result('scratch', 300, 2, 0.65),
          result('mlm full', 300, 0, 0.64), result('mlm full', 300, 1, 0.71), result('mlm full', 300, 2, None),
          result('mlm head', 300, 0, 0.50), result('scratch', 1600, 0, 0.80), result('mlm full', 1600, 0, 0.86),
          result('minilm full', 300, 0, 0.90), result(T.TFIDF, 300, 0, 0.75)]
  gains = T.twin_gains(grid)
  assert set(gains) == {'mlm full − scratch', 'mlm head − scratch'}
  full = gains['mlm full − scratch']
  assert full['300'] == {'mean': pytest.approx(0.025), 'std': pytest.approx(0.0212132, rel=1e-5), 'n': 2}
  assert full['1600']['mean'] == pytest.approx(0.06) and full['1600']['n'] == 1
  assert gains['mlm head − scratch']['300']['mean'] == pytest.approx(-0.10)
  assert T.twin_gains([g for g in grid if g.row != 'scratch']) == {}
  # an unfinished run has no Result at all: the others still pair with their own seed, not by position
  partial = [g for g in grid if not (g.row == 'mlm full' and g.seed == 0)]
  assert T.twin_gains(partial)['mlm full − scratch']['300'] == {'mean': pytest.approx(0.01), 'std': 0.0, 'n': 1}
  a = T.parse([f'--workdir={tmp_path}', '--seeds=3', '--budgets=300,0'])
  lrs = {'scratch': {300: 3e-4, 0: 3e-4}, 'mlm full': {300: 3e-3, 0: 1e-3}, 'mlm head': {300: 1e-2, 0: 1e-2},
         'minilm full': {300: 5e-5, 0: 5e-5}}
  md = T.report(a, grid, [], lrs)
  saved = json.load(open(tmp_path / 'results.json'))
  assert saved['mlm_gain']['mlm full − scratch']['300']['mean'] == pytest.approx(0.025)
  text = open(tmp_path / 'results.md').read()
  assert '| mlm full − scratch | 2.5 ± 2.1 | 6.0 ± – |' in text
  # each side's own lr is printed under the paired table: a twin at another lr than its MLM row is visible
  assert ('Learning rates of the pairs (each side its own tuned lr): 300 labels: scratch 0.0003, mlm full 0.003, '
          'mlm head 0.01; 1600 labels: scratch 0.0003, mlm full 0.001, mlm head 0.01.') in text
  assert 'tf-idf' in md
  assert T.pair_lrs({'scratch': {300: 1e-3}}, ['scratch', 'mlm full']) == ''


def test_domain_shift_pairs_the_mlm_encoder_with_its_scratch_twin(tmp_path):
  """The shift stage trains the from-scratch twin on the same source sentences, seed and evaluation domain as
  'mlm full' (only the initialisation and each arm's tuned lr differ), and the report writes their paired difference."""
  import json

  from jaxtransfer import sweep
  a = T.parse([f'--workdir={tmp_path}', '--mlm=/ckpt/mlm', '--seeds=2', '--budgets=300',
               '--strategies=tf-idf + logreg,scratch,mlm full'])
  runs = T.shift_runs(a, list(a.strategies), {'scratch': {300: 3e-3}, 'mlm full': {300: 1e-3}})
  by = {(r.row, r.col, r.seed): r for r in runs}
  pairs = [k[1:] for k in by if k[0] == 'scratch']
  assert sorted(pairs) == sorted((c, s) for c in ('amazon → yelp', 'yelp → amazon') for s in (0, 1))
  for col, seed in pairs:
    twin, full = by[('scratch', col, seed)].config, by[('mlm full', col, seed)].config
    assert (twin.data, twin.input.eval_data) == (full.data, full.input.eval_data) == \
        tuple(f'sentiment_sentences/{d}' for d in col.split(' → '))
    assert (twin.seed, twin.input.subset_seed, twin.input.per_class) == (full.seed, full.input.subset_seed, 0)
    assert (twin.transfer.init_from, full.transfer.init_from, twin.optim.lr, full.optim.lr) == ('', '/ckpt/mlm', 3e-3, 1e-3)
  result = lambda row, col, seed, acc: sweep.Result(row, col, seed, '', {'accuracy': acc}, 0.0, 0.0)
  shift = [result('scratch', 'amazon → yelp', 0, 0.70), result('mlm full', 'amazon → yelp', 0, 0.73),
           result('scratch', 'amazon → yelp', 1, 0.72), result('mlm full', 'amazon → yelp', 1, 0.73),
           result(T.TFIDF, 'amazon → yelp', 0, 0.76)]
  T.report(a, [], shift, {})
  gain = json.load(open(tmp_path / 'results.json'))['mlm_gain_domain_shift']['mlm full − scratch']['amazon → yelp']
  assert gain['mean'] == pytest.approx(0.02) and gain['n'] == 2
  assert '| mlm full − scratch | 2.0 ± 1.4 |' in open(tmp_path / 'results.md').read()
