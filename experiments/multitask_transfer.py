"""Experiment 6d: multi-task heads on a glyph-pretrained backbone vs from scratch, at small data.

Run (after the demo's pretraining, runs/demo/pretrain: CNN [16, 32] + [128] on 28×28 printed glyphs):
  .venv/bin/python -m experiments.multitask_transfer [--pretrain=runs/demo/pretrain] [--seeds=3] [--steps=200]
The pretrained dense block expects 28×28 inputs, so it is dropped (`transfer.drop_last_blocks=1`): the two
conv blocks transfer (convolutions do not care about the canvas size) and each task gets a fresh head with
one hidden layer (`mtl.head_hidden=(32,)`) on the 12×12×32 conv features. Scratch = the same architecture
from random init. Training sets: the first N of scenes/u30 train (30 % unknown labels, masked loss).
"""

import os

from absl import app, flags

from experiments import multitask_runs as R
from experiments.configs import multitask_scenes

flags.DEFINE_string('workdir', 'runs/multitask_transfer', 'Where runs and results go.')
flags.DEFINE_string('pretrain', 'runs/demo/pretrain', 'Glyph pretraining workdir (CNN [16, 32] + [128]).')
flags.DEFINE_integer('seeds', 3, 'Seeds per cell.')
flags.DEFINE_integer('steps', 200, 'Training steps per run.')
flags.DEFINE_list('sizes', ['250', '1000'], 'Training examples (first N of scenes/u30 train).')
FLAGS = flags.FLAGS

SOURCE = {'name': 'cnn', 'stages': [16, 32], 'dense': [128]}


def make(n: int, init: str):
  def config(seed: int):
    c = multitask_scenes.get_config('scenes/u30', SOURCE, FLAGS.steps)
    c.seed, c.input.train_split = seed, f'train[:{n}]'
    c.transfer.drop_last_blocks = 1          # the conv blocks only (see the docstring)
    c.mtl.head_hidden = (32,)
    if init == 'pretrained':
      c.transfer.init_from = os.path.abspath(FLAGS.pretrain)
    return c
  return config


def main(_):
  R.setup()
  sizes = [int(s) for s in FLAGS.sizes]
  inits = ('scratch', 'pretrained')
  res = R.grid([(f'n{n}/{i}', make(n, i)) for n in sizes for i in inits], FLAGS.seeds, FLAGS.workdir)
  lines = ['| train examples | scratch | glyph-pretrained conv blocks | Δ |', '|---|---|---|---|']
  for n in sizes:
    d = [a - b for a, b in zip(res[f'n{n}/pretrained'], res[f'n{n}/scratch'])]
    lines.append(f'| {n} | {R.fmt(res[f"n{n}/scratch"])} | {R.fmt(res[f"n{n}/pretrained"])} | {R.fmt(d)} |')
  text = (f'Mean AP (%) on 1000 test scenes (true labels), mean ± std over {FLAGS.seeds} seeds, {FLAGS.steps} '
          f'steps, all parameters train.\n\n' + '\n'.join(lines))
  R.write(FLAGS.workdir, 'Experiment 6d: transfer from glyphs', text, {'mean_ap': res, 'sizes': sizes})
  R.line_plot(os.path.join(FLAGS.workdir, 'transfer.png'), sizes,
              {i: [res[f'n{n}/{i}'] for n in sizes] for i in inits}, 'training scenes')


if __name__ == '__main__':
  app.run(main)
