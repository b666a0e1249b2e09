"""`python -m experiments.benchmarks.run --quick` runs and writes the documented schema (no timing thresholds)."""

import json
import math
import os
import subprocess
import sys

from experiments.benchmarks import run as bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _positive_finite(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_quick_benchmark_schema(tmp_path, data_dir):
  out = tmp_path / 'bench'
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', bench.TORCH_ENV)}
  proc = subprocess.run([sys.executable, '-m', 'experiments.benchmarks.run', '--quick', f'--out={out}',
                         f'--data-dir={data_dir}'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((out / 'bench.json').read_text())
  assert set(res) == set(bench.TOP_KEYS) | {'raw'}
  # No torch interpreter given: the comparison is skipped, loudly, and its ratio is null.
  assert res['full_step_jax_over_torch'] is None
  assert 'JAXTRANSFER_TORCH_PYTHON' in res['raw']['torch']['skipped']
  for k in bench.TOP_KEYS[1:]:
    assert _positive_finite(res[k]), (k, res[k])
  raw = res['raw']
  assert raw['quick'] is True
  for name, t in raw['timings'].items():
    assert _positive_finite(t['median_ms']) and _positive_finite(t['min_ms']), name
  for backbone in ('cnn', 'resnet'):
    for kind in ('full', 'head_only', 'forward'):
      assert f'{backbone}/b{raw["headline_batch"]}/{kind}' in raw['timings']
  assert _positive_finite(raw['gflops']['step_flops']) and _positive_finite(raw['gflops']['matmul_gflops_per_s'])
  # Adam keeps mu and nu for trainable parameters only (plus scalar step counts).
  for v in raw['adam_bytes'].values():
    assert 2.0 <= v['ratio'] < 2.01, v
  assert raw['adam_bytes']['head']['trainable_bytes'] < raw['adam_bytes']['all']['trainable_bytes']
  assert _positive_finite(raw['pipeline']['pipeline']['median_ms'])
  assert _positive_finite(raw['pipeline']['in_memory']['median_ms'])
  md = (out / 'bench.md').read_text()
  assert all(k in md for k in bench.TOP_KEYS)


def test_pooling_benchmark_traces_each_variant_and_restores_the_shipped_pool():
  from experiments.benchmarks import pooling
  from jaxtransfer.models import backbones
  shipped = backbones.max_pool
  steps = pooling.steps(batch=2)
  assert backbones.max_pool is shipped
  hlo = {k: s.lowered.as_text() for k, s in steps.items()}
  assert list(hlo) == ['reduce_window', 'jnp_max', 'custom_jvp']
  # Only nn.max_pool's gradient is a select-and-scatter; the other two are different programs too.
  assert [('select_and_scatter' in t) for t in hlo.values()] == [True, False, False]
  assert hlo['jnp_max'] != hlo['custom_jvp']
  res = pooling.run(batch=2, rounds=2, compiled=steps)
  assert [r['variant'] for r in res['rows']] == list(hlo)
  assert all(_positive_finite(r['median_ms']) for r in res['rows'])
  assert '| custom_jvp |' in pooling.markdown(res)
