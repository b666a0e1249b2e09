"""Experiment 6b: one shared network with T heads vs T separate single-task networks, across backbone widths.

Run:
  .venv/bin/python -m experiments.multitask_vs_single [--workdir=runs/multitask_vs_single] [--seeds=3]
      [--steps=400] [--widths=8x16,16x32,32x64]
Fully labelled scenes (scenes/u0), the model of experiments/configs/multitask_scenes.py (two conv blocks,
global max pooling, a head with one hidden layer of 64 per task; all parameters train), at several widths
of the conv blocks (`AxB` = A channels in the first block, B in the second). Every width starts from its
own glyph pretraining (config.pretrain() with those widths; 16x32 is the demo's, --pretrain, the others
are trained under <workdir>/pretrain_<width> first) — from random init these scene models barely learn
in the budget (experiment 6d). Multi-task = one network with six presence heads; single-task = six
networks, one per task (each its own run, same steps and batch), scored together: mean AP over the six
tasks, each from its own network. Caruana: multi-task should win unless the shared network is too small
to hold all the tasks.
"""

import os

import jax
from absl import app, flags

from experiments import multitask_runs as R
from experiments.configs import multitask_scenes
from jaxtransfer import train
from jaxtransfer.data.builders import scenes
from jaxtransfer.models import model as model_lib

flags.DEFINE_string('workdir', 'runs/multitask_vs_single', 'Where runs and results go.')
flags.DEFINE_integer('seeds', 3, 'Seeds per cell.')
flags.DEFINE_integer('steps', 400, 'Training steps per run.')
flags.DEFINE_list('widths', ['8x16', '16x32', '32x64'], 'Conv widths of the backbone, AxB per width.')
FLAGS = flags.FLAGS

TASKS = scenes.task_config(6)


def stages(width: str) -> list[int]:
  try:
    return [int(w) for w in width.split('x')]
  except ValueError:
    raise ValueError(f'--widths: expected AxB (e.g. 16x32), got {width!r}') from None


def make(width: str, tasks):
  def config(seed: int):
    path = R.pretrained(stages(width), os.path.join(FLAGS.workdir, f'pretrain_{width}'))
    c = multitask_scenes.get_config('scenes/u0', path, FLAGS.steps)
    c.model.backbone = {**c.model.backbone, 'stages': stages(width)}
    c.seed, c.tasks = seed, tasks
    return c
  return config


def num_params(config) -> int:
  model = model_lib.build(train.model_spec(config, 0))
  shapes = jax.eval_shape(lambda k: model.init(k, jax.numpy.zeros((1, 48, 48, 1))), jax.random.key(0))
  return sum(x.size for x in jax.tree.leaves(shapes['params']))


def main(_):
  R.setup()
  mtl, stl, per_task_ap, sizes = {}, {}, {}, {}
  for w in FLAGS.widths:
    mtl[w] = R.grid([(f'{w}/multitask', make(w, TASKS))], FLAGS.seeds, FLAGS.workdir)[f'{w}/multitask']
    per_task = R.grid([(f'{w}/single_{n}', make(w, {n: spec})) for n, spec in TASKS.items()],
                      FLAGS.seeds, FLAGS.workdir)           # each value: that task's AP (mean_ap of one task)
    per_task_ap[w] = per_task
    stl[w] = [sum(per_task[f'{w}/single_{n}'][s] for n in TASKS) / len(TASKS) for s in range(FLAGS.seeds)]
    one = next(iter(TASKS))
    sizes[w] = {'multitask': num_params(make(w, TASKS)(0)),
                'single_task_total': len(TASKS) * num_params(make(w, {one: TASKS[one]})(0))}
  lines = ['| conv widths | parameters: 1 shared net / 6 nets | multi-task (1 network) | single-task (6 networks) '
           '| MTL − STL (paired) |', '|---|---|---|---|---|']
  for w in FLAGS.widths:
    d = [a - b for a, b in zip(mtl[w], stl[w])]
    lines.append(f'| {w} | {sizes[w]["multitask"]:,} / {sizes[w]["single_task_total"]:,} | {R.fmt(mtl[w])} '
                 f'| {R.fmt(stl[w])} | {R.fmt(d)} |')
  text = (f'Mean AP (%) on 1000 test scenes (scenes/u0, fully labelled), mean ± std over {FLAGS.seeds} seeds, '
          f'{FLAGS.steps} Adam steps of 32 each, every width from its own glyph pretraining.\n\n' + '\n'.join(lines))
  R.write(FLAGS.workdir, 'Experiment 6b: multi-task vs single-task networks across widths', text,
          {'multitask': mtl, 'single_task': stl, 'single_task_per_task': per_task_ap, 'params': sizes,
           'steps': FLAGS.steps})
  R.line_plot(os.path.join(FLAGS.workdir, 'mtl_vs_stl.png'), [stages(w)[-1] for w in FLAGS.widths],
              {'multi-task (1 net)': [mtl[w] for w in FLAGS.widths],
               'single-task (6 nets)': [stl[w] for w in FLAGS.widths]},
              'channels of the last conv block', title='one shared network vs six separate ones')


if __name__ == '__main__':
  app.run(main)
