"""Choose each strategy's learning rate per label budget on a validation split, never on the test set.

Run (after `make demo` or `jaxtransfer pretrain` has produced runs/demo/pretrain) for the demo's strategies:
  .venv/bin/python -m experiments.tune_lr --pretrain=runs/demo/pretrain --workdir=runs/tune_lr
Few-shot subsets come from real_digits 'train[:3000]'; accuracy is measured on 'train[3000:]' (1,000
real digits the subsets never contain). Tuning seeds start at --first_seed (100): disjoint from the seeds
the studies report (0, 1, 2), so the reported runs are not the ones the lr was picked on. Writes
results.md / results.json: validation accuracy per (strategy, lr, labels per class), and per strategy
and label budget the chosen lr: the best mean over seeds, the smaller lr on a near-tie (`choose`);
`finetune.TUNED_LR` (the demo's rates) holds these.

`tune(...)` is the tuning stage of every study (experiments/transfer_vs_data_size.py calls it): one sweep
(jaxtransfer/sweep.py) of strategies × lrs × budgets × seeds, cached per run, so a re-run is free.
Measured (old 0-based seeds): 150 runs (5 strategies × 5 lrs × 3 budgets × 2 seeds) in 14.5 min on 2 CPU cores.
"""

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags

from jaxtransfer import sweep, train

VAL_TRAIN, VAL_EVAL = 'train[:3000]', 'train[3000:]'   # real_digits: subsets from the first, accuracy on the rest
TIE = 0.005   # validation accuracies this close to the best count as ties: the smaller lr is safer
FIRST_SEED = 100

MakeConfig = Callable[[str, int, int, float], ml_collections.ConfigDict]   # (strategy, per_class, seed, lr)


def digits_validation(c: ml_collections.ConfigDict) -> None:
  """The digit studies' validation splits: subsets of real_digits VAL_TRAIN, accuracy on VAL_EVAL."""
  c.input.train_split, c.input.eval_split, c.input.eval_data = VAL_TRAIN, VAL_EVAL, ''


def choose(by_lr: dict[str, dict[Any, list[float]]], k: Any) -> str:
  """The smallest lr whose mean validation accuracy at k labels per class is within TIE of the best (an lr
  at the edge of divergence that wins by a hair is not worth a seed that diverges)."""
  # A run that diverged (train.NonFiniteError: no result, None) rules its lr out.
  means = {lr: -np.inf if any(a is None for a in v[k]) else float(np.mean(v[k])) for lr, v in by_lr.items()}
  top = max(means.values())
  return min((lr for lr, m in means.items() if m >= top - TIE), key=float)


def _col(k: int) -> Any:
  return k if k else 'all'


def tune(make_config: MakeConfig, strategies: Sequence[str], per_class: Sequence[int], lrs: Sequence[str],
         seeds: Sequence[int], workdir: str, *, workers: int = 1,
         run_fn: Callable[[str], sweep.RunFn] = lambda strategy: sweep.train_run,
         validation: Callable[[ml_collections.ConfigDict], None] = digits_validation, key: str = 'accuracy',
         title: str = f'Learning-rate choice on a validation split (real_digits {VAL_EVAL})',
         caption: str = f'Validation accuracy (%), subsets of real_digits {VAL_TRAIN}',
         col_label: Callable[[Any], str] = lambda k: f'{k}/class') -> dict[str, Any]:
  """Validation accuracy of every (strategy, lr, labels per class, seed) and the chosen lr per strategy and
  budget. `make_config(strategy, k, seed, lr)` builds the run and `validation(config)` moves it onto the
  validation splits (default: the digit studies'); `key` is the metric chosen on; `run_fn(strategy)` runs
  it (e.g. `sweep.probe(...)` for head-only strategies); `lrs` are names ('3e-4') whose float is the rate.
  Writes results.json / results.md / results.png in `workdir`.

  Returns {'val_accuracy': {strategy: {lr: {k: [metric per seed]}}}, 'best_lr': {strategy: {k: lr (float)}},
  'seeds': [...]} (k = 0: all of VAL_TRAIN).
  """
  runs = []
  for s in strategies:
    for lr in lrs:
      for k in per_class:
        for seed in seeds:
          c = make_config(s, k, seed, float(lr))
          validation(c)
          runs.append(sweep.Run(f'{s} lr={lr}', _col(k), seed, c,
                                os.path.join(workdir, s, f'lr{lr}', str(k), f'seed_{seed}'), fn=run_fn(s),
                                no_result=(train.NonFiniteError,)))   # an lr that diverges is a result too
  done = lambda i, n, r: print(f'tune [{i + 1}/{n}] {r.row} k={r.col} seed={r.seed}: ' + (
      f'val {key} {r.metrics[key]:.4f}' if r.metrics else 'diverged (no result)'), flush=True)
  vals = sweep.values(sweep.run(runs, workers, on_result=done), key)
  by_strategy = {s: {lr: vals[f'{s} lr={lr}'] for lr in lrs} for s in strategies}
  best = {s: {k: choose(by_lr, _col(k)) for k in per_class} for s, by_lr in by_strategy.items()}
  write(workdir, by_strategy, best, seeds, title=title, caption=caption, key=key, col_label=col_label)
  return {'val_accuracy': by_strategy, 'best_lr': {s: {k: float(lr) for k, lr in b.items()} for s, b in best.items()},
          'seeds': list(seeds)}


def write(workdir: str, by_strategy: dict[str, dict[str, dict[Any, list[float]]]], best: dict[str, dict[int, str]],
          seeds: Sequence[int], *, title: str, caption: str, key: str = 'accuracy',
          col_label: Callable[[Any], str] = lambda k: f'{k}/class') -> str:
  """The sweep writer's table of the validation metric per (strategy, lr) × budget, and the chosen lrs."""
  summary = sweep.summarize({f'{s} lr={lr}': by_k for s, by_lr in by_strategy.items() for lr, by_k in by_lr.items()})
  ks = list(next(iter(best.values())))
  chosen = ['| strategy | ' + ' | '.join(col_label(_col(k)) for k in ks) + ' |', '|---|' + '---|' * len(ks)]
  chosen += [f'| {s} | ' + ' | '.join(b[k] for k in ks) + ' |' for s, b in best.items()]
  results = {key: summary, 'best_lr': {s: {str(k): lr for k, lr in b.items()} for s, b in best.items()},
             'val_accuracy': {s: {lr: {str(k): v for k, v in by_k.items()} for lr, by_k in by_lr.items()}
                              for s, by_lr in by_strategy.items()},
             'seeds': list(seeds), 'validation': caption}
  table = sweep.write_results(
      workdir, results, metric=key, title=title,
      caption=f'{caption}, mean ± std over {{n}} tuning seed(s) ({", ".join(map(str, seeds))}).',
      row_header='strategy, lr', col_label=col_label, xlabel='labelled examples per class',
      ylabel=f'validation {key} (%)', plot_title='learning-rate tuning',
      notes='## Chosen learning rate (best mean, the smaller on a tie within '
            f'{100 * TIE:.1f} points)\n\n' + '\n'.join(chosen))
  print(table + '\n\n' + '\n'.join(chosen), flush=True)
  return table


def define_flags() -> None:
  """The command line's flags (defined only when run as a script: `tune` is also a library function)."""
  flags.DEFINE_string('pretrain', 'runs/demo/pretrain', 'Pretraining workdir to transfer from.')
  flags.DEFINE_string('workdir', 'runs/tune_lr', 'Where runs and results go.')
  flags.DEFINE_list('lrs', ['3e-4', '1e-3', '3e-3', '1e-2', '3e-2'], 'Learning rates to try.')
  flags.DEFINE_list('per_class', ['1', '10', '100'], 'Labels per class.')
  flags.DEFINE_integer('seeds', 2, 'Tuning seeds per cell: first_seed, first_seed + 1, …')
  flags.DEFINE_integer('first_seed', FIRST_SEED, 'The first tuning seed (disjoint from the reporting seeds 0, 1, 2).')
  flags.DEFINE_integer('workers', 1, 'Worker processes.')


def main(_):
  FLAGS = flags.FLAGS
  from jaxtransfer import config, demo, runtime
  logging.getLogger('jaxtransfer').setLevel(logging.WARNING)
  runtime.configure()
  backbone = dict(config.pretrain().model.backbone)
  make = lambda s, k, seed, lr: demo.finetune_config(s, k, seed, FLAGS.pretrain, backbone, quick=False, lr=lr)
  tune(make, demo.STRATEGIES, [int(k) for k in FLAGS.per_class], FLAGS.lrs,
       range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds), FLAGS.workdir, workers=FLAGS.workers)


if __name__ == '__main__':
  define_flags()
  app.run(main)
