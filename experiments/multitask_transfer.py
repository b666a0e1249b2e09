"""Experiment 6d: multi-task heads on a glyph-pretrained backbone vs from scratch, at small data.

Run (starts from the demo's pretraining, runs/demo/pretrain — trained first if it is missing):
  .venv/bin/python -m experiments.multitask_transfer [--pretrain=runs/demo/pretrain] [--seeds=3] [--steps=400]
Model (experiments/configs/multitask_scenes.py): the CNN's two conv blocks (its 28×28 dense block dropped,
`transfer.drop_last_blocks=1`), global max pooling, per task a fresh head with one hidden layer of 64; all
parameters train. Pretrained = the conv blocks from the glyph checkpoint; scratch = the same architecture
from random init. Training sets: the first N of scenes/u30 train (30 % unknown labels, masked loss).
"""

from absl import app, flags

from experiments import multitask_runs as R
from experiments.configs import multitask_scenes
from jaxtransfer import sweep

flags.DEFINE_string('workdir', 'runs/multitask_transfer', 'Where runs and results go.')
flags.DEFINE_integer('seeds', 3, 'Seeds per cell.')
flags.DEFINE_integer('steps', 400, 'Training steps per run.')
flags.DEFINE_list('sizes', ['250', '1000', '5000'], 'Training examples (first N of scenes/u30 train).')
FLAGS = flags.FLAGS



def make(n: int, init: str):
  def config(seed: int):
    c = multitask_scenes.get_config('scenes/u30', R.pretrained() if init == 'pretrained' else None, FLAGS.steps)
    c.seed, c.input.train_split = seed, f'train[:{n}]'
    return c
  return config


def main(_):
  R.setup()
  sizes = [int(s) for s in FLAGS.sizes]
  inits = ('scratch', 'pretrained')
  g = R.grid([(f'n{n}/{i}', make(n, i)) for n in sizes for i in inits], FLAGS.seeds, FLAGS.workdir)
  res = g.values
  names = {'scratch': 'scratch', 'pretrained': 'glyph-pretrained conv blocks'}
  vals = {names[i]: {n: res[f'n{n}/{i}'] for n in sizes} for i in inits}
  delta = 'Δ pretrained − scratch (paired by seed)'
  vals[delta] = {n: R.paired(res[f'n{n}/pretrained'], res[f'n{n}/scratch']) for n in sizes}
  table = sweep.write_results(
      FLAGS.workdir, {'mean_ap': sweep.summarize(vals), 'per_seed': res, 'sizes': sizes, 'steps': FLAGS.steps,
                      'lr': g.lr},
      metric='mean_ap', title='Experiment 6d: transfer from glyphs',
      caption=(f'Mean AP (%) on 1000 test scenes (true labels), mean ± std (ddof=1) over {{n}} seeds, '
               f'{FLAGS.steps} steps, all parameters train; columns: training examples.'),
      row_header='init', xlabel='training scenes', ylabel='mean AP (%)', xscale='log',
      plot_title='transfer from glyphs', plot_rows=list(names.values()), notes=R.lr_notes(g.lr))
  print(table, flush=True)


if __name__ == '__main__':
  app.run(main)
