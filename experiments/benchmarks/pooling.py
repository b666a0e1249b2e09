"""Benchmark: the demo CNN's full training step with three 2×2 max-pooling implementations, side by side.

    python -m experiments.benchmarks.pooling [--batch=128] [--rounds=40] [--out=runs/bench/pooling]

  reduce_window   `nn.max_pool`: XLA:CPU turns its gradient (select-and-scatter) into iota maps, a
                  reduce-window and a scatter;
  jnp_max         reshape + `jnp.max` with JAX's own derivative (shares the gradient among tied maxima:
                  a float mask, its per-window sum, a divide, a select);
  custom_jvp      `backbones.max_pool` as shipped: reshape + max, the tangent of each window's first
                  maximum (select-and-scatter's gradient, ties included).

All three steps are THE training step (`steps.make_train_step` with the loop's donation, via
`run._Step`) of the same network, compiled in one process and timed in interleaved rounds (order
alternating; per round and variant one untimed call, then the mean of 2) — the machine is noisy, only
these side-by-side medians compare. Writes `<out>/pooling.json` and `<out>/pooling.md`.
"""

import os
import statistics

from experiments.benchmarks import report, timing


def _variants() -> dict:
  """{name: max-pool function (x, window) → pooled} for the three implementations."""
  import flax.linen as nn
  import jax.numpy as jnp

  from jaxtransfer.models import backbones
  return {
      'reduce_window': lambda x, window: nn.max_pool(x, (window, window), strides=(window, window)),
      'jnp_max': lambda x, window: jnp.max(backbones._windows(x, window), axis=(2, 4)),
      'custom_jvp': backbones.max_pool,
  }


def steps(batch: int) -> dict:
  """{variant: compiled full train step (`run._Step`)} — each traced with that max-pool in the ConvBlocks."""
  from experiments.benchmarks import run as bench
  from jaxtransfer.models import backbones

  shipped, out = backbones.max_pool, {}
  try:
    for name, pool in _variants().items():     # the step is traced (and the pool looked up) at construction
      backbones.max_pool = pool
      out[name] = bench._Step(bench.CNN, 'all', batch).compile()
  finally:
    backbones.max_pool = shipped
  return out


def run(batch: int, rounds: int, compiled: dict | None = None) -> dict:
  """Median and min ms per step of each variant over `rounds` interleaved rounds."""
  times = timing.interleaved(compiled or steps(batch), rounds, calls=2, untimed=1)
  rows = [{'variant': k, 'median_ms': round(1e3 * statistics.median(v), 2), 'min_ms': round(1e3 * min(v), 2)}
          for k, v in times.items()]
  return {'batch': batch, 'rounds': rounds, 'load_average': os.getloadavg(), 'rows': rows}


def markdown(res: dict) -> str:
  base = next(r['median_ms'] for r in res['rows'] if r['variant'] == 'reduce_window')
  return report.table(
      f'Demo CNN full step, batch {res["batch"]}, by max-pool implementation (median of {res["rounds"]} '
      'interleaved rounds)', ('variant', 'median ms', 'min ms', 'vs reduce_window'),
      ((r['variant'], f'{r["median_ms"]:.2f}', f'{r["min_ms"]:.2f}', f'{r["median_ms"] / base:.3f}')
       for r in res['rows']))


def main(argv=None) -> None:
  report.main(argv, doc=__doc__, stem='pooling', run=run, markdown=markdown, rounds=40)


if __name__ == '__main__':
  main()
