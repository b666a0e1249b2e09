"""Experiment 7 (issue #17): does self-supervised pretraining on unlabelled digits transfer to digits it was
never tuned on — and does LogME rank the sources the way fine-tuned accuracy does?

Run (needs ../shared/data for USPS and the MNIST test set; `make demo` first for the glyph pretraining):
  .venv/bin/python -m experiments.self_supervised_digits [--workdir=runs/self_supervised_digits]
      [--manual_dir=../shared/data] [--glyphs=runs/demo/pretrain] [--sources=…] [--seeds=3]

Sources (each pretrained once into <workdir>/pretrain_<source>, or taken from the flag that names it):
  none                the demo CNN, randomly initialised (what the features are worth without pretraining)
  glyphs              the demo's glyph pretraining (config.pretrain(): 1200 steps on 50k printed glyphs)
  glyphs_aug          the same on random views of the glyphs (`input.augment`, config.views' defaults)
  simclr              SimCLR on the unlabelled digit pool — real_digits train + USPS train, no label read
                      (experiments/configs/pretrain_ssl_digits.py:simclr, the demo CNN)
  mae                 MAE on the same pool (pretrain_ssl_digits.py:mae, a 4 × 128 patch Transformer)
  glyphs_then_simclr  the glyph pretraining, then SimCLR on the pool (half the steps)
Pretraining data vs test data: the pool holds training images only; the three test sets — real_digits test
(1000 MNIST digits), USPS test (2007, full-frame), the MNIST test set (10k) — are never in it
(tests/test_pool.py compares every image).

Evaluation (what is measured today): the frozen backbone's features, a logistic-regression probe
(`features.logistic_probe`, L-BFGS to convergence) trained on 1 / 10 / 100 labelled digits per class of
real_digits train (the seeded few-shot subsets of every study), `--seeds` subsets each, scored on the three
test sets; LogME of each source on each target's labelled training side (real_digits train for real_digits
and MNIST, USPS train for USPS; 1000 examples) and its Spearman ρ with the probe's accuracy at 10 per class
across the sources. Writes results.md / results.json / results.png.
"""

import logging
import os

import numpy as np
from absl import app, flags

from experiments.configs import pretrain_ssl_digits
from jaxtransfer import checkpoint, config, errors, features, runtime, sweep, train, transferability
from jaxtransfer.data import catalog, fewshot

flags.DEFINE_string('workdir', 'runs/self_supervised_digits', 'Where pretrainings and results go.')
flags.DEFINE_string('manual_dir', '../shared/data', 'Where usps.npz and the MNIST test set are.')
flags.DEFINE_string('glyphs', 'runs/demo/pretrain', 'The glyph pretraining (trained there if missing).')
flags.DEFINE_list('sources', ['none', 'glyphs', 'glyphs_aug', 'simclr', 'mae', 'glyphs_then_simclr'],
                  'Pretraining sources (module docstring).')
flags.DEFINE_integer('seeds', 3, 'Few-shot subsets per budget.')
flags.DEFINE_list('per_class', ['1', '10', '100'], 'Labels per class of the probes.')
flags.DEFINE_list('pretrained', [], 'name=workdir pairs: a source already pretrained elsewhere (e.g. '
                  'simclr=runs/simclr_digits,mae=runs/mae_digits, the pretrain_ssl_digits.py runs).')
flags.DEFINE_integer('ssl_steps', 2000, 'Steps of each self-supervised pretraining (glyphs_then_simclr: half).')
FLAGS = flags.FLAGS

TESTS = {'real_digits': ('real_digits', 'test'), 'usps': ('real_digits/usps', 'test'),
         'mnist': ('real_digits/mnist_t10k', 'test')}
LOGME_ON = {'real_digits': ('real_digits', 'train'), 'usps': ('real_digits/usps', 'train'),
            'mnist': ('real_digits', 'train')}
LOGME_EXAMPLES = 1000

log = logging.getLogger('experiments')


def _pretrained(name: str) -> str:
  """The workdir of source `name`, pretrained first when it holds no checkpoint."""
  given = dict(p.split('=', 1) for p in FLAGS.pretrained)
  path = given.get(name) or (FLAGS.glyphs if name == 'glyphs' else os.path.join(FLAGS.workdir, f'pretrain_{name}'))
  if checkpoint.manager(os.path.join(path, 'checkpoints')).latest_step() is not None:
    return path
  if name == 'glyphs':
    c = config.pretrain()
  elif name == 'glyphs_aug':
    c = config.pretrain()
    c.input.augment = True
  elif name in ('simclr', 'mae', 'glyphs_then_simclr'):
    c = pretrain_ssl_digits.get_config('mae' if name == 'mae' else 'simclr')
    c.input.manual_dir, c.train.steps = FLAGS.manual_dir, FLAGS.ssl_steps
    if name == 'glyphs_then_simclr':
      c.transfer.init_from, c.model.backbone, c.train.steps = _pretrained('glyphs'), None, FLAGS.ssl_steps // 2
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


def spearman(a: list[float], b: list[float]) -> float:
  """Spearman's rank correlation (scipy.stats.spearmanr)."""
  from scipy import stats
  return float(stats.spearmanr(a, b).statistic)


def main(_):
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
  logging.getLogger('absl').setLevel(logging.WARNING)
  runtime.configure()
  for data, _ in TESTS.values():
    catalog.info(data, manual_dir=FLAGS.manual_dir)     # one line now if ../shared/data is missing
  budgets = [int(k) for k in FLAGS.per_class]
  acc: dict[str, dict[str, list[float]]] = {}
  logme: dict[str, dict[str, float]] = {}
  for name in FLAGS.sources:
    bb = _backbone(name)
    train_f = _features(bb, 'real_digits', 'train')
    acc[name] = {}
    for test, (data, split) in TESTS.items():
      test_f = _features(bb, data, split)
      for k in budgets:
        acc[name][f'{test} @{k}'] = [features.logistic_probe(train_f.x[idx], train_f.y[idx], test_f.x, test_f.y)
                                     ['accuracy'] for idx in (fewshot.k_per_class_indices(train_f.y, k, s)
                                                              for s in range(FLAGS.seeds))]
      ldata, lsplit = LOGME_ON[test]
      lf = train_f if (ldata, lsplit) == ('real_digits', 'train') else _features(bb, ldata, lsplit)
      logme[name] = {**logme.get(name, {}), test: transferability.logme(lf.x[:LOGME_EXAMPLES], lf.y[:LOGME_EXAMPLES])}
    log.info('%s: %s', name, {c: round(100 * float(np.mean(v)), 1) for c, v in acc[name].items()})
  rho = {test: spearman([logme[n][test] for n in FLAGS.sources],
                        [float(np.mean(acc[n][f'{test} @10'])) for n in FLAGS.sources]) for test in TESTS}
  notes = ('LogME per source (rows) and target (columns), on 1000 labelled training examples of the target:\n\n'
           '| source | ' + ' | '.join(TESTS) + ' |\n|---|' + '---|' * len(TESTS) + '\n'
           + '\n'.join(f'| {n} | ' + ' | '.join(f'{logme[n][t]:.3f}' for t in TESTS) + ' |' for n in FLAGS.sources)
           + '\n\nSpearman ρ between LogME and the probe\'s accuracy at 10 per class across the sources: '
           + ', '.join(f'{t} {r:+.2f}' for t, r in rho.items()) + ' (target ≥ 0.8).')
  table = sweep.write_results(
      FLAGS.workdir, {'accuracy': sweep.summarize(acc), 'per_seed': acc, 'logme': logme, 'spearman': rho,
                      'sources': FLAGS.sources},
      title='Experiment 7: self-supervised and supervised pretraining sources, linear probes on three digit sets',
      caption=('Test accuracy (%) of a logistic-regression probe on the frozen features, trained on k labelled '
               'real_digits per class, mean ± std (ddof=1) over {n} few-shot subsets; columns: test set @ k.'),
      row_header='source', xlabel='test set @ labels per class', ylabel='accuracy (%)',
      plot_title='linear probes of each pretraining source', notes=notes)
  print(table + '\n' + notes, flush=True)


if __name__ == '__main__':
  app.run(main)
