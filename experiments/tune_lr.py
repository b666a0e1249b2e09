"""Choose each demo strategy's learning rate on a validation split, never on the test set.

Run (after `make demo` or `jaxtransfer pretrain` has produced runs/demo/pretrain):
  .venv/bin/python -m experiments.tune_lr --pretrain=runs/demo/pretrain --workdir=runs/tune_lr
Few-shot subsets come from real_digits 'train[:3000]'; accuracy is measured on 'train[3000:]' (1,000
real digits the subsets never contain). Writes results.md / results.json: validation accuracy per
(strategy, lr, labels per class), and the lr with the best mean over the label budgets.
Expected: ~72 short runs, ~10 min on 2 CPU cores with a warm compilation cache.
"""

import json
import logging
import os

import numpy as np
from absl import app, flags

from jaxtransfer import config, demo, runtime, train

flags.DEFINE_string('pretrain', 'runs/demo/pretrain', 'Pretraining workdir to transfer from.')
flags.DEFINE_string('workdir', 'runs/tune_lr', 'Where runs and results go.')
flags.DEFINE_list('lrs', ['3e-4', '1e-3', '3e-3', '1e-2'], 'Learning rates to try.')
flags.DEFINE_list('per_class', ['1', '10', '100'], 'Labels per class.')
flags.DEFINE_integer('seeds', 2, 'Seeds per cell.')
FLAGS = flags.FLAGS


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
  lines = ['| strategy | lr | ' + ' | '.join(f'{k}/class' for k in FLAGS.per_class) + ' | mean |',
           '|---|---|' + '---|' * (len(FLAGS.per_class) + 1)]
  best = {}
  for strategy, by_lr in results.items():
    means = {lr: float(np.mean([np.mean(v) for v in by_k.values()])) for lr, by_k in by_lr.items()}
    best[strategy] = max(means, key=means.get)
    for lr, by_k in by_lr.items():
      cells = ' | '.join(f'{100 * np.mean(by_k[k]):.1f}' for k in FLAGS.per_class)
      mark = ' **best**' if lr == best[strategy] else ''
      lines.append(f'| {strategy} | {lr}{mark} | {cells} | {100 * means[lr]:.1f} |')
  table = '\n'.join(lines)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  with open(os.path.join(FLAGS.workdir, 'results.json'), 'w') as f:
    json.dump({'val_accuracy': results, 'best_lr': best}, f, indent=1)
  with open(os.path.join(FLAGS.workdir, 'results.md'), 'w') as f:
    f.write('# Learning-rate choice on a validation split (real_digits train[3000:])\n\n' + table + '\n')
  print(table)


if __name__ == '__main__':
  app.run(main)
