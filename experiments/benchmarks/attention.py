"""Benchmark: the Transformer encoder with its three attention implementations, side by side.

    python -m experiments.benchmarks.attention [--batch=32] [--seq=64] [--sizes=tiny,minilm] [--rounds=20]
        [--out=runs/bench/attention]

  einsum   two `jnp.einsum`s, a masked softmax (transformer.SelfAttention);
  xla      `jax.nn.dot_product_attention(implementation='xla')` on the same q/k/v projections;
  flax     `nn.MultiHeadDotProductAttention` (the same parameter tree).

For two sizes — 'tiny' (2 × 128, 2 heads, vocab 8000) and 'minilm' (6 × 384, 12 heads, vocab 30522) —
and two programs — the jitted forward pass (pooled features) and the jitted forward + backward (gradient
of a scalar of the features with respect to every parameter) — on token batches of `batch` × `seq` with
the last quarter of every other row padding. All variants of one size and program run in one process in
interleaved rounds (order alternating; per round and variant one untimed call, then the mean of 2);
reported: median and min ms. Writes `<out>/attention.json` and `<out>/attention.md`.
"""

import argparse
import os
import statistics

from experiments.benchmarks import report, timing

SIZES = {'tiny': 8000, 'minilm': 30522}      # size → vocabulary


def programs(size: str, batch: int, seq: int) -> dict:
  """{(program, implementation): compiled blocking callable} for one encoder size."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxtransfer.models import transformer

  vocab = SIZES[size]
  rng = np.random.RandomState(0)
  tokens = rng.randint(1, vocab, (batch, seq)).astype(np.int32)
  tokens[::2, seq - seq // 4:] = 0
  tokens = jnp.asarray(tokens)
  out = {}
  params = None
  for impl in transformer.ATTENTIONS:
    model = transformer.TransformerEncoder(**transformer.SIZES[size], vocab_size=vocab, max_len=seq,
                                           attention=impl)
    if params is None:
      params = jax.jit(model.init)(jax.random.key(0), tokens)
    fwd = jax.jit(lambda p, t, m=model: m.apply(p, t))
    grad = jax.jit(jax.grad(lambda p, t, m=model: jnp.sum(m.apply(p, t) ** 2)))
    fwd(params, tokens).block_until_ready()
    jax.block_until_ready(grad(params, tokens))
    out[('forward', impl)] = lambda f=fwd: f(params, tokens).block_until_ready()
    out[('forward+backward', impl)] = lambda g=grad: jax.block_until_ready(g(params, tokens))
  return out


def run(batch: int, seq: int, rounds: int, sizes: tuple[str, ...] = tuple(SIZES)) -> dict:
  rows = []
  for size in sizes:
    progs = programs(size, batch, seq)
    for program in ('forward', 'forward+backward'):
      fns = {impl: fn for (p, impl), fn in progs.items() if p == program}
      times = timing.interleaved(fns, rounds, calls=2, untimed=1)
      for impl, t in times.items():
        rows.append({'size': size, 'program': program, 'attention': impl,
                     'median_ms': round(1e3 * statistics.median(t), 2), 'min_ms': round(1e3 * min(t), 2)})
  return {'batch': batch, 'seq': seq, 'rounds': rounds, 'load_average': os.getloadavg(), 'rows': rows}


def markdown(res: dict) -> str:
  return report.table(f'Attention implementations (batch {res["batch"]}, sequence {res["seq"]}, '
                      f'{res["rounds"]} rounds)', ['size', 'program', 'attention', 'median ms', 'min ms'],
                      [(r['size'], r['program'], r['attention'], r['median_ms'], r['min_ms']) for r in res['rows']])


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--seq', type=int, default=64)
  ap.add_argument('--sizes', default=','.join(SIZES), help=f'comma-separated subset of {", ".join(SIZES)}')
  ap.add_argument('--rounds', type=int, default=20)
  ap.add_argument('--out', default='runs/bench/attention')
  a = ap.parse_args(argv)
  from jaxtransfer import runtime
  runtime.configure()   # XLA flags and the allocator, before jax starts
  sizes = tuple(a.sizes.split(','))
  if unknown := [s for s in sizes if s not in SIZES]:
    ap.error(f'--sizes: unknown {unknown}; known: {", ".join(SIZES)}')
  res = run(a.batch, a.seq, a.rounds, sizes)
  report.write(a.out, 'attention', res, markdown(res))


if __name__ == '__main__':
  main()
