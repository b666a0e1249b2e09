"""Experiment 7 (issue #17): does self-supervised pretraining on unlabelled digits transfer to digits it was
never tuned on — and does LogME rank the sources the way fine-tuned accuracy does?

Run (needs ../shared/data for USPS and the MNIST test set):
  .venv/bin/python -m experiments.self_supervised_digits [--workdir=runs/self_supervised_digits]
      [--manual_dir=../shared/data] [--glyphs=<a plain glyph pretraining>] [--sources=…] [--seeds=3]

Sources (each pretrained once into <workdir>/pretrain_<source>, or taken from the flag that names it):
  none                the demo CNN, randomly initialised (what the features are worth without pretraining)
  glyphs              the plain glyph pretraining (config.pretrain(): 1200 steps on 50k printed glyphs; the
                      demo's until this experiment showed glyphs_aug better)
  glyphs_aug          the same on random views of the glyphs (`input.augment`, config.views' defaults): the
                      demo's pretraining now (pretrain_glyphs.py:augment)
  simclr              SimCLR on the unlabelled digit pool — real_digits train + USPS train, no label read
                      (experiments/configs/pretrain_ssl_digits.py:simclr, the demo CNN)
  mae                 MAE on the same pool (pretrain_ssl_digits.py:mae, a 4 × 128 patch Transformer)
  glyphs_then_simclr  the glyph pretraining, then SimCLR on the pool (half the steps)
  glyphs_aug_then_simclr  the same from glyphs_aug
Pretraining data vs test data: the pool holds training images only; the three test sets — real_digits test
(1000 MNIST digits), USPS test (2007, full-frame), the MNIST test set (10k) — are never in it
(tests/test_pool.py compares every image).

Evaluation, on 1 / 10 / 100 labelled digits per class of each test set's own training split (`TRAIN_ON`:
real_digits train for the real_digits and MNIST test sets, USPS train for USPS test — a new user's USPS
classifier learns from USPS labels; the seeded few-shot subsets of every study), `--seeds` subsets each:
  probe   the frozen backbone's features, a logistic-regression probe (`features.logistic_probe`, L-BFGS to
          convergence);
  lp-ft   fine-tuning through THE loop (`finetune.STRATEGIES['lp-ft']`: a third of the 200 steps the head
          alone, then everything; 'none' = the scratch strategy), each source's lr tuned per budget on the
          validation split of the training set (train[:3000] → train[3000:], tuning seeds 100, 101:
          tune_lr.tune), the final checkpoint scored on the test sets of that training set
          (`evaluation.evaluate_checkpoint`).
LogME of each source on each target's labelled training side (1000 examples of TRAIN_ON) and its Spearman ρ
with the accuracy at 10 per class (probe, and LP-FT) across the sources; the issue's targets as met / NOT met
lines. Writes results.md / results.json / results.png.
"""

import logging
import os

import numpy as np
from absl import app, flags

from experiments.configs import pretrain_glyphs, pretrain_ssl_digits
from jaxtransfer import checkpoint, config, errors, features, runtime, sweep, train, transferability
from jaxtransfer.data import catalog, fewshot

FLAGS = flags.FLAGS

TESTS = {'real_digits': ('real_digits', 'test'), 'usps': ('real_digits/usps', 'test'),
         'mnist': ('real_digits/mnist_t10k', 'test')}
# The labelled training set of each test set: its few-shot subsets, fine-tunes and LogME.
TRAIN_ON = {'real_digits': 'real_digits', 'usps': 'real_digits/usps', 'mnist': 'real_digits'}
LOGME_EXAMPLES = 1000

log = logging.getLogger('experiments')


def _pretrained(name: str) -> str:
  """The workdir of source `name`, pretrained first when it holds no checkpoint."""
  given = dict(p.split('=', 1) for p in FLAGS.pretrained)
  path = given.get(name) or (name == 'glyphs' and FLAGS.glyphs) or os.path.join(FLAGS.workdir, f'pretrain_{name}')
  if checkpoint.manager(os.path.join(path, 'checkpoints')).latest_step() is not None:
    return path
  if name in ('glyphs', 'glyphs_aug'):
    c = pretrain_glyphs.get_config('augment' if name == 'glyphs_aug' else '')
  elif name in ('simclr', 'mae', 'glyphs_then_simclr', 'glyphs_aug_then_simclr'):
    c = pretrain_ssl_digits.get_config('mae' if name == 'mae' else 'simclr')
    c.input.manual_dir, c.train.steps = FLAGS.manual_dir, FLAGS.ssl_steps
    if name.endswith('_then_simclr'):
      c.transfer.init_from = _pretrained(name.removesuffix('_then_simclr'))
      c.model.backbone, c.train.steps = None, FLAGS.ssl_steps // 2
  else:
    raise errors.ConfigError(f'--sources: unknown source {name!r}')
  log.info('pretraining source %s into %s', name, path)
  train.train(c, path)
  return path


def _backbone(name: str) -> features.Backbone:
  if name == 'none':   # the demo CNN at random init
    return features.load_backbone(_pretrained('glyphs'), random_seed=0)
  return features.load_backbone(_pretrained(name))


def _features(backbone: features.Backbone, data: str, split: str) -> features.Features:
  source = catalog.load(data, split, manual_dir=FLAGS.manual_dir)
  return features.extract(backbone, source)


def finetune_config(name: str, k: int, seed: int, lr: float, data: str = 'real_digits'):
  """LP-FT from source `name` (scratch for 'none') on k labels per class of `data`, seed, lr: 200 steps of 32."""
  from jaxtransfer import finetune
  c = config.finetune(init_from='' if name == 'none' else _pretrained(name), per_class=k)
  c.data = data
  c.seed, c.input.subset_seed, c.input.manual_dir = seed, seed, FLAGS.manual_dir
  c.train.checkpoint_every = c.train.steps
  return finetune.apply_strategy(c, 'scratch' if name == 'none' else 'lp-ft',
                                 backbone=dict(config.pretrain().model.backbone), lr=lr)


def scored_run(c, workdir: str) -> dict[str, float]:
  """A sweep run function: train, then score the final checkpoint on the test sets of its training data
  ('<test>' keys)."""
  from jaxtransfer import evaluation
  train.train(c, workdir)
  return {test: evaluation.evaluate_checkpoint(workdir, data=data, split=split,
                                               manual_dir=c.input.manual_dir)['accuracy']
          for test, (data, split) in TESTS.items() if TRAIN_ON[test] == c.data}


def lpft(budgets: list[int]) -> dict[str, dict[str, list[float]]]:
  """{'<source> lp-ft': {'<test> @k': [accuracy per seed]}}: per training set, tuned, then the reporting seeds."""
  from experiments import tune_lr
  out: dict[str, dict[str, list[float]]] = {}
  for data in dict.fromkeys(TRAIN_ON.values()):
    sub = '' if data == 'real_digits' else '_' + data.split('/')[-1]      # tune_usps/, lp-ft_usps/
    make = lambda name, k, seed, lr, data=data: finetune_config(name, k, seed, lr, data)
    tuned = tune_lr.tune(make, FLAGS.sources, budgets, FLAGS.lrs, (tune_lr.FIRST_SEED, tune_lr.FIRST_SEED + 1),
                         os.path.join(FLAGS.workdir, 'tune' + sub), workers=FLAGS.workers,
                         title=f'Learning-rate choice on a validation split ({data} {tune_lr.VAL_EVAL})',
                         caption=f'Validation accuracy (%), subsets of {data} {tune_lr.VAL_TRAIN}')
    runs = [sweep.Run(name, k, seed, finetune_config(name, k, seed, tuned['best_lr'][name][k], data),
                      os.path.join(FLAGS.workdir, 'lp-ft' + sub, name, f'{k}_per_class', f'seed_{seed}'), fn=scored_run)
            for name in FLAGS.sources for k in budgets for seed in range(FLAGS.seeds)]
    results = sweep.run(runs, FLAGS.workers, on_result=lambda i, n, r: log.info(
        '[%d/%d] %s lp-ft %d/class seed %d: %s (%.0f s)', i + 1, n, r.row, r.col, r.seed, r.metrics, r.wall_s))
    for test in (t for t in TESTS if TRAIN_ON[t] == data):
      vals = sweep.values(results, test)
      for name in FLAGS.sources:
        for k in budgets:
          out.setdefault(f'{name} lp-ft', {})[f'{test} @{k}'] = vals[name][k]
  return out


def spearman(a: list[float], b: list[float]) -> float:
  """Spearman's rank correlation (scipy.stats.spearmanr)."""
  from scipy import stats
  return float(stats.spearmanr(a, b).statistic)


def targets(acc: dict[str, dict[str, list[float]]], budgets: list[int]) -> list[str]:
  """The issue's targets as lines: the best pretrained fine-tune (probe or LP-FT) against the numbers it must
  reach — ≥ 95 % on real_digits @10, ≥ scratch + 5 on USPS @10, ≥ scratch + 30 @1 on every test set."""
  scratch = acc.get('none lp-ft')
  pretrained = {row: v for row, v in acc.items() if not row.startswith('none')}
  if not pretrained:
    return []
  def best(col: str) -> tuple[str, float]:
    row = max(pretrained, key=lambda r: np.mean(pretrained[r][col]))
    return row, 100 * float(np.mean(pretrained[row][col]))
  lines = ['Targets (best pretrained row per column, mean over the seeds):']
  if 10 in budgets:
    row, a = best('real_digits @10')
    lines.append(f'- real_digits @10 ≥ 95 %: {row} {a:.1f} % — {"met" if a >= 95 else "NOT met"}')
  for test, k, margin in [('usps', 10, 5)] + [(t, 1, 30) for t in TESTS]:
    if k in budgets and scratch is not None:
      row, a = best(f'{test} @{k}')
      s = 100 * float(np.mean(scratch[f'{test} @{k}']))
      lines.append(f'- {test} @{k} ≥ scratch + {margin}: {row} {a:.1f} vs scratch {s:.1f} ({a - s:+.1f}) — '
                   + ('met' if a - s >= margin else 'NOT met'))
  return lines


def plot(path: str, summary: dict[str, dict[str, dict[str, float]]], budgets: list[int]) -> None:
  """One panel per test set: accuracy vs labels per class, a colour per source, solid = probe, dashed = LP-FT."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(TESTS), figsize=(5 * len(TESTS), 4.2), sharey=True)
  colours = dict(zip(FLAGS.sources, plt.get_cmap('tab10').colors))
  for ax, test in zip(axes, TESTS):
    for row, by_col in summary.items():
      name, lpft_row = row.removesuffix(' lp-ft'), row.endswith(' lp-ft')
      ks = [k for k in budgets if f'{test} @{k}' in by_col]
      ax.errorbar(ks, [100 * by_col[f'{test} @{k}']['mean'] for k in ks],
                  yerr=[100 * by_col[f'{test} @{k}']['std'] for k in ks], color=colours.get(name), capsize=2,
                  marker='o', ms=3, ls='--' if lpft_row else '-',
                  label=None if lpft_row else name + (' (LP-FT: scratch)' if name == 'none' else ''))
    ax.set(xscale='log', title=f'{test} test', xlabel='labelled digits per class')
    ax.set_xticks(budgets, [str(k) for k in budgets])
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('test accuracy (%)')
  axes[0].legend(fontsize=7, title='source (solid: probe, dashed: LP-FT)', title_fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def define_flags() -> None:
  """The command line's flags (defined only when run as a script, so tests can import the module's functions
  beside other experiments that define flags of the same names)."""
  flags.DEFINE_string('workdir', 'runs/self_supervised_digits', 'Where pretrainings and results go.')
  flags.DEFINE_string('manual_dir', '../shared/data', 'Where usps.npz and the MNIST test set are.')
  flags.DEFINE_string('glyphs', '', 'A plain glyph pretraining to use as source glyphs (default: trained into '
                      '<workdir>/pretrain_glyphs).')
  flags.DEFINE_list('sources', ['none', 'glyphs', 'glyphs_aug', 'simclr', 'mae', 'glyphs_then_simclr',
                                 'glyphs_aug_then_simclr'], 'Pretraining sources (module docstring).')
  flags.DEFINE_integer('seeds', 3, 'Few-shot subsets per budget.')
  flags.DEFINE_list('per_class', ['1', '10', '100'], 'Labels per class of the probes.')
  flags.DEFINE_list('pretrained', [], 'name=workdir pairs: a source already pretrained elsewhere (e.g. '
                    'simclr=runs/simclr_digits,mae=runs/mae_digits, the pretrain_ssl_digits.py runs).')
  flags.DEFINE_list('strategies', ['probe', 'lp-ft'], 'probe (frozen features) and/or lp-ft (fine-tuning runs).')
  flags.DEFINE_list('lrs', ['3e-4', '1e-3', '3e-3', '1e-2'], 'LP-FT learning rates tuned per source and budget.')
  flags.DEFINE_integer('workers', 1, 'Worker processes for the LP-FT runs (sweep.run).')
  flags.DEFINE_integer('ssl_steps', 2000, 'Steps of each self-supervised pretraining (glyphs_then_simclr: half).')


def main(_):
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
  logging.getLogger('absl').setLevel(logging.WARNING)
  logging.getLogger('jaxtransfer').setLevel(logging.WARNING)
  runtime.configure()
  for data, _ in TESTS.values():
    catalog.info(data, manual_dir=FLAGS.manual_dir)     # one line now if ../shared/data is missing
  budgets = [int(k) for k in FLAGS.per_class]
  acc: dict[str, dict[str, list[float]]] = {}
  logme: dict[str, dict[str, float]] = {}
  for name in FLAGS.sources if 'probe' in FLAGS.strategies else ():
    bb = _backbone(name)
    train_f = {data: _features(bb, data, 'train') for data in dict.fromkeys(TRAIN_ON.values())}
    acc[name], logme[name] = {}, {}
    for test, (data, split) in TESTS.items():
      tf, test_f = train_f[TRAIN_ON[test]], _features(bb, data, split)
      for k in budgets:
        acc[name][f'{test} @{k}'] = [features.logistic_probe(tf.x[idx], tf.y[idx], test_f.x, test_f.y)['accuracy']
                                     for idx in (fewshot.k_per_class_indices(tf.y, k, s) for s in range(FLAGS.seeds))]
      logme[name][test] = transferability.logme(tf.x[:LOGME_EXAMPLES], tf.y[:LOGME_EXAMPLES])
    log.info('%s: %s', name, {c: round(100 * float(np.mean(v)), 1) for c, v in acc[name].items()})
  if 'lp-ft' in FLAGS.strategies:
    acc.update(lpft(budgets))
  probed = [n for n in FLAGS.sources if n in logme]
  rho = {}
  if len(probed) > 2 and 10 in budgets:
    for kind, row in (('probe', '{}'), ('lp-ft', '{} lp-ft')):
      if all(row.format(n) in acc for n in probed):
        rho[kind] = {test: spearman([logme[n][test] for n in probed],
                                    [float(np.mean(acc[row.format(n)][f'{test} @10'])) for n in probed])
                     for test in TESTS}
  notes = ('LogME per source (rows) and target (columns), on 1000 labelled training examples of the target:\n\n'
           '| source | ' + ' | '.join(TESTS) + ' |\n|---|' + '---|' * len(TESTS) + '\n'
           + '\n'.join(f'| {n} | ' + ' | '.join(f'{logme[n][t]:.3f}' for t in TESTS) + ' |' for n in probed)
           + '\n\nSpearman ρ between LogME and the accuracy at 10 per class across the sources (target ≥ 0.8): '
           + '; '.join(f'{kind}: ' + ', '.join(f'{t} {r:+.2f}' for t, r in by_test.items())
                       for kind, by_test in rho.items()) + '.\n\n' + '\n'.join(targets(acc, budgets)))
  table = sweep.write_results(
      FLAGS.workdir, {'accuracy': sweep.summarize(acc), 'per_seed': acc, 'logme': logme, 'spearman': rho,
                      'sources': FLAGS.sources},
      title='Experiment 7: self-supervised and supervised pretraining sources on three digit test sets',
      caption=('Test accuracy (%) with k labelled digits per class of the test set\'s own training split '
               '(real_digits train for real_digits and MNIST, USPS train for USPS) — rows "<source>": a '
               'logistic-regression probe on the frozen features; "<source> lp-ft": fine-tuned (lr tuned per '
               'budget; "none lp-ft" = scratch) — mean ± std (ddof=1) over {n} few-shot subsets; columns: test '
               'set @ k.'),
      row_header='source', xlabel='test set @ labels per class', ylabel='accuracy (%)',
      plot_title='linear probes of each pretraining source', notes=notes)
  plot(os.path.join(FLAGS.workdir, 'results.png'), sweep.summarize(acc), budgets)   # replaces the generic plot
  print(table + '\n' + notes, flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
