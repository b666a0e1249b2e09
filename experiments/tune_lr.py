"""Choose each demo strategy's learning rate on a validation split, never on the test set.

Run (after `make demo` or `jaxtransfer pretrain` has produced runs/demo/pretrain):
  .venv/bin/python -m experiments.tune_lr --pretrain=runs/demo/pretrain --workdir=runs/tune_lr
Few-shot subsets come from real_digits 'train[:3000]'; accuracy is measured on 'train[3000:]' (1,000
real digits the subsets never contain). Writes results.md / results.json: validation accuracy per
(strategy, lr, labels per class), and per strategy and label budget the chosen lr: the best mean over
seeds, the smaller lr on a near-tie (`choose`); `demo.STRATEGIES` uses these.
Measured: 150 runs (5 strategies × 5 lrs × 3 budgets × 2 seeds) in 14.5 min on 2 CPU cores.
"""

import json
import logging
import os

import numpy as np
from absl import app, flags

from jaxtransfer import config, demo, runtime, train

flags.DEFINE_string('pretrain', 'runs/demo/pretrain', 'Pretraining workdir to transfer from.')
flags.DEFINE_string('workdir', 'runs/tune_lr', 'Where runs and results go.')
flags.DEFINE_list('lrs', ['3e-4', '1e-3', '3e-3', '1e-2', '3e-2'], 'Learning rates to try.')
flags.DEFINE_list('per_class', ['1', '10', '100'], 'Labels per class.')
flags.DEFINE_integer('seeds', 2, 'Seeds per cell.')
FLAGS = flags.FLAGS


TIE = 0.005   # validation accuracies this close to the best count as ties: the smaller lr is safer


def choose(by_lr: dict[str, dict[str, list[float]]], k: str) -> str:
  """The smallest lr whose mean validation accuracy at k labels per class is within TIE of the best (an lr
  at the edge of divergence that wins by a hair is not worth a seed that diverges)."""
  means = {lr: float(np.mean(v[k])) for lr, v in by_lr.items()}
  top = max(means.values())
  return min((lr for lr, m in means.items() if m >= top - TIE), key=float)


def main(_):
  logging.getLogger('jaxtransfer').setLevel(logging.WARNING)
  runtime.configure()
  pretrain_backbone = dict(config.pretrain().model.backbone)
  results: dict[str, dict[str, dict[str, list[float]]]] = {}
  for strategy in demo.STRATEGIES:
    for lr in FLAGS.lrs:
      for k in map(int, FLAGS.per_class):
        for seed in range(FLAGS.seeds):
          c = demo.finetune_config(strategy, k, seed, FLAGS.pretrain, pretrain_backbone, quick=False)
          c.optim.lr = float(lr)
          c.input.train_split, c.input.eval_split = 'train[:3000]', 'train[3000:]'
          out = train.train(c, os.path.join(FLAGS.workdir, strategy, f'lr{lr}', f'{k}', f'seed_{seed}'))
          results.setdefault(strategy, {}).setdefault(lr, {}).setdefault(str(k), []).append(out.metrics['accuracy'])
          print(f'{strategy} lr={lr} k={k} seed={seed}: val accuracy {out.metrics["accuracy"]:.4f}', flush=True)
  write(results, FLAGS.workdir)


def write(results: dict[str, dict[str, dict[str, list[float]]]], workdir: str) -> None:
  """results.md (the table) and results.json (accuracies and the chosen lrs) from {strategy: {lr: {k: [acc]}}}."""
  ks = list(next(iter(next(iter(results.values())).values())))
  lines = ['| strategy | lr | ' + ' | '.join(f'{k}/class' for k in ks) + ' |', '|---|---|' + '---|' * len(ks)]
  best = {}   # strategy -> labels per class -> the chosen lr
  for strategy, by_lr in results.items():
    best[strategy] = {k: choose(by_lr, k) for k in ks}
    for lr, by_k in by_lr.items():
      cells = ' | '.join(f'{100 * np.mean(by_k[k]):.1f}' + (' **chosen**' if best[strategy][k] == lr else '')
                         for k in ks)
      lines.append(f'| {strategy} | {lr} | {cells} |')
  table = '\n'.join(lines)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'val_accuracy': results, 'best_lr': best}, f, indent=1)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write('# Learning-rate choice on a validation split (real_digits train[3000:])\n\n' + table + '\n')
  print(table)


if __name__ == '__main__':
  app.run(main)
