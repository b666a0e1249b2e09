"""Experiment 6c: loss-weighting methods against equal weighting.

Run:
  .venv/bin/python -m experiments.multitask_weighting [--workdir=runs/multitask_weighting] [--seeds=3] [--steps=400]
Six presence heads over the glyph-pretrained conv blocks (experiments/configs/multitask_scenes.py) on scenes/u30 (30 % unknown training labels, masked loss), config.mtl.weighting =
equal | uncertainty | gradnorm | pcgrad | cagrad, and (issue #18) dwa | rlw | famo | nashmtl | upgrad
(`--methods=…`; jaxtransfer/weighting.py, default hyper-parameters).
GradNorm / PCGrad / CAGrad take their Gram matrix of task gradients at the backbone output
(config.mtl.task_gradients='features': one backbone backward pass plus six through the small heads;
`--task_gradients=params` takes it at the shared parameters, one backbone backward pass per task, ~6×).
The table reports each method's training time per run beside its mean AP.
"""

from absl import app, flags

from experiments import multitask_runs as R
from experiments.configs import multitask_scenes
from jaxtransfer import sweep

flags.DEFINE_string('workdir', 'runs/multitask_weighting', 'Where runs and results go.')
flags.DEFINE_integer('seeds', 3, 'Seeds per cell.')
flags.DEFINE_integer('steps', 400, 'Training steps per run.')
flags.DEFINE_list('methods', ['equal', 'uncertainty', 'gradnorm', 'pcgrad', 'cagrad'], 'Weighting methods.')
flags.DEFINE_enum('task_gradients', 'features', ['features', 'params'],
                  'Where gradient methods take per-task gradients (config.mtl.task_gradients).')
FLAGS = flags.FLAGS


def make(method: str):
  def config(seed: int):
    c = multitask_scenes.get_config('scenes/u30', R.pretrained(), FLAGS.steps)
    c.seed, c.mtl.weighting, c.mtl.task_gradients = seed, method, FLAGS.task_gradients
    return c
  return config


def main(_):
  R.setup()
  g = R.grid([(m, make(m)) for m in FLAGS.methods], FLAGS.seeds, FLAGS.workdir)
  res = g.values
  base = res.get('equal')
  seconds = {m: R.wall_seconds(FLAGS.workdir, m, g.lr[m], FLAGS.seeds) for m in FLAGS.methods}
  vals = {'mean AP': {m: res[m] for m in FLAGS.methods}}
  if base:
    vals['Δ vs equal (paired by seed)'] = {m: R.paired(res[m], base) for m in FLAGS.methods}
  wall = ('| wall s per run (incl. compile + eval) | ' + ' | '.join(R.fmt(seconds[m], scale=1.0) for m in FLAGS.methods)
          + ' |')
  table = sweep.write_results(
      FLAGS.workdir, {'mean_ap': sweep.summarize(vals), 'per_seed': res, 'wall_s': seconds, 'steps': FLAGS.steps,
                      'task_gradients': FLAGS.task_gradients, 'lr': g.lr},
      metric='mean_ap', title='Experiment 6c: loss weighting',
      caption=(f'Mean AP (%) on 1000 test scenes (true labels), scenes/u30, mean ± std (ddof=1) over {{n}} seeds, '
               f'{FLAGS.steps} steps; columns: weighting method.'),
      row_header='', xlabel='weighting method', ylabel='mean AP (%)', plot_title='loss weighting',
      plot_rows=['mean AP'], notes='Time (same columns):\n\n| | ' + ' | '.join(FLAGS.methods) + ' |\n|---|'
      + '---|' * len(FLAGS.methods) + '\n' + wall + '\n\n' + R.lr_notes(g.lr))
  print(table, flush=True)


if __name__ == '__main__':
  app.run(main)
