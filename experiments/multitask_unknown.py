"""Experiment 6a: unknown labels — masked loss vs unknown-as-negative vs dropping partly labelled examples.

Run:
  .venv/bin/python -m experiments.multitask_unknown [--workdir=runs/multitask_unknown] [--seeds=3] [--steps=400]
Six presence heads (has_0…has_5) over one CNN (the glyph-pretrained conv blocks, experiments/configs/
multitask_scenes.py; all parameters train) on scenes/u<k> (k % of the training labels hidden, half in
blocks, half at random); test = 1000 scenes scored on their TRUE labels (mean AP). Policies
(config.mtl.unknown_policy): mask (unknowns left out of the loss), negative (unknown = 0), drop (train only
on fully labelled examples: 23 % of them at k=30, 4 % at 50, 1.5 % at 60, none at 90 → n/a), and with
`--policies=mask,negative,drop,pseudo` (issue #18) pseudo (an EMA teacher's confident predictions fill the
unknowns from step mtl.pseudo_start on; objectives/multitask.py). At k=0 the policies are the same run. Budget: 12 cells × seeds runs of `steps` Adam steps.
"""

from absl import app, flags

from experiments import multitask_runs as R
from experiments.configs import multitask_scenes
from jaxtransfer import errors, sweep

flags.DEFINE_string('workdir', 'runs/multitask_unknown', 'Where runs and results go.')
flags.DEFINE_integer('seeds', 3, 'Seeds per cell.')
flags.DEFINE_integer('steps', 400, 'Training steps per run.')
flags.DEFINE_list('fractions', ['0', '30', '50', '60', '90'], 'Unknown-label percentages (scenes/u<k>).')
flags.DEFINE_list('policies', ['mask', 'negative', 'drop'], 'config.mtl.unknown_policy values; mask first.')
flags.DEFINE_integer('tune_fraction', 50, 'Each policy\'s lr is tuned at this unknown fraction and used at every '
                     'fraction (u0 is tuned on its own; u90/mask is tuned too, as a check of that rule); -1: every '
                     'cell tuned on its own.')
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
    raise errors.ConfigError('--fractions must include 0 (the fully labelled reference) and --policies start with mask')
  cells = [(f'u{k}/{p}', make(k, p)) for k in FRACTIONS for p in POLICIES if not (k == 0 and p != 'mask')]
  if FLAGS.tune_fraction >= 0:   # the lr of a policy, tuned at one fraction (validated rule: BUILD_NOTES)
    t = FLAGS.tune_fraction
    probe = dict(cells)
    # + at 90 % every policy that has examples there, tuned on its own (a check of the rule, and so that
    # the policies compared at 90 % each run at the lr their own validation picks)
    tuned_cells = [(n, probe[n]) for n in [f'u{t}/{p}' for p in POLICIES] + ['u0/mask']
                   + [f'u90/{p}' for p in POLICIES if p != 'drop'] if n in probe]
    tuned = R.tune(tuned_cells, FLAGS.workdir)
    rule_lr = {n: tuned[f'u{t}/{n.split("/")[1]}'] for n, _ in cells}
    lrs = {n: tuned.get(n, rule_lr[n]) for n, _ in cells}   # a cell tuned on its own runs at its own lr
    checks = [n for n in tuned if n.startswith('u90/')]
    rule = (f'Rule: each policy\'s lr tuned at {t} % unknown and used at the other fractions; u0/mask and the 90 % '
            'cells are tuned on their own (and run at their own lr), the latter as a check of the rule: '
            + ', '.join(f'{n} picks {tuned[n]:g} (rule {rule_lr[n]:g})' for n in checks) + '.')
  else:
    lrs, rule = None, 'Every cell\'s lr tuned on its own.'
  g = R.grid(cells, FLAGS.seeds, FLAGS.workdir, lrs=lrs)
  res = g.values
  for p in POLICIES[1:]:
    res[f'u0/{p}'] = res['u0/mask']  # identical with every label known
  paired = lambda a, b: R.fmt(R.paired(res[a], res[b]))
  target = ''
  if 50 in FRACTIONS and 'negative' in POLICIES:
    full, half, neg = (sweep.stats(res[c]) for c in ('u0/mask', 'u50/mask', 'u50/negative'))
    target = (f'Target at 50 % unknown: masked {100 * half["mean"]:.1f} vs fully labelled {100 * full["mean"]:.1f} '
              f'(gap {100 * (full["mean"] - half["mean"]):.1f} points, paired by seed {paired("u0/mask", "u50/mask")}; '
              f'target ≤ 2) and vs unknown-as-negative {100 * neg["mean"]:.1f} (masked − negative paired by seed '
              f'{paired("u50/mask", "u50/negative")}; target: masked better).')
  vals = {p: {k: res[f'u{k}/{p}'] for k in FRACTIONS} for p in POLICIES}   # a policy without result: '–'
  table = sweep.write_results(
      FLAGS.workdir, {'mean_ap': sweep.summarize(vals), 'per_seed': res, 'fractions': FRACTIONS, 'steps': FLAGS.steps,
                      'backbone': multitask_scenes.BACKBONE, 'lr': g.lr},
      metric='mean_ap', title='Experiment 6a: unknown labels',
      caption=(f'Mean AP (%) on 1000 fully labelled test scenes, mean ± std (ddof=1) over {{n}} seeds; '
               f'glyph-pretrained conv blocks + max pooling + six heads (all train), {FLAGS.steps} Adam steps of 32; '
               'columns: unknown training labels (%).'),
      row_header='policy', col_label=lambda k: f'{k} %', xlabel='unknown training labels (%)', ylabel='mean AP (%)',
      plot_title='masked loss vs unknown-as-negative vs drop', notes=target + '\n\n' + rule + '\n\n' + R.lr_notes(g.lr))
  print(table + '\n' + target, flush=True)


if __name__ == '__main__':
  app.run(main)
