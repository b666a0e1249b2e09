"""Benchmark: the demo CNN's convolutions one by one — forward, input gradient, kernel gradient — on XLA:CPU.

    python -m experiments.benchmarks.convs [--batch=128] [--rounds=15] [--out=runs/bench/convs]

Where the full training step's time goes, and what each alternative formulation costs, measured side by
side in interleaved rounds (median ms of each jitted function, compilation excluded):

  lax         `lax.conv_general_dilated` and its JAX gradients (what `nn.Conv` runs);
  taps        models/conv.py's sum of shifted images × kernel taps (forward of layers with ≤ 27 taps);
  patches     im2col: 9 shifted copies concatenated, then one dot (forward and kernel gradient).

GFLOP/s = 2·B·H·W·C_in·C_out·9 per pass over the time, next to a jitted 1024² float32 matmul's.
Writes `<out>/convs.json` and `<out>/convs.md`.
"""

import os
import statistics

from experiments.benchmarks import report, timing

# The demo CNN's 3×3 SAME convolutions: (name, H = W, C_in, C_out).
LAYERS = (('block_0/conv_0', 28, 1, 16), ('block_0/conv_1', 28, 16, 16),
          ('block_1/conv_0', 14, 16, 32), ('block_1/conv_1', 14, 32, 32))


def _variants(batch: int) -> dict:
  """{(layer, pass, formulation): (jitted fn, args, GFLOP)} for every layer, plus the matmul."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  from jaxtransfer.models import conv

  nhwc = ('NHWC', 'HWIO', 'NHWC')
  lax_conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=nhwc)
  taps = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=nhwc)

  def patches(x):
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)

  out = {}
  key = jax.random.key(0)
  for name, hw, cin, cout in LAYERS:
    x = jax.random.normal(key, (batch, hw, hw, cin))
    w = jax.random.normal(key, (3, 3, cin, cout))
    g = jax.random.normal(key, (batch, hw, hw, cout))
    gflop = 2 * batch * hw * hw * cin * cout * 9 / 1e9
    fns = {
        ('forward', 'lax'): (lax_conv, (x, w)),
        ('input_grad', 'lax'): (lambda x, w, g: jax.vjp(lambda x_: lax_conv(x_, w), x)[1](g)[0], (x, w, g)),
        ('kernel_grad', 'lax'): (lambda x, w, g: jax.vjp(lambda w_: lax_conv(x, w_), w)[1](g)[0], (x, w, g)),
        ('forward', 'patches'): (lambda x, w: patches(x) @ w.reshape(-1, w.shape[-1]), (x, w)),
        ('kernel_grad', 'patches'): (lambda x, g: jnp.einsum('bhwk,bhwo->ko', patches(x), g), (x, g)),
    }
    if 9 * cin <= conv.MAX_TAPS:
      fns[('forward', 'taps')] = (taps, (x, w))
    for (what, how), (fn, args) in fns.items():
      out[(name, what, how)] = (jax.jit(fn).lower(*args).compile(), args, gflop)
  a = jax.random.normal(key, (1024, 1024))
  out[('matmul', '1024', 'xla')] = (jax.jit(jnp.matmul).lower(a, a).compile(), (a, a), 2 * 1024 ** 3 / 1e9)
  return out


def run(batch: int, rounds: int) -> dict:
  import jax
  variants = _variants(batch)
  times = timing.interleaved({k: (lambda fn=fn, args=args: jax.block_until_ready(fn(*args)))
                              for k, (fn, args, _) in variants.items()}, rounds)
  rows = []
  for (layer, what, how), ts in times.items():
    ms = 1e3 * statistics.median(ts)
    rows.append({'layer': layer, 'pass': what, 'formulation': how, 'median_ms': round(ms, 3),
                 'min_ms': round(1e3 * min(ts), 3), 'gflops': round(variants[(layer, what, how)][2] / ms * 1e3, 1)})
  return {'batch': batch, 'rounds': rounds, 'load_average': os.getloadavg(), 'jax': jax.__version__, 'rows': rows}


def markdown(res: dict) -> str:
  return report.table(
      f'Convolutions of the demo CNN, batch {res["batch"]} (median of {res["rounds"]} interleaved rounds)',
      ('layer', 'pass', 'formulation', 'median ms', 'GFLOP/s'),
      ((r['layer'], r['pass'], r['formulation'], f'{r["median_ms"]:.2f}', f'{r["gflops"]:.1f}') for r in res['rows']))


def main(argv=None) -> None:
  report.main(argv, doc=__doc__, stem='convs', run=run, markdown=markdown, rounds=15)


if __name__ == '__main__':
  main()
