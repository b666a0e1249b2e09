"""Experiment 6a: unknown labels — masked loss vs unknown-as-negative vs dropping partly labelled examples.

Run:
  .venv/bin/python -m experiments.multitask_unknown [--workdir=runs/multitask_unknown] [--seeds=3] [--steps=400]
Six presence heads (has_0…has_5) over one CNN (the glyph-pretrained conv blocks, experiments/configs/
multitask_scenes.py; all parameters train) on scenes/u<k> (k % of the training labels hidden, half in
blocks, half at random); test = 1000 scenes scored on their TRUE labels (mean AP). Policies
(config.mtl.unknown_policy): mask (unknowns left out of the loss), negative (unknown = 0), drop (train only
on fully labelled examples: 23 % of them at k=30, 4 % at 50, 1.5 % at 60, none at 90 → n/a).
At k=0 the three policies are the same run. Budget: 12 cells × seeds runs of `steps` Adam steps.
"""

import os

from absl import app, flags

from experiments import multitask_runs as R
from experiments.configs import multitask_scenes

flags.DEFINE_string('workdir', 'runs/multitask_unknown', 'Where runs and results go.')
flags.DEFINE_integer('seeds', 3, 'Seeds per cell.')
flags.DEFINE_integer('steps', 400, 'Training steps per run.')
flags.DEFINE_list('fractions', ['0', '30', '50', '60', '90'], 'Unknown-label percentages (scenes/u<k>).')
flags.DEFINE_list('policies', ['mask', 'negative', 'drop'], 'config.mtl.unknown_policy values; mask first.')
FLAGS = flags.FLAGS


def make(k: int, policy: str):
  def config(seed: int):
    c = multitask_scenes.get_config(f'scenes/u{k}', R.pretrained(), FLAGS.steps)
    c.seed, c.mtl.unknown_policy = seed, policy
    return c
  return config


def main(_):
  R.setup()
  FRACTIONS, POLICIES = [int(k) for k in FLAGS.fractions], tuple(FLAGS.policies)
  if 0 not in FRACTIONS or POLICIES[0] != 'mask':
    raise ValueError('--fractions must include 0 (the fully labelled reference) and --policies start with mask')
  cells = [(f'u{k}/{p}', make(k, p)) for k in FRACTIONS for p in POLICIES if not (k == 0 and p != 'mask')]
  res = R.grid(cells, FLAGS.seeds, FLAGS.workdir)
  for p in POLICIES[1:]:
    res[f'u0/{p}'] = res['u0/mask']  # identical with every label known
  lines = ['| unknown labels | ' + ' | '.join(POLICIES) + ' |', '|---|' + '---|' * len(POLICIES)]
  for k in FRACTIONS:
    lines.append(f'| {k} % | ' + ' | '.join(R.fmt(res[f'u{k}/{p}']) for p in POLICIES) + ' |')
  paired = lambda a, b: R.fmt([x - y for x, y in zip(res[a], res[b]) if x is not None and y is not None])
  target = ''
  if 50 in FRACTIONS and 'negative' in POLICIES:
    full, half = R.mean_std(res['u0/mask']), R.mean_std(res['u50/mask'])
    neg = R.mean_std(res['u50/negative'])
    target = (f'\nTarget at 50 % unknown: masked {100 * half[0]:.1f} vs fully labelled {100 * full[0]:.1f} '
              f'(gap {100 * (full[0] - half[0]):.1f} points, paired by seed {paired("u0/mask", "u50/mask")}; '
              f'target ≤ 2) and vs unknown-as-negative {100 * neg[0]:.1f} (masked − negative paired by seed '
              f'{paired("u50/mask", "u50/negative")}; target: masked better).')
  text = (f'Mean AP (%) on 1000 fully labelled test scenes, mean ± std over {FLAGS.seeds} seeds; '
          f'glyph-pretrained conv blocks + max pooling + six heads (all train), {FLAGS.steps} Adam steps of 32.\n\n'
          + '\n'.join(lines) + '\n' + target)
  R.write(FLAGS.workdir, 'Experiment 6a: unknown labels', text,
          {'mean_ap': res, 'fractions': FRACTIONS, 'steps': FLAGS.steps, 'backbone': multitask_scenes.BACKBONE})
  R.line_plot(os.path.join(FLAGS.workdir, 'mean_ap_vs_unknown.png'), FRACTIONS,
              {p: [res[f'u{k}/{p}'] for k in FRACTIONS] for p in POLICIES}, 'unknown training labels (%)',
              title='masked loss vs unknown-as-negative vs drop')


if __name__ == '__main__':
  app.run(main)
