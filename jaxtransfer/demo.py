"""`jaxtransfer demo`: the whole story on embedded data, in minutes on a laptop CPU.

prepare data → pretrain the CNN on printed glyphs (task A) → checkpoint → fine-tune on 1, 10 and 100
real handwritten digits per class (task B) with four strategies, 3 seeds each → `results.md`,
`results.json` and `results.png` in the workdir. Every stage is an ordinary `train.train` run in its own
sub-workdir, so an interrupted demo resumes where it stopped.

Strategies (same budget for all; each strategy's learning rate per label budget chosen on a validation
split by experiments/tune_lr.py, never on the test digits — see BUILD_NOTES.md):
  scratch   same architecture, random init, everything trains;
  head      pretrained backbone frozen, new linear head (linear probe);
  last-1    pretrained backbone, its last block and the new head train;
  full      pretrained backbone, everything trains;
  head+A-digits  as `head`, but the new output layer starts from A's outputs for the classes of the
            same name (task A's '0'…'9'), `transfer.head_init=class_names`.
"""

import json
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from jaxtransfer import config as config_lib
from jaxtransfer import train

log = logging.getLogger('jaxtransfer')

# lr per labels-per-class budget: the best mean validation accuracy of experiments/tune_lr.py (2 seeds,
# lrs 3e-4 … 3e-2, subsets of real_digits train[:3000], validation train[3000:]; BUILD_NOTES.md).
STRATEGIES: dict[str, dict[str, Any]] = {
    'scratch': {'trainable': 'all', 'init_from': False, 'lr': {1: 3e-4, 10: 3e-3, 100: 3e-3}},
    'head': {'trainable': 'head', 'init_from': True, 'lr': {1: 3e-2, 10: 1e-2, 100: 3e-2}},
    'last-1': {'trainable': 'last:1', 'init_from': True, 'lr': {1: 1e-3, 10: 1e-3, 100: 3e-3}},
    'full': {'trainable': 'all', 'init_from': True, 'lr': {1: 3e-3, 10: 1e-3, 100: 3e-3}},
    # The head-only probe again, its output layer started from A's outputs for the digits '0'…'9'.
    'head+A-digits': {'trainable': 'head', 'init_from': True, 'head_init': 'class_names',
                      'lr': {1: 3e-4, 10: 1e-2, 100: 3e-2}},
}
PER_CLASS = (1, 10, 100)
# Splitting the batch over 4 CPU devices made pretraining 1.5× faster per step (8.5 vs ~5 steps/s)
# but the batch-32 fine-tunes slower (10 steps/s, ~2× the 1-device step): the demo stays on JAX's
# default device layout. Set e.g. 4 here to split (no effect on GPU/TPU).
CPU_DEVICES = 0


def learning_rate(strategy: str, per_class: int) -> float:
  """The strategy's tuned lr for `per_class` labels (an untuned budget takes the nearest tuned one, in log scale)."""
  lrs = STRATEGIES[strategy]['lr']
  return lrs[min(lrs, key=lambda k: abs(np.log(k) - np.log(per_class)))]


def pretrain_config(quick: bool) -> ml_collections.ConfigDict:
  c = config_lib.pretrain()
  c.mesh.cpu_devices = 0 if quick else CPU_DEVICES  # quick (tests): keep the caller's device setup
  if quick:
    c.data = 'glyphs/small'
    c.train.steps, c.train.checkpoint_every, c.train.log_every = 30, 30, 10
  return c


def finetune_config(strategy: str, per_class: int, seed: int, pretrain_dir: str,
                    backbone: dict[str, Any], quick: bool) -> ml_collections.ConfigDict:
  s = STRATEGIES[strategy]
  c = config_lib.finetune(init_from=pretrain_dir if s['init_from'] else '', trainable=s['trainable'],
                          per_class=per_class)
  if not s['init_from']:
    c.model.backbone = backbone
  c.seed = seed
  c.input.subset_seed = seed
  c.mesh.cpu_devices = 0 if quick else CPU_DEVICES
  c.optim.lr = learning_rate(strategy, per_class)
  c.transfer.head_init = s.get('head_init', 'fresh')
  c.train.checkpoint_every = c.train.steps
  if quick:
    c.train.steps, c.train.checkpoint_every, c.train.log_every = 10, 10, 10
  return c


def summarize(acc: dict[str, dict[int, list[float]]]) -> dict[str, Any]:
  """{'accuracy': {strategy: {per_class: {'mean', 'std', 'n'}}}} — the results.json schema."""
  return {'accuracy': {s: {str(k): {'mean': float(np.mean(v)), 'std': float(np.std(v)), 'n': len(v)}
                           for k, v in by_k.items()} for s, by_k in acc.items()}}


def write_results(workdir: str, results: dict[str, Any]) -> str:
  """results.json, results.md (table) and results.png (accuracy vs labels per class); returns the table."""
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  acc = results['accuracy']
  ks = sorted({int(k) for by_k in acc.values() for k in by_k})
  lines = ['| strategy | ' + ' | '.join(f'{k}/class' for k in ks) + ' |', '|---|' + '---|' * len(ks)]
  for s, by_k in acc.items():
    cells = [f'{100 * by_k[str(k)]["mean"]:.1f} ± {100 * by_k[str(k)]["std"]:.1f}' if str(k) in by_k else '–'
             for k in ks]
    lines.append(f'| {s} | ' + ' | '.join(cells) + ' |')
  table = '\n'.join(lines)
  n = max(v['n'] for by_k in acc.values() for v in by_k.values())
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write('# Transfer demo: glyphs → real handwritten digits\n\n'
            f'Test accuracy (%) on the held-out real digits, mean ± std over {n} seed(s).\n\n' + table + '\n')
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for s, by_k in acc.items():
    xs = [k for k in ks if str(k) in by_k]
    m = np.array([by_k[str(k)]['mean'] for k in xs])
    sd = np.array([by_k[str(k)]['std'] for k in xs])
    ax.errorbar(xs, 100 * m, yerr=100 * sd, marker='o', capsize=3, label=s)
  ax.set(xscale='log', xlabel='labelled examples per class', ylabel='test accuracy (%)',
         title='glyphs → real digits')
  ax.set_xticks(ks, [str(k) for k in ks])
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'results.png'), dpi=120)
  plt.close(fig)
  return table


def run(workdir: str, *, seeds: int = 3, quick: bool = False,
        per_class: tuple[int, ...] = PER_CLASS, strategies: tuple[str, ...] = tuple(STRATEGIES)) -> dict[str, Any]:
  """Pretrain, fine-tune the grid, write and print the results. Returns the results.json dict."""
  os.makedirs(workdir, exist_ok=True)
  pre = pretrain_config(quick)
  pretrain_dir = os.path.join(workdir, 'pretrain')
  log.info('demo: pretraining on %s → %s', pre.data, pretrain_dir)
  pre_out = train.train(pre, pretrain_dir)
  log.info('demo: pretrained, %s test accuracy %.4f', pre.data, pre_out.metrics['accuracy'])
  acc: dict[str, dict[int, list[float]]] = {s: {} for s in strategies}
  cells = [(s, k, seed) for k in per_class for s in strategies for seed in range(seeds)]
  for i, (s, k, seed) in enumerate(cells):
    c = finetune_config(s, k, seed, pretrain_dir, dict(pre.model.backbone), quick)
    out = train.train(c, os.path.join(workdir, 'finetune', s, f'{k}_per_class', f'seed_{seed}'))
    acc[s].setdefault(k, []).append(out.metrics['accuracy'])
    log.info('demo: [%d/%d] %s, %d per class, seed %d: accuracy %.4f', i + 1, len(cells), s, k, seed,
             out.metrics['accuracy'])
  results = summarize(acc)
  results['pretrain'] = {'dataset': pre.data, 'accuracy': pre_out.metrics['accuracy']}
  table = write_results(workdir, results)
  print(table)
  print(f'\nwrote {os.path.join(workdir, "results.md")}, results.json, results.png')
  return results
