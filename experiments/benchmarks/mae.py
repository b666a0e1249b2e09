"""Benchmark: the masked-autoencoding step against the full-encoder step of the same encoder.

    python -m experiments.benchmarks.mae [--rounds=15] [--quick] [--out=runs/bench/mae]
    (`make bench` runs it inside `experiments.benchmarks.run` and puts its key in bench.json.)

Both are THE train step of the loop (`steps.make_train_step` with `optim.make`, jitted with the loop's buffer
donation) on the same patch encoder (28×28×1 digits, patch 4 → 49 patches; 4 pre-LN layers × 128, 4 heads,
MLP 512 — `ENCODER`), batch 128, float32:
  mae    objective 'mae' (objectives/mae.py): 75 % of the patches hidden, the encoder on the 12 visible ones,
         the decoder (`heads.MAEHead`, config.mae defaults) on all 49, loss on the hidden ones;
  full   objective 'classification': the encoder on all 49 patches, a linear head, cross-entropy.
Timed side by side (`timing.interleaved`: every variant each round, order alternating; medians).

Key: `mae_step_over_full_encoder_step` = median MAE step / median full step (target ≤ 0.4: an encoder that
sees a quarter of the patches, plus a light decoder). `raw` has both times and the XLA cost-analysis FLOPs
of each compiled step, whose ratio is what the time ratio would be if every FLOP cost the same.
Writes `<out>/mae.json` and `<out>/mae.md`.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import numpy as np

from experiments.benchmarks import report, timing

KEY = 'mae_step_over_full_encoder_step'
TARGET = '<= 0.4'
ENCODER = {'name': 'transformer', 'stem': 'patches', 'patch_size': 4, 'num_layers': 4, 'width': 128, 'num_heads': 4,
           'mlp_dim': 512, 'pool': 'mean'}
QUICK = {'encoder': {'num_layers': 1, 'width': 32, 'num_heads': 2, 'mlp_dim': 64}, 'batch': 8, 'decoder_width': 16}
IMAGE = (28, 28, 1)


def _flops(compiled: Any) -> float | None:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost['flops']) if cost and 'flops' in cost else None


def _step(objective_name: str, quick: bool, batch: int) -> tuple[Any, Any]:
  """(a compiled train step of the loop and its arguments) for `objective_name` on the benchmark encoder."""
  import jax

  from jaxtransfer import config as config_lib
  from jaxtransfer import objectives, optim, rules, steps
  from jaxtransfer.models import model as model_lib

  c = config_lib.base()
  c.objective = objective_name
  c.model.backbone = {**ENCODER, **(QUICK['encoder'] if quick else {})}
  if quick:
    c.mae.decoder_width, c.mae.decoder_heads = QUICK['decoder_width'], 2
  objective = objectives.from_config(c)
  num_outputs = ENCODER['patch_size'] ** 2 * IMAGE[-1] if objective_name == 'mae' else 10
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
  """The key and its raw measurements (module docstring)."""
  import jax
  batch = QUICK['batch'] if quick else 128
  steps_ = {name: _step(name, quick, batch) for name in ('mae', 'classification')}
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

  times = timing.interleaved({'mae': call('mae'), 'full': call('classification')}, rounds, calls=3)
  med = {k: statistics.median(v) for k, v in times.items()}
  flops = {'mae': _flops(steps_['mae'][0]), 'full': _flops(steps_['classification'][0])}
  return {KEY: round(med['mae'] / med['full'], 4),
          'raw': {'rounds': rounds, 'quick': quick, 'batch': batch, 'image': IMAGE,
                  'encoder': {**ENCODER, **(QUICK['encoder'] if quick else {})},
                  'median_ms': {k: round(1e3 * v, 3) for k, v in med.items()},
                  'min_ms': {k: round(1e3 * min(v), 3) for k, v in times.items()},
                  'flops': flops,
                  'flops_ratio': (flops['mae'] / flops['full']) if flops['mae'] and flops['full'] else None}}


def markdown(res: dict[str, Any]) -> str:
  raw = res['raw']
  fr = raw['flops_ratio']
  return report.table(
      f'Masked autoencoding step vs full-encoder step (batch {raw["batch"]}, {raw["rounds"]} interleaved rounds)',
      ('quantity', 'value', 'target'),
      ((f'`{KEY}`', f'{res[KEY]:.4f}', TARGET),
       ('median step, MAE / full (ms)', f'{raw["median_ms"]["mae"]:.1f} / {raw["median_ms"]["full"]:.1f}', ''),
       ('XLA FLOPs ratio, MAE / full', 'n/a' if fr is None else f'{fr:.3f}', '')))


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--rounds', type=int, default=15)
  ap.add_argument('--quick', action='store_true')
  ap.add_argument('--out', default='runs/bench/mae')
  a = ap.parse_args(argv)
  from jaxtransfer import runtime
  runtime.configure()
  res = run(a.rounds, a.quick)
  report.write(a.out, 'mae', res, markdown(res))


if __name__ == '__main__':
  main()
