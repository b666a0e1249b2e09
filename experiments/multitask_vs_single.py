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

The regime where sharing is claimed to pay (issue #18): `--examples=N` trains every network on the first N
training scenes only (all six tasks labelled on them: N labels per task), e.g.
  .venv/bin/python -m experiments.multitask_vs_single --examples=200 --widths=4x8,8x16,16x32,32x64 \
      --unrelated_control --pretrain_root=runs/multitask_vs_single --workdir=runs/multitask_few_labels
Widths that double compare the shared network with six separate ones at equal per-task width (one column)
and at about equal total parameters (the shared net at 2× the width of the separate ones: the table's
'equal total parameters' row). `--unrelated_control`: at the tuning width, six more shared networks, the
one for task t trained on t's labels plus the other five tasks' labels permuted across the scenes
(`config.mtl.shuffled_tasks`: learnable but unrelated to the image), each scored on t only and at the
shared network's lr — sharing with unrelated tasks should not help.
"""

import os

import jax
from absl import app, flags

from experiments import multitask_runs as R
from experiments.configs import multitask_scenes
from jaxtransfer import errors, steps, sweep
from jaxtransfer.data.builders import scenes
from jaxtransfer.models import model as model_lib

flags.DEFINE_string('workdir', 'runs/multitask_vs_single', 'Where runs and results go.')
flags.DEFINE_integer('seeds', 3, 'Seeds per cell.')
flags.DEFINE_integer('steps', 400, 'Training steps per run.')
flags.DEFINE_list('widths', ['8x16', '16x32', '32x64'], 'Conv widths of the backbone, AxB per width.')
flags.DEFINE_string('tune_width', '16x32', 'The width at which each network\'s lr (the shared one, and each task\'s '
                    'own) is tuned and then used at every width; empty: every cell tuned on its own.')
flags.DEFINE_integer('examples', 0, 'Train every network on the first N training scenes only (N labels per task); '
                     '0: all 5000.')
flags.DEFINE_bool('unrelated_control', False, 'Also the control with unrelated tasks at the tuning width (docstring).')
flags.DEFINE_string('pretrain_root', '', 'Where the per-width glyph pretrainings pretrain_<width> live (trained '
                    'there if missing); empty: --workdir.')
FLAGS = flags.FLAGS

TASKS = scenes.task_config(6)


def stages(width: str) -> list[int]:
  try:
    return [int(w) for w in width.split('x')]
  except ValueError:
    raise errors.ConfigError(f'--widths: expected AxB (e.g. 16x32), got {width!r}') from None


def make(width: str, tasks, shuffled: tuple[str, ...] = ()):
  def config(seed: int):
    path = R.pretrained(stages(width), os.path.join(FLAGS.pretrain_root or FLAGS.workdir, f'pretrain_{width}'))
    c = multitask_scenes.get_config('scenes/u0', path, FLAGS.steps)
    c.model.backbone = {**c.model.backbone, 'stages': stages(width)}
    c.seed, c.tasks, c.mtl.shuffled_tasks = seed, tasks, shuffled
    if FLAGS.examples:
      c.input.train_split = f'train[:{FLAGS.examples}]'
    return c
  return config


def equal_parameters(widths: list[str], sizes: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
  """(shared width, separate width) pairs whose parameter counts are within 1.5× of each other: the shared
  network against six separate ones of about the same total size."""
  pairs = []
  for w in widths:
    total = sizes[w]['single_task_total']
    best = min(widths, key=lambda v: abs(sizes[v]['multitask'] - total))
    if best != w and max(sizes[best]['multitask'], total) <= 1.5 * min(sizes[best]['multitask'], total):
      pairs.append((best, w))
  return pairs


def unrelated_control(w: str, lr: float, single: dict[str, list[float | None]]) -> tuple[dict, str]:
  """The shared network with five unrelated tasks, one per real task t, scored on t (module docstring)."""
  own = {}
  for n in TASKS:
    others = tuple(m for m in TASKS if m != n)
    name = f'{w}/unrelated_{n}'
    own[n] = R.grid([(name, make(w, TASKS, others))], FLAGS.seeds, FLAGS.workdir, key=f'{n}/ap',
                    lrs={name: lr}).values[name]
  mean = [sum(own[n][s] for n in TASKS) / len(TASKS) if all(own[n][s] is not None for n in TASKS) else None
          for s in range(FLAGS.seeds)]
  note = (f'Control with unrelated tasks at {w} (lr {lr:g}, the shared network\'s): one shared network per task t '
          'trained on t\'s labels + the other five permuted across the scenes, scored on t: mean AP '
          f'{R.fmt(mean)} vs the separate networks {R.fmt(single[w])} (shared-with-unrelated − separate, paired by '
          f'seed: {R.fmt(R.paired(mean, single[w]))}).')
  return {'per_task': own, 'mean': mean}, note


def num_params(config) -> int:
  model = model_lib.build(steps.model_spec(config, 0))
  shapes = model_lib.abstract(model, (48, 48, 1))
  return sum(x.size for x in jax.tree.leaves(shapes['params']))


def main(_):
  R.setup()
  mtl, stl, per_task_ap, sizes, lrs = {}, {}, {}, {}, {}
  tuned = None
  if FLAGS.tune_width:   # each network's lr tuned at one width, used at every width (BUILD_NOTES)
    t = FLAGS.tune_width
    # + the shared network at every other width, tuned on its own: a check of the rule
    checks = [w for w in FLAGS.widths if w != t]
    tuned = R.tune([(f'{t}/multitask', make(t, TASKS))] + [(f'{t}/single_{n}', make(t, {n: spec}))
                                                            for n, spec in TASKS.items()]
                   + [(f'{w}/multitask', make(w, TASKS)) for w in checks], FLAGS.workdir)
    rule = (f'Rule: each network\'s lr (the shared one, each task\'s own) tuned at width {t} and used at every width; '
            'check — the shared network tuned at its own width picks ' + ', '.join(
                f'{tuned[f"{w}/multitask"]:g} at {w}' for w in checks) + f' (the rule gives {tuned[f"{t}/multitask"]:g}); '
            'the shared network runs at its own width\'s lr.')
  else:
    rule = 'Every cell\'s lr tuned on its own.'
  # A cell tuned on its own (the shared network at the check widths) runs at its own lr, as in 6a.
  at = lambda w, names: None if tuned is None else {
      f'{w}/{n}': tuned.get(f'{w}/{n}', tuned[f'{FLAGS.tune_width}/{n}']) for n in names}
  for w in FLAGS.widths:
    g = R.grid([(f'{w}/multitask', make(w, TASKS))], FLAGS.seeds, FLAGS.workdir, lrs=at(w, ['multitask']))
    mtl[w] = g.values[f'{w}/multitask']
    s = R.grid([(f'{w}/single_{n}', make(w, {n: spec})) for n, spec in TASKS.items()],
               FLAGS.seeds, FLAGS.workdir, lrs=at(w, [f'single_{n}' for n in TASKS]))   # each: that task's AP
    per_task, lrs = s.values, {**lrs, **g.lr, **s.lr}
    per_task_ap[w] = per_task
    stl[w] = [sum(per_task[f'{w}/single_{n}'][s] for n in TASKS) / len(TASKS)
              if all(per_task[f'{w}/single_{n}'][s] is not None for n in TASKS) else None for s in range(FLAGS.seeds)]
    one = next(iter(TASKS))
    sizes[w] = {'multitask': num_params(make(w, TASKS)(0)),
                'single_task_total': len(TASKS) * num_params(make(w, {one: TASKS[one]})(0))}
  vals = {'multi-task (1 network)': mtl, 'single-task (6 networks)': stl,
          'MTL − STL (paired by seed)': {w: R.paired(mtl[w], stl[w]) for w in FLAGS.widths}}
  pairs = equal_parameters(FLAGS.widths, sizes)
  if pairs:   # column = the separate networks' width
    vals['equal total parameters: MTL at a wider width − STL (paired)'] = {w: R.paired(mtl[v], stl[w]) for v, w in pairs}
  control, control_note = None, ''
  if FLAGS.unrelated_control:
    w = FLAGS.tune_width or FLAGS.widths[len(FLAGS.widths) // 2]
    control, control_note = unrelated_control(w, lrs[f'{w}/multitask'], stl)
    vals['shared with 5 unrelated tasks (scored on its own task)'] = {w: control['mean']}
  params = ('| parameters: 1 shared net / 6 nets | ' + ' | '.join(
      f'{sizes[w]["multitask"]:,} / {sizes[w]["single_task_total"]:,}' for w in FLAGS.widths) + ' |')
  table = sweep.write_results(
      FLAGS.workdir, {'mean_ap': sweep.summarize(vals), 'multitask': mtl, 'single_task': stl,
                      'single_task_per_task': per_task_ap, 'params': sizes, 'steps': FLAGS.steps,
                      'examples': FLAGS.examples or 5000, 'equal_parameters': pairs, 'unrelated_control': control,
                      'lr': lrs},
      metric='mean_ap', title='Experiment 6b: multi-task vs single-task networks across widths' + (
          f', {FLAGS.examples} labelled scenes per task' if FLAGS.examples else ''),
      caption=(f'Mean AP (%) on 1000 test scenes (scenes/u0, fully labelled), mean ± std (ddof=1) over {{n}} seeds, '
               f'{FLAGS.steps} Adam steps of 32 each, every width from its own glyph pretraining, trained on '
               f'{FLAGS.examples or 5000} scenes (labels per task); columns: conv widths (equal-parameters row: '
               'the separate networks\' width).'),
      row_header='', xlabel='conv widths', ylabel='mean AP (%)', plot_title='one shared network vs six separate ones',
      plot_rows=['multi-task (1 network)', 'single-task (6 networks)'],
      notes=rule + ('\n\n' + control_note if control_note else '') + ''.join(
          f'\n\nEqual total parameters: the shared network at {v} ({sizes[v]["multitask"]:,}) against six at {w} '
          f'({sizes[w]["single_task_total"]:,}).' for v, w in pairs) + '\n\n| | ' + ' | '.join(FLAGS.widths) + ' |\n|---|' + '---|' * len(FLAGS.widths) + '\n' + params
      + '\n\n' + R.lr_notes(lrs))
  print(table + ('\n' + control_note if control_note else ''), flush=True)


if __name__ == '__main__':
  app.run(main)
