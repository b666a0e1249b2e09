"""Benchmark: the self-supervised pretraining steps against the supervised step of the same network.

    python -m experiments.benchmarks.self_supervised [--rounds=15] [--quick] [--out=runs/bench/self_supervised]
    (`make bench` runs it inside `experiments.benchmarks.run` and puts its two keys in bench.json.)

Every variant is THE train step of the loop (`steps.make_train_step` with `optim.make`, jitted with the
loop's buffer donation), batch 128 of 28×28×1 images, float32, timed side by side (`timing.interleaved`: every
variant each round, the order alternating; medians):
  mae / full       the patch encoder `ENCODER` (patch 4 → 49 patches; 4 pre-LN layers × 128, 4 heads, MLP
                   512) with objective 'mae' (75 % of the patches hidden, the encoder on the 12 visible ones,
                   the decoder `heads.MAEHead` at config.mae's defaults on all 49, loss on the hidden ones) /
                   with 'classification' (the encoder on all 49 patches, a linear head);
  simclr / supervised   the demo CNN (config.base()'s backbone) with objective 'simclr' (two random views of
                   each image made in the step — views.py at config.views' defaults — both through the
                   backbone and the projection MLP, NT-Xent) / with 'classification' on the plain images.

Keys:
  mae_step_over_full_encoder_step   median MAE step / median full-encoder step (target ≤ 0.4: an encoder that
                                    sees a quarter of the patches, plus a light decoder)
  ssl_step_over_supervised_step     median SimCLR step / median supervised step (target ≤ 2.3: two views
                                    double the backbone's work; making them must cost little beside it)
`raw` has the times and the XLA cost-analysis FLOPs of each compiled step.
Writes `<out>/self_supervised.json` and `<out>/self_supervised.md`.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import numpy as np

from experiments.benchmarks import report, timing

KEYS = ('mae_step_over_full_encoder_step', 'ssl_step_over_supervised_step')
TARGETS = {'mae_step_over_full_encoder_step': '<= 0.4', 'ssl_step_over_supervised_step': '<= 2.3'}
ENCODER = {'name': 'transformer', 'stem': 'patches', 'patch_size': 4, 'num_layers': 4, 'width': 128, 'num_heads': 4,
           'mlp_dim': 512, 'pool': 'mean'}
QUICK = {'encoder': {'num_layers': 1, 'width': 32, 'num_heads': 2, 'mlp_dim': 64}, 'batch': 8, 'decoder_width': 16,
         'cnn': {'name': 'cnn', 'stages': [4, 8], 'dense': [16]}}
IMAGE = (28, 28, 1)


def _flops(compiled: Any) -> float | None:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost['flops']) if cost and 'flops' in cost else None


def _step(objective_name: str, quick: bool, batch: int, backbone: str) -> tuple[Any, Any]:
  """(a compiled train step of the loop and its arguments) for `objective_name` on the benchmark encoder
  (`backbone`='encoder') or the demo CNN ('cnn')."""
  import jax

  from jaxtransfer import config as config_lib
  from jaxtransfer import objectives, optim, rules, steps
  from jaxtransfer.models import model as model_lib

  c = config_lib.base()
  c.objective = objective_name
  if backbone == 'encoder':
    c.model.backbone = {**ENCODER, **(QUICK['encoder'] if quick else {})}
  elif quick:
    c.model.backbone = dict(QUICK['cnn'])
  if quick:
    c.mae.decoder_width, c.mae.decoder_heads = QUICK['decoder_width'], 2
  objective = objectives.from_config(c)
  num_outputs = {'mae': ENCODER['patch_size'] ** 2 * IMAGE[-1], 'simclr': c.simclr.proj_dim}.get(objective_name, 10)
  model = model_lib.build(steps.model_spec(c, num_outputs, objective))
  params = model_lib.init(model, jax.random.key(0), IMAGE)['params']
  labels = rules.freeze_labels('all', params)
  tx = optim.make(c.optim, labels, 1000)
  opt_state = steps.opt_init(tx, objective)(params)
  step = jax.jit(steps.make_train_step(model, tx, (), objective), donate_argnums=(0, 1, 2, 3))
  rng = np.random.default_rng(0)
  data = {'image': jax.numpy.asarray(rng.uniform(size=(batch, *IMAGE)).astype(np.float32)),
          'label': jax.numpy.asarray(rng.integers(0, 10, batch).astype(np.int32))}
  args = [params, {}, opt_state, data, jax.random.key(1)]
  compiled = step.lower(*args).compile()
  return compiled, args


def run(rounds: int = 15, quick: bool = False) -> dict[str, Any]:
  """The keys and their raw measurements (module docstring)."""
  import jax
  batch = QUICK['batch'] if quick else 128
  steps_ = {'mae': _step('mae', quick, batch, 'encoder'), 'full': _step('classification', quick, batch, 'encoder'),
            'simclr': _step('simclr', quick, batch, 'cnn'), 'supervised': _step('classification', quick, batch, 'cnn')}
  state = {name: list(args) for name, (_, args) in steps_.items()}

  def call(name: str):
    compiled = steps_[name][0]
    def go():
      p, s, o, b, k = state[name]
      out = compiled(p, s, o, b, k)
      jax.block_until_ready(out[0])
      state[name][0], state[name][1], state[name][2] = out[0], out[1], out[2]   # donated: the new buffers
      state[name][4] = jax.random.fold_in(k, 1)
    return go

  times = timing.interleaved({name: call(name) for name in steps_}, rounds, calls=3)
  med = {k: statistics.median(v) for k, v in times.items()}
  flops = {name: _flops(compiled) for name, (compiled, _) in steps_.items()}
  ratio = lambda a, b: (flops[a] / flops[b]) if flops[a] and flops[b] else None
  return {'mae_step_over_full_encoder_step': round(med['mae'] / med['full'], 4),
          'ssl_step_over_supervised_step': round(med['simclr'] / med['supervised'], 4),
          'raw': {'rounds': rounds, 'quick': quick, 'batch': batch, 'image': IMAGE,
                  'encoder': {**ENCODER, **(QUICK['encoder'] if quick else {})},
                  'median_ms': {k: round(1e3 * v, 3) for k, v in med.items()},
                  'min_ms': {k: round(1e3 * min(v), 3) for k, v in times.items()},
                  'flops': flops, 'flops_ratio': {'mae/full': ratio('mae', 'full'),
                                                  'simclr/supervised': ratio('simclr', 'supervised')}}}


def markdown(res: dict[str, Any]) -> str:
  raw = res['raw']
  fr = lambda k: 'n/a' if raw['flops_ratio'][k] is None else f'{raw["flops_ratio"][k]:.3f}'
  ms = lambda a, b: f'{raw["median_ms"][a]:.1f} / {raw["median_ms"][b]:.1f}'
  return report.table(
      f'Self-supervised steps vs supervised ones (batch {raw["batch"]}, {raw["rounds"]} interleaved rounds)',
      ('quantity', 'value', 'target'),
      ((f'`{KEYS[0]}`', f'{res[KEYS[0]]:.4f}', TARGETS[KEYS[0]]),
       ('median step, MAE / full encoder (ms)', ms('mae', 'full'), ''),
       ('XLA FLOPs ratio, MAE / full', fr('mae/full'), ''),
       (f'`{KEYS[1]}`', f'{res[KEYS[1]]:.4f}', TARGETS[KEYS[1]]),
       ('median step, SimCLR / supervised, demo CNN (ms)', ms('simclr', 'supervised'), ''),
       ('XLA FLOPs ratio, SimCLR / supervised', fr('simclr/supervised'), '')))


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--rounds', type=int, default=15)
  ap.add_argument('--quick', action='store_true')
  ap.add_argument('--out', default='runs/bench/self_supervised')
  a = ap.parse_args(argv)
  from jaxtransfer import runtime
  runtime.configure()
  res = run(a.rounds, a.quick)
  report.write(a.out, 'self_supervised', res, markdown(res))


if __name__ == '__main__':
  main()
