"""`jaxtransfer demo`: the whole story on embedded data, in minutes on a laptop CPU.

prepare data → pretrain the CNN on random views of printed glyphs (task A; `input.augment`: crop, rotation,
shear, translation, stroke width, contrast — so the backbone stops depending on one digit framing) →
checkpoint → fine-tune on 1, 10 and 100
real handwritten digits per class (task B) with five strategies, 3 seeds each → `results.md`,
`results.json` and `results.png` in the workdir. Every stage is an ordinary `train.train` run in its own
sub-workdir, so an interrupted demo resumes where it stopped; the fine-tunes are one sweep
(jaxtransfer/sweep.py): a finished one leaves final.json and a re-run of the demo reuses it.

Strategies (same budget for all; each strategy's learning rate per label budget chosen on a validation
split by experiments/tune_lr.py, never on the test digits — see BUILD_NOTES.md):
  scratch   same architecture, random init, everything trains;
  head      pretrained backbone frozen, new linear head (linear probe);
  last-1    pretrained backbone, its last block and the new head train;
  full      pretrained backbone, everything trains;
  head+A-digits  as `head`, but the new output layer starts from A's outputs for the classes of the
            same name (task A's '0'…'9'), `transfer.head_init=class_names`.
"""

import logging
import os
from typing import Any

import ml_collections

from jaxtransfer import config as config_lib
from jaxtransfer import finetune, sweep, train

log = logging.getLogger('jaxtransfer')

# The demo's strategies (finetune.STRATEGIES entries), each at its lr validated per label budget
# (finetune.TUNED_LR, chosen by experiments/tune_lr.py).
STRATEGIES: tuple[str, ...] = ('scratch', 'head', 'last-1', 'full', 'head+A-digits')
PER_CLASS = (1, 10, 100)
# The demo stays on JAX's default device layout: splitting the batch over fake CPU devices sped up the
# batch-128 pretraining but slowed the batch-32 fine-tunes (BUILD_NOTES.md, "Performance"). Set e.g. 4
# here to split (no effect on GPU/TPU).
CPU_DEVICES = 0
TITLE = 'Transfer demo: glyphs → real handwritten digits'
CAPTION = 'Test accuracy (%) on the held-out real digits, mean ± std over {n} seed(s).'


def learning_rate(strategy: str, per_class: int) -> float:
  """The strategy's tuned lr for `per_class` labels (an untuned budget takes the nearest tuned one, in log scale)."""
  return finetune.tuned_lr(strategy, per_class)


def pretrain_config(quick: bool) -> ml_collections.ConfigDict:
  """The glyph pretraining on random views (experiments/configs/pretrain_glyphs.py:augment): better features
  than the plain one for every digit set measured (experiment 7, BUILD_NOTES.md) at the same budget."""
  c = config_lib.pretrain()
  # quick (tests) stays plain: 30 steps on random views do not learn the glyphs' digit outputs well enough
  # for head+A-digits to start from them, and the quick demo checks the pipeline, not the pretraining.
  c.input.augment = not quick
  c.mesh.cpu_devices = 0 if quick else CPU_DEVICES  # quick (tests): keep the caller's device setup
  if quick:
    c.data = 'glyphs/small'
    c.train.steps, c.train.checkpoint_every, c.train.log_every = 30, 30, 10
  return c


def finetune_config(strategy: str, per_class: int, seed: int, pretrain_dir: str,
                    backbone: dict[str, Any], quick: bool, lr: float | None = None) -> ml_collections.ConfigDict:
  """Strategy `strategy` at `per_class` labels from `pretrain_dir` (`backbone`: the architecture for a
  strategy from random init); `lr` replaces the tuned one (experiments/tune_lr.py tries several)."""
  c = config_lib.finetune(init_from=pretrain_dir, per_class=per_class)
  c.seed = seed
  c.input.subset_seed = seed
  c.mesh.cpu_devices = 0 if quick else CPU_DEVICES
  if quick:
    c.train.steps, c.train.log_every = 10, 10
  c.train.checkpoint_every = c.train.steps
  return finetune.apply_strategy(c, strategy, backbone=backbone,
                                 lr=learning_rate(strategy, per_class) if lr is None else lr)


def run_dir(workdir: str, strategy: str, per_class: int, seed: int) -> str:
  return os.path.join(workdir, 'finetune', strategy, f'{per_class}_per_class', f'seed_{seed}')


def write_results(workdir: str, results: dict[str, Any]) -> str:
  """results.json, results.md (table) and results.png (accuracy vs labels per class); returns the table."""
  return sweep.write_results(workdir, results, metric='accuracy', title=TITLE, caption=CAPTION,
                             col_label=lambda k: f'{k}/class', xlabel='labelled examples per class',
                             ylabel='test accuracy (%)', plot_title='glyphs → real digits', xscale='log')


def run(workdir: str, *, seeds: int = 3, quick: bool = False, per_class: tuple[int, ...] = PER_CLASS,
        strategies: tuple[str, ...] = STRATEGIES, workers: int = 1) -> dict[str, Any]:
  """Pretrain, fine-tune the grid (a sweep: finished runs are reused), write and print the results.
  Returns the results.json dict."""
  os.makedirs(workdir, exist_ok=True)
  pre = pretrain_config(quick)
  pretrain_dir = os.path.join(workdir, 'pretrain')
  sweep.check_trained_config(pre, pretrain_dir)     # a finished pretraining of another config is not reused
  log.info('demo: pretraining on %s → %s', pre.data, pretrain_dir)
  pre_out = train.train(pre, pretrain_dir)
  log.info('demo: pretrained, %s test accuracy %.4f', pre.data, pre_out.metrics['accuracy'])
  backbone = dict(pre.model.backbone)
  runs = [sweep.Run(s, k, seed, finetune_config(s, k, seed, pretrain_dir, backbone, quick), run_dir(workdir, s, k, seed))
          for k in per_class for s in strategies for seed in range(seeds)]
  done = lambda i, n, r: log.info('demo: [%d/%d] %s, %d per class, seed %d: accuracy %.4f', i + 1, n, r.row, r.col,
                                  r.seed, r.metrics['accuracy'])
  results = {'accuracy': sweep.summarize(sweep.values(sweep.run(runs, workers, on_result=done), 'accuracy'))}
  results['pretrain'] = {'dataset': pre.data, 'accuracy': pre_out.metrics['accuracy']}
  table = write_results(workdir, results)
  print(table)
  print(f'\nwrote {os.path.join(workdir, "results.md")}, results.json, results.png')
  return results
