"""Experiment 6b: one shared network with T heads vs T separate single-task networks, across widths.

Run:
  .venv/bin/python -m experiments.multitask_vs_single [--workdir=runs/multitask_vs_single] [--seeds=3] [--steps=300]
Fully labelled scenes (scenes/u0). For each backbone width, multi-task = one CNN with six presence heads;
single-task = six CNNs of the same width, one per task (each its own run, same steps and batch), scored
together: mean AP over the six tasks, each from its own network. Caruana: multi-task should win unless the
shared network is too small to hold all the tasks. Budget: widths × seeds × 7 runs.
"""

import os

from absl import app, flags

from experiments import multitask_runs as R
from experiments.configs import multitask_scenes
from jaxtransfer.data.builders import scenes

flags.DEFINE_string('workdir', 'runs/multitask_vs_single', 'Where runs and results go.')
flags.DEFINE_integer('seeds', 3, 'Seeds per cell.')
flags.DEFINE_integer('steps', 300, 'Training steps per run.')
flags.DEFINE_list('widths', ['2', '4', '8'], 'First conv stage width w: CNN [w, 2w] + dense [4w].')
FLAGS = flags.FLAGS

TASKS = scenes.task_config(6)


def backbone(w: int):
  return {'name': 'cnn', 'stages': [w, 2 * w], 'dense': [4 * w]}


def make(w: int, tasks):
  def config(seed: int):
    c = multitask_scenes.get_config('scenes/u0', backbone(w), FLAGS.steps)
    c.seed, c.tasks = seed, tasks
    return c
  return config


def main(_):
  R.setup()
  widths = [int(w) for w in FLAGS.widths]
  mtl, stl = {}, {}
  for w in widths:
    mtl[w] = R.grid([(f'w{w}/multitask', make(w, TASKS))], FLAGS.seeds, FLAGS.workdir)[f'w{w}/multitask']
    per_task = R.grid([(f'w{w}/single_{n}', make(w, {n: spec})) for n, spec in TASKS.items()],
                      FLAGS.seeds, FLAGS.workdir)           # each value: that task's AP (mean_ap of one task)
    stl[w] = [sum(per_task[f'w{w}/single_{n}'][s] for n in TASKS) / len(TASKS) for s in range(FLAGS.seeds)]
  lines = ['| backbone (CNN) | params ratio | multi-task (1 network) | single-task (6 networks) | MTL − STL |',
           '|---|---|---|---|---|']
  for w in widths:
    d = [a - b for a, b in zip(mtl[w], stl[w])]
    lines.append(f'| [{w}, {2 * w}] + [{4 * w}] | 1 : 6 | {R.fmt(mtl[w])} | {R.fmt(stl[w])} | {R.fmt(d)} |')
  text = (f'Mean AP (%) on 1000 test scenes (scenes/u0, fully labelled), mean ± std over {FLAGS.seeds} seeds, '
          f'{FLAGS.steps} Adam steps each.\n\n' + '\n'.join(lines))
  R.write(FLAGS.workdir, 'Experiment 6b: multi-task vs single-task networks', text,
          {'multitask': mtl, 'single_task': stl, 'widths': widths, 'steps': FLAGS.steps})
  R.line_plot(os.path.join(FLAGS.workdir, 'mtl_vs_stl.png'), widths,
              {'multi-task (1 net)': [mtl[w] for w in widths], 'single-task (6 nets)': [stl[w] for w in widths]},
              'first conv width w (CNN [w, 2w] + [4w])', title='one shared network vs six separate ones')


if __name__ == '__main__':
  app.run(main)
