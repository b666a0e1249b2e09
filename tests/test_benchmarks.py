"""`python -m experiments.benchmarks.run --quick` runs and writes the documented schema (no timing thresholds);
the masked-LM benchmark's PyTorch twin computes the JAX model's loss (skipped without torch)."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.benchmarks import report
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
  # No torch interpreter given: the comparisons are skipped, loudly, and their ratios are null.
  torch_keys = ('full_step_jax_over_torch', 'mlm_step_jax_over_torch')
  assert [res[k] for k in torch_keys] == [None, None]
  assert 'JAXTRANSFER_TORCH_PYTHON' in res['raw']['torch']['skipped']
  assert 'JAXTRANSFER_TORCH_PYTHON' in res['raw']['mlm']['raw']['torch']['skipped']
  for k in bench.TOP_KEYS:
    if k not in torch_keys:
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
  # The masked-LM step (tiny in --quick): tokens/s is the batch's real tokens over the JAX step's median,
  # and XLA's FLOP count is close above the analytic matmul count with the head on K = ceil(0.15·T) gathered
  # positions per row (on all T positions the tiny step would count ~1.85× the analytic value).
  m = raw['mlm']['raw']
  assert m['quick'] is True and m['batch'] == [8, 16] and m['tokens']['source'].startswith('synthetic')
  assert 0 < m['tokens']['real_tokens_per_batch'] < 8 * 16
  step_s = m['timings']['jax_mlm_step']['median_ms'] / 1e3
  assert res['mlm_pretrain_tokens_per_s'] == pytest.approx(m['tokens']['real_tokens_per_batch'] / step_s, rel=1e-2)
  assert 1.0 <= m['flops']['xla_over_analytic'] < 1.5, m['flops']
  assert res['mlm_train_gflops_over_matmul_gflops'] == pytest.approx(
      m['flops']['step_gflops_per_s'] / m['flops']['matmul_gflops_per_s'], rel=1e-3)
  # The step's matmul classes, timed alone: the tiny encoder's shapes (batch 8 × 16, width 32, 2 heads, MLP 64,
  # K = ceil(0.15 × 16) = 3 head rows per sequence, vocabulary 256), GFLOP/s from their own medians; no torch.
  kernels = m['kernels']
  assert {k: (v['kind'], v['dims']) for k, v in kernels.items()} == {
      'projection': ('nn', [128, 32, 32]), 'mlp_in': ('nn', [128, 32, 64]), 'kernel_grad': ('tn', [32, 128, 32]),
      'attention': ('bnt', [16, 16, 16, 16]), 'vocab': ('nn', [24, 32, 256])}
  for name, k in kernels.items():
    median_s = m['timings'][f'jax_{name}_x10']['median_ms'] / 1e3
    assert k['jax_gflops_per_s'] == pytest.approx(k['gflop'] * 10 / median_s, rel=1e-2), name
    assert k['torch_gflops_per_s'] is None and k['jax_time_over_torch'] is None
  # LoRA: Adam state held under backbone/ is exactly mu and nu of the adapters (none for the frozen base).
  assert res['lora_opt_state_over_adapter_bytes'] == 2.0
  assert 0 < raw['lora']['trainable_fraction'] < 0.1
  # Self-supervised: each key is its two medians' ratio; MAE's step does fewer FLOPs than the full encoder's,
  # SimCLR's (two views) more than the supervised one's.
  a = raw['self_supervised']['raw']
  assert res['mae_step_over_full_encoder_step'] == pytest.approx(a['median_ms']['mae'] / a['median_ms']['full'], rel=1e-2)
  assert res['ssl_step_over_supervised_step'] == pytest.approx(a['median_ms']['simclr'] / a['median_ms']['supervised'],
                                                               rel=1e-2)
  assert 0 < a['flops_ratio']['mae/full'] < 1 < a['flops_ratio']['simclr/supervised'], a['flops']
  # Both records say which CPU they were read on (the same code runs 1.6× apart on two 2-core machines).
  for machine in (raw['machine'], m['machine']):
    assert machine['cpu'] == report.cpu_model() and machine['cpu'] and isinstance(machine['avx512'], bool)
    assert machine['cpu_count'] == os.cpu_count() and len(machine['loadavg_end']) == 3
  md = (out / 'bench.md').read_text()
  assert all(k in md for k in bench.TOP_KEYS) and raw['machine']['cpu'] in md


def test_cpu_model_reads_the_model_name_and_falls_back_without_cpuinfo(tmp_path):
  info = tmp_path / 'cpuinfo'
  info.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B45  \nflags\t\t: fpu avx512f\n')
  assert report.cpu_model(str(info)) == 'AMD EPYC 9B45'
  fallback = report.cpu_model(str(tmp_path / 'missing'))
  assert fallback and fallback != 'AMD EPYC 9B45'


def test_mlm_torch_twin_computes_the_jax_models_loss_and_times_its_step():
  """torch_worker.py's MLM network, fed the JAX model's weights, gives the JAX model's masked loss: the two
  sides of `mlm_step_jax_over_torch` compute the same function."""
  if importlib.util.find_spec('torch') is None:
    pytest.skip("torch is not installed (the `convert` extra: pip install -c constraints.txt -e '.[convert]')")
  import jax
  import jax.numpy as jnp
  import numpy as np

  from experiments.benchmarks import mlm
  from jaxtransfer.models import model as model_lib
  from jaxtransfer.objectives import mlm as mlm_objective

  config = mlm._config(quick=True)
  tokens, _, _ = mlm.token_batch(config, None)
  step = mlm.JaxMLMStep(config, tokens)
  obj = step.objective
  # Weights away from their initial values (biases, LayerNorm scales and every kernel perturbed), so that
  # every layer of the network changes the loss.
  leaves, tree = jax.tree_util.tree_flatten(step.state[0])
  keys = jax.random.split(jax.random.key(7), len(leaves))
  params = jax.tree_util.tree_unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  corrupted, positions, valid = mlm_objective.select_and_corrupt(
      jnp.asarray(tokens), jax.random.key(3), mask_rate=obj.mask_rate, mask_token=obj.mask_token,
      random_token=obj.random_token, mask_id=obj.mask_id, special_ids=obj.special_ids, vocab_size=obj.vocab_size)
  targets = jnp.take_along_axis(jnp.asarray(tokens), positions, axis=1)
  logits, _ = step.model.apply({'params': params}, corrupted, positions, train=False,
                               method=model_lib.Model.per_token)
  nll, correct = mlm_objective.masked_losses(logits, targets, valid)
  jax_loss = float(jnp.sum(nll) / jnp.sum(valid))

  worker, info = mlm.start_torch(sys.executable, 1, mlm.torch_setup_message(config, tokens, obj))
  assert worker is not None, info
  try:
    out = worker.ask({'cmd': 'mlm_loss', 'state': mlm.torch_state(params),
                      **{k: np.asarray(v).tolist() for k, v in (('tokens', corrupted), ('positions', positions),
                                                                ('valid', valid), ('targets', targets))}})
    times = worker.ask({'cmd': 'time', 'what': 'mlm_step', 'batch': 0, 'n': 2})['times']
  finally:
    worker.close()
  assert info['params'] == step.num_params
  assert math.isfinite(info['first_loss'])
  assert out['loss'] == pytest.approx(jax_loss, rel=1e-6)   # tanh- vs exact GELU alone moves it by 5e-6
  assert out['correct'] == float(jnp.sum(correct))
  assert len(times) == 2 and all(t > 0 for t in times)


@pytest.mark.parametrize('kind,dims,reference', [
    ('nn', (5, 3, 4), lambda a, b: a @ b),
    ('tn', (5, 3, 4), lambda a, b: a.T @ b),
    ('bnt', (2, 5, 3, 4), lambda a, b: np.einsum('bmk,bnk->bmn', a, b))])
def test_gemm_classes_compute_their_products_in_jax_and_in_the_torch_worker(kind, dims, reference):
  """Both sides of a `raw.kernels` row compute the GEMM its kind names, on operands of `gemm_shapes`."""
  from experiments.benchmarks import mlm
  shape_a, shape_b = mlm.gemm_shapes(kind, dims)
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=shape_a).astype(np.float32), rng.normal(size=shape_b).astype(np.float32)
  want = reference(a, b)
  assert want.shape == (dims[0], dims[1], dims[3]) if kind == 'bnt' else want.shape == (dims[0], dims[2])
  np.testing.assert_allclose(np.asarray(mlm.jax_gemm(kind)(a, b)), want, rtol=1e-5, atol=1e-5)
  assert 2 * math.prod(dims) == 2 * want.size * (dims[2] if kind == 'bnt' else dims[1])   # the FLOPs it counts
  if importlib.util.find_spec('torch') is None:
    pytest.skip("torch is not installed (the `convert` extra: pip install -c constraints.txt -e '.[convert]')")
  worker, info = bench.start_torch(sys.executable, None, (), 1)
  assert worker is not None, info
  try:
    got = worker.ask({'cmd': 'gemm', 'kind': kind, 'a': a.tolist(), 'b': b.tolist()})['value']
    worker.ask({'cmd': 'setup_kernels', 'calls': 2, 'kernels': {'k': [kind, list(shape_a), list(shape_b)]}})
    times = worker.ask({'cmd': 'time', 'what': 'kernel:k', 'batch': 0, 'n': 2})['times']
  finally:
    worker.close()
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  assert len(times) == 2 and all(t > 0 for t in times)


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
