"""Experiment 6c: loss-weighting methods against equal weighting.

Run:
  .venv/bin/python -m experiments.multitask_weighting [--workdir=runs/multitask_weighting] [--seeds=3] [--steps=400]
Six presence heads over the glyph-pretrained conv blocks (experiments/configs/multitask_scenes.py) on scenes/u30 (30 % unknown training labels, masked loss), config.mtl.weighting =
equal | uncertainty | gradnorm | pcgrad | cagrad (jaxtransfer/weighting.py, default hyper-parameters).
GradNorm / PCGrad / CAGrad take one backward pass per task (6×), so their runs cost ~3–6× an equal run.
"""

import os

from absl import app, flags

from experiments import multitask_runs as R
from experiments.configs import multitask_scenes

flags.DEFINE_string('workdir', 'runs/multitask_weighting', 'Where runs and results go.')
flags.DEFINE_integer('seeds', 3, 'Seeds per cell.')
flags.DEFINE_integer('steps', 400, 'Training steps per run.')
flags.DEFINE_list('methods', ['equal', 'uncertainty', 'gradnorm', 'pcgrad', 'cagrad'], 'Weighting methods.')
FLAGS = flags.FLAGS



def make(method: str):
  def config(seed: int):
    c = multitask_scenes.get_config('scenes/u30', R.pretrained(), FLAGS.steps)
    c.seed, c.mtl.weighting = seed, method
    return c
  return config


def main(_):
  R.setup()
  res = R.grid([(m, make(m)) for m in FLAGS.methods], FLAGS.seeds, FLAGS.workdir)
  base = res.get('equal')
  lines = ['| weighting | mean AP | Δ vs equal (paired by seed) |', '|---|---|---|']
  for m in FLAGS.methods:
    d = [a - b for a, b in zip(res[m], base)] if base else []
    lines.append(f'| {m} | {R.fmt(res[m])} | {R.fmt(d) if base else "–"} |')
  text = (f'Mean AP (%) on 1000 test scenes (true labels), scenes/u30, mean ± std over {FLAGS.seeds} seeds, '
          f'{FLAGS.steps} steps.\n\n' + '\n'.join(lines))
  R.write(FLAGS.workdir, 'Experiment 6c: loss weighting', text, {'mean_ap': res, 'steps': FLAGS.steps})
  R.line_plot(os.path.join(FLAGS.workdir, 'weighting.png'), list(range(len(FLAGS.methods))),
              {m: [res[m] if m == n else [None] for n in FLAGS.methods] for m in FLAGS.methods},
              'method (0 = ' + ', '.join(f'{i} {m}' for i, m in enumerate(FLAGS.methods)) + ')')


if __name__ == '__main__':
  app.run(main)
