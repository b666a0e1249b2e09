"""Speed benchmark of the real training code: step times, ratios against targets, GFLOP/s, optimizer memory.

Run (≈ 10 min on 2 cores; `make bench` does the first line — with PyTorch when this venv has the `convert`
extra, `pip install -c constraints.txt -e '.[convert]'`):
  python -m experiments.benchmarks.run --out=runs/bench
  JAXTRANSFER_TORCH_PYTHON=/tmp/torchvenv/bin/python python -m experiments.benchmarks.run --out=runs/bench
  python -m experiments.benchmarks.run --quick --out=/tmp/bench        # ≈ 30 s, what the test runs

Writes `<out>/bench.json` and `<out>/bench.md`. The JSON's top level holds exactly these eleven keys (`TOP_KEYS`),
each computed from measurements in its `raw` section:

  full_step_jax_over_torch          JAX full fine-tune step / PyTorch eager step, demo CNN, largest batch
                                    (target ≤ 0.8; null when no interpreter with torch is found). With
                                    `--split=N` the batch split over N fake CPU devices (what the loop does
                                    with `config.mesh.cpu_devices`) is timed in the same rounds too and the
                                    faster layout is used (`raw.headline_full_step` names it; `raw.ratios`
                                    keeps the 1-device ratio). Off by default: a process with N fake devices
                                    ran the 1-device steps ~25 % slower, and once the allocator fix
                                    (jaxtransfer/allocator.py) landed the split was no faster (BUILD_NOTES)
  head_only_over_forward            head-only step (backbone frozen) / jitted forward, demo CNN, largest
                                    batch (target ≤ 1.10: XLA drops the frozen backward)
  pipeline_over_in_memory           step fed by `pipeline.train_batches` over `catalog.load('glyphs',
                                    'train')` / the same step on pre-loaded device batches, chunks of 10
                                    steps in 20 rounds, the order alternating (target ≤ 1.05)
  train_gflops_over_matmul_gflops   XLA cost-analysis FLOPs of the compiled (1-device) full step per
                                    second of the headline full step / a jitted float32 matmul's FLOP/s
                                    in the same run (target ≥ 0.5)
  adam_state_over_trainable_bytes   optimizer-state bytes / trainable-parameter bytes with the backbone
                                    partly frozen (trainable='last:1'; target 2.0: Adam's mu and nu only)
  mlm_step_jax_over_torch           the masked-LM pretraining step of experiments/configs/pretrain_mlm_wikitext.py
                                    (THE train step with the MaskedLM objective, batch 128 × 64) / the same
                                    step in PyTorch eager, same threads, same rounds (target ≤ 0.8; null
                                    without torch) — experiments/benchmarks/mlm.py, whose own interleaved
                                    rounds run after the CNN's (`raw.mlm`)
  mlm_train_gflops_over_matmul_gflops   that step's XLA cost-analysis FLOPs per second / a 1024² float32
                                    matmul's FLOP/s timed in the MLM rounds (target ≥ 0.5)
  mlm_pretrain_tokens_per_s         real (non-padding) tokens per second of that JAX step (WikiText-2
                                    sentences when ../shared/data is there, else synthetic; `raw.mlm.raw.tokens`)
  lora_opt_state_over_adapter_bytes optimizer-state bytes held for the backbone / adapter bytes, trainable=
                                    'lora:8' on the MiniLM-sized encoder (target 2.0) — experiments/benchmarks/
                                    lora.py (`raw.lora`, with the trainable fraction)
  mae_step_over_full_encoder_step   the masked-autoencoding step (75 % of 49 patches hidden, light decoder) /
                                    the full-encoder classification step of the same patch encoder, same
                                    rounds (target ≤ 0.4) — experiments/benchmarks/self_supervised.py
  ssl_step_over_supervised_step     the SimCLR step (two views made in the step) / the supervised step of
                                    the demo CNN, same rounds (target ≤ 2.3) — the same module
                                    (`raw.self_supervised` for both)

What is timed is THE code of the training loop: `steps.make_train_step(model, optim.make(...), frozen)`
jitted with the loop's buffer donation, `model.apply` for the forward, `catalog`/`pipeline` for data.
The machine is shared and noisy, so nothing is timed alone: every variant is compiled first, then the
variants run in rounds (per round and variant: one untimed call, then the mean of 3 timed calls; torch
included) and medians over rounds are compared. Only ratios between numbers of the same run mean anything.

Speed experiments (`--experiments`, on by default unless --quick): the full step of the demo CNN under
changed XLA settings — the batch split over N fake CPU devices (`--xla_force_host_platform_device_count`,
params replicated, batch sharded with `sharding.shard_batch`) and YNNPACK fusions off — each in its own
subprocess (XLA flags are read once, at backend start), the subprocesses run in interleaved sweeps.
"""

import argparse
import concurrent.futures
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import time
from typing import Any

from experiments.benchmarks import lora, mlm, report, self_supervised

TOP_KEYS = ('full_step_jax_over_torch', 'head_only_over_forward', 'pipeline_over_in_memory',
            'train_gflops_over_matmul_gflops', 'adam_state_over_trainable_bytes') + mlm.TOP_KEYS + (
                'lora_opt_state_over_adapter_bytes',) + self_supervised.KEYS
TARGETS = {'full_step_jax_over_torch': '<= 0.8', 'head_only_over_forward': '<= 1.10',
           'pipeline_over_in_memory': '<= 1.05', 'train_gflops_over_matmul_gflops': '>= 0.5',
           'adam_state_over_trainable_bytes': '== 2.0', **mlm.TARGETS, 'lora_opt_state_over_adapter_bytes': '== 2.0',
           **self_supervised.TARGETS}
LORA_QUICK = {'size': 'tiny', 'vocab_size': 1000, 'rank': 8}     # --quick: the same count on the 2 × 128 encoder
TORCH_ENV = 'JAXTRANSFER_TORCH_PYTHON'

CNN = {'name': 'cnn', 'stages': [16, 32], 'dense': [128]}     # config.base()'s backbone (the demo's)
RESNET = {'name': 'resnet', 'depth': [1, 1, 1], 'width': 16}
# --quick: the same kinds of network, smaller (XLA compile time dominates a quick run on 2 cores).
CNN_QUICK = {'name': 'cnn', 'stages': [8], 'dense': [16]}
RESNET_QUICK = {'name': 'resnet', 'depth': [1], 'width': 8}
NUM_OUTPUTS = 62                                               # glyphs: the pretraining task
IMAGE = (28, 28, 1)

# Settings compared by --experiments (name → extra XLA_FLAGS, fake devices used by the mesh, extra environment).
EXPERIMENTS = {
    'default': ('', 1, {}),
    'malloc_off': ('', 1, {'JAXTRANSFER_MALLOC': 'off'}),   # glibc's default: temp buffers mmap'd every step
    'ynn_off': ('--xla_cpu_experimental_ynn_fusion_type=', 1, {}),            # no YNNPACK fusions at all
    'ynn_no_conv': ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution', 1, {}),
    'split2': ('--xla_force_host_platform_device_count=2', 2, {}),
    'split4': ('--xla_force_host_platform_device_count=4', 4, {}),
    'split2_ynn_no_conv': ('--xla_force_host_platform_device_count=2 '
                           '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution', 2, {}),
    'split2_ynn_off': ('--xla_force_host_platform_device_count=2 --xla_cpu_experimental_ynn_fusion_type=', 2, {}),
}


_BASE_XLA_FLAGS = os.environ.get('XLA_FLAGS', '')   # before --split adds fake devices to this process


def _median(xs):
  xs = sorted(xs)
  n = len(xs)
  return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _ms(xs):
  return {'median_ms': round(1e3 * _median(xs), 3), 'min_ms': round(1e3 * min(xs), 3), 'n': len(xs)}


# ------------------------------------------------------------------------------------------- JAX side


_INIT_CACHE: dict = {}


def _setup(spec_backbone: dict, trainable: str, batch: int, seed: int = 0):
  """(model, jitted step with the loop's donation, fresh state, host batch, labels) for one freeze preset."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxtransfer import config as config_lib
  from jaxtransfer import optim, rules, steps
  from jaxtransfer.models import model as model_lib

  key = json.dumps(spec_backbone, sort_keys=True)
  if key not in _INIT_CACHE:               # one init compile per backbone; every variant gets its own copy
    model = model_lib.build({'backbone': spec_backbone, 'head': {'name': 'linear', 'num_outputs': NUM_OUTPUTS}})
    _INIT_CACHE[key] = (model, jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, *IMAGE), jnp.float32)))
  model, variables = _INIT_CACHE[key]
  variables = jax.tree_util.tree_map(jnp.copy, variables)     # donation consumes the buffers
  params, stats = variables['params'], variables.get('batch_stats', {})
  labels = rules.freeze_labels(trainable, params)
  frozen = rules.frozen_blocks(labels)
  tx = optim.make(config_lib.base().optim, labels, 1000)
  opt_state = tx.init(params)
  step = jax.jit(steps.make_train_step(model, tx, frozen), donate_argnums=(0, 1, 2))
  rng = np.random.default_rng(seed)
  host = {'image': rng.random((batch, *IMAGE), np.float32),
          'label': rng.integers(0, NUM_OUTPUTS, batch).astype(np.int32)}
  return model, step, [params, stats, opt_state], host, labels


class _Step:
  """A donated train step that carries its own state from call to call (like the training loop)."""

  def __init__(self, backbone: dict, trainable: str, batch: int):
    import jax
    self.model, self.step, self.state, host, self.labels = _setup(backbone, trainable, batch)
    self.batch = jax.device_put(host)
    self.key = jax.random.key(1)
    self.lowered = self.step.lower(*self.state, self.batch, self.key)
    self.compiled = None                     # `compile()` (several variants compile in parallel threads)

  def compile(self):
    self.compiled = self.lowered.compile()
    return self

  def __call__(self):
    import jax
    p, s, o, m = self.compiled(*self.state, self.batch, self.key)
    self.state = [p, s, o]
    jax.block_until_ready((p, s, o, m))
    return m


class _SplitStep(_Step):
  """The same full train step with the batch split over `devices` fake CPU devices (params replicated,
  batch sharded with `sharding.shard_batch`) — what `config.mesh.cpu_devices=N` does in the loop."""

  def __init__(self, backbone: dict, batch: int, devices: int):
    import jax
    from jaxtransfer import sharding
    _, step, state, host, _ = _setup(backbone, 'all', batch)
    mesh = sharding.make_mesh(devices)
    rep = sharding.replicated(mesh)
    self.step = jax.jit(step.__wrapped__, donate_argnums=(0, 1, 2), out_shardings=rep)
    self.state = jax.device_put(state, rep)
    self.batch = sharding.shard_batch(host, mesh)
    self.key = jax.random.key(1)
    self.lowered = self.step.lower(*self.state, self.batch, self.key)
    self.compiled = None


class _Forward:
  """Jitted `model.apply` in inference mode (the cost a head-only step should approach)."""

  def __init__(self, backbone: dict, batch: int):
    import jax
    model, _, (params, stats, _), host, _ = _setup(backbone, 'all', batch)
    variables = {'params': params, **({'batch_stats': stats} if stats else {})}
    self.args = (variables, jax.device_put(host['image']))
    self.lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(*self.args)
    self.fn = None

  def compile(self):
    self.fn = self.lowered.compile()
    return self

  def __call__(self):
    import jax
    return jax.block_until_ready(self.fn(*self.args))


class _Matmul(mlm.JaxGemm):
  """A jitted float32 n×n matmul: the machine's attainable FLOP/s through XLA."""

  def __init__(self, n: int):
    super().__init__('nn', (n, n, n), calls=1)


def _flops(compiled) -> float:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  return float(ca.get('flops', float('nan'))) if ca else float('nan')


def _tree_bytes(tree) -> int:
  import jax
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree) if hasattr(x, 'dtype')))


def adam_bytes(backbone: dict, trainable: str) -> dict:
  """Optimizer-state bytes vs trainable-parameter bytes (frozen groups must hold no state)."""
  import jax
  import jax.numpy as jnp

  from jaxtransfer import config as config_lib
  from jaxtransfer import optim, rules
  from jaxtransfer.models import model as model_lib

  model = model_lib.build({'backbone': backbone, 'head': {'name': 'linear', 'num_outputs': NUM_OUTPUTS}})
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *IMAGE), jnp.float32))['params']
  labels = rules.freeze_labels(trainable, params)
  opt_state = jax.eval_shape(optim.make(config_lib.base().optim, labels, 1000).init, params)
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda p, l: p if l == rules.TRAIN else None,
                                                            params, labels))
  trainable_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
  total_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
  state_bytes = _tree_bytes(opt_state)
  return {'trainable': trainable, 'param_bytes': total_bytes, 'trainable_bytes': trainable_bytes,
          'opt_state_bytes': state_bytes, 'ratio': state_bytes / trainable_bytes}


# ------------------------------------------------------------------------------------------- torch side


class TorchWorker:
  """`torch_worker.py` under another interpreter, driven line by line (see that file)."""

  def __init__(self, python: str, cnn: dict | None, batches, threads: int | None = None):
    """`cnn` None: no demo-CNN setup (the caller sends its own, e.g. mlm.py's `setup_mlm`)."""
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_worker.py')
    cmd = [python, worker] + ([str(threads)] if threads else [])
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'XLA_FLAGS')}
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env)
    self.info = {}
    if cnn is not None:
      self.info = self.ask({'cmd': 'setup', 'stages': cnn['stages'], 'dense': cnn['dense'],
                            'num_outputs': NUM_OUTPUTS, 'batches': list(batches)})

  def ask(self, msg: dict) -> dict:
    self.proc.stdin.write(json.dumps(msg) + '\n')
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'torch worker died: {self.proc.stderr.read()[-2000:]}')
    out = json.loads(line)
    if not out.get('ok'):
      raise RuntimeError(f'torch worker: {out.get("error")}')
    return out

  def time(self, batch: int, what: str = 'step') -> float:
    return self.ask({'cmd': 'time', 'batch': batch, 'what': what, 'n': 1})['times'][0]

  def close(self):
    try:
      self.ask({'cmd': 'quit'})
    except Exception:  # already gone
      pass
    self.proc.wait(timeout=30)


def torch_interpreter(flag: str, quick: bool) -> str | None:
  """The interpreter the torch workers run under: --torch-python, else $JAXTRANSFER_TORCH_PYTHON, else (not
  with --quick) this interpreter when it can import torch (the `convert` extra), so `make bench` compares
  with PyTorch wherever the extra is installed; else None (the comparisons are skipped, with the reason)."""
  if flag or os.environ.get(TORCH_ENV):
    return flag or os.environ.get(TORCH_ENV)
  if not quick and importlib.util.find_spec('torch') is not None:
    return sys.executable
  return None


def start_torch(python: str | None, cnn: dict | None, batches, threads: int | None):
  """(worker or None, info dict saying why not); `cnn` None: the worker is started but not set up."""
  if not python:
    return None, {'skipped': f'no torch interpreter: set {TORCH_ENV} or --torch-python to a Python with torch '
                             "(.venv/bin/python after pip install -c constraints.txt -e '.[convert]', which pins "
                             'the CPU wheel, or a separate venv; the core install never needs torch)'}
  if not os.path.exists(python):
    return None, {'skipped': f'{python} does not exist'}
  probe = subprocess.run([python, '-c', 'import torch; print(torch.__version__)'], capture_output=True, text=True)
  if probe.returncode:
    return None, {'skipped': f'{python} cannot import torch: {probe.stderr.strip().splitlines()[-1:]}'}
  w = TorchWorker(python, cnn, batches, threads)
  if cnn is None:
    return w, {'python': python, 'torch': probe.stdout.strip()}
  return w, {'python': python, 'torch': w.info['torch'], 'threads': w.info['threads'],
             'interop_threads': w.info['interop_threads']}


# ------------------------------------------------------------------------------------------- pipeline


def pipeline_vs_memory(step: '_Step', name: str, data_dir: str | None, batch: int, chunk: int, rounds: int) -> dict:
  """The CNN full step fed by the real input pipeline vs by pre-loaded device batches, interleaved chunks."""
  import jax

  from jaxtransfer import sharding
  from jaxtransfer.data import catalog, pipeline

  t0 = time.perf_counter()
  source = catalog.load(name, 'train', data_dir=data_dir)
  load_s = time.perf_counter() - t0
  mesh = sharding.make_mesh(1)
  batches = pipeline.train_batches(source, batch_size=batch, seed=0)
  for _ in range(3):                       # warm the pipeline's threads and prefetch buffer
    step.batch = sharding.shard_batch(next(batches), mesh)
    step()
  resident = [sharding.shard_batch(next(batches), mesh) for _ in range(chunk)]
  jax.block_until_ready(resident)
  per_step = {'pipeline': [], 'in_memory': []}

  def run(feed):
    t = time.perf_counter()
    m = None
    for i in range(chunk):
      step.batch = feed(i)
      p, s, o, m = step.compiled(*step.state, step.batch, step.key)   # no block per step, like the loop
      step.state = [p, s, o]
    jax.block_until_ready((step.state, m))
    return (time.perf_counter() - t) / chunk

  feeds = {'pipeline': lambda i: sharding.shard_batch(next(batches), mesh), 'in_memory': lambda i: resident[i]}
  for r in range(rounds):                  # alternate which feed goes first (order effects of a few %)
    for feed in (('pipeline', 'in_memory') if r % 2 == 0 else ('in_memory', 'pipeline')):
      per_step[feed].append(run(feeds[feed]))
  return {'dataset': name, 'examples': len(source), 'load_or_prepare_s': round(load_s, 2), 'batch': batch,
          'steps_per_chunk': chunk, 'pipeline': _ms(per_step['pipeline']), 'in_memory': _ms(per_step['in_memory'])}


# ------------------------------------------------------------------------------------------- experiments


def experiment_worker(batch: int, rounds: int, devices: int) -> dict:
  """Inside a subprocess with its own XLA_FLAGS: the demo CNN's full step on a `devices`-wide data mesh."""
  import jax
  import numpy as np

  from jaxtransfer import config as config_lib
  from jaxtransfer import optim, rules, sharding, steps
  from jaxtransfer.models import model as model_lib
  import jax.numpy as jnp

  mesh = sharding.make_mesh(devices)
  rep = sharding.replicated(mesh)
  model = model_lib.build({'backbone': CNN, 'head': {'name': 'linear', 'num_outputs': NUM_OUTPUTS}})
  params = jax.jit(model.init, out_shardings=rep)(jax.random.key(0), jnp.zeros((1, *IMAGE), jnp.float32))['params']
  labels = rules.freeze_labels('all', params)
  tx = optim.make(config_lib.base().optim, labels, 1000)
  opt_state = jax.jit(tx.init, out_shardings=rep)(params)
  step = jax.jit(steps.make_train_step(model, tx, ()), donate_argnums=(0, 1, 2), out_shardings=rep)
  rng = np.random.default_rng(0)
  host = {'image': rng.random((batch, *IMAGE), np.float32), 'label': rng.integers(0, NUM_OUTPUTS, batch).astype(np.int32)}
  b = sharding.shard_batch(host, mesh)
  key = jax.random.key(1)
  state = [params, {}, opt_state]
  times = []
  for i in range(rounds + 2):
    if i == 2:
      start = resource.getrusage(resource.RUSAGE_SELF)
      faults, sys_s = start.ru_minflt, start.ru_stime
    t = time.perf_counter()
    p, s, o, m = step(*state, b, key)
    state = [p, s, o]
    jax.block_until_ready((state, m))
    if i >= 2:
      times.append(time.perf_counter() - t)
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return {'devices': jax.device_count(), 'mesh_data': devices, 'batch': batch,
          'xla_flags': os.environ.get('XLA_FLAGS', ''), **_ms(times),
          'page_faults_per_step': round((usage.ru_minflt - faults) / rounds, 1),
          'system_ms_per_step': round(1e3 * (usage.ru_stime - sys_s) / rounds, 2)}


def run_experiments(names, batch: int, rounds: int, sweeps: int) -> dict:
  results: dict[str, list] = {n: [] for n in names}
  for _ in range(sweeps):
    for n in names:
      flags, devices, extra_env = EXPERIMENTS[n]
      env = dict(os.environ, **extra_env, XLA_FLAGS=(_BASE_XLA_FLAGS + ' ' + flags).strip(), JAX_PLATFORMS='cpu')
      out = subprocess.run([sys.executable, '-m', 'experiments.benchmarks.run', '--worker',
                            json.dumps({'batch': batch, 'rounds': rounds, 'devices': devices})],
                           env=env, capture_output=True, text=True)
      if out.returncode:
        results[n].append({'error': out.stderr.strip().splitlines()[-1:]})
        continue
      results[n].append(json.loads(out.stdout.strip().splitlines()[-1]))
  summary = {}
  for n, rs in results.items():
    ok = [r for r in rs if 'median_ms' in r]
    summary[n] = {'flags': EXPERIMENTS[n][0], 'devices': EXPERIMENTS[n][1], 'env': EXPERIMENTS[n][2],
                  'best_median_ms': min(r['median_ms'] for r in ok) if ok else None,
                  'sweeps': rs}
  base = summary.get('default', {}).get('best_median_ms')
  for n, s in summary.items():
    s['speedup_vs_default'] = round(base / s['best_median_ms'], 3) if base and s['best_median_ms'] else None
  return {'what': f'demo CNN full step, batch {batch}, median of {rounds} steps per subprocess, best of '
                  f'{sweeps} interleaved sweeps', 'results': summary}


# ------------------------------------------------------------------------------------------- main


def bench(args) -> dict:
  import jax
  import numpy as np

  q = args.quick
  batches = [8] if q else [32, 128]
  rounds = args.rounds or (3 if q else 15)
  big = max(batches)
  started = time.time()
  load0 = os.getloadavg()

  backbones = {'cnn': CNN_QUICK, 'resnet': RESNET_QUICK} if q else {'cnn': CNN, 'resnet': RESNET}
  torch_python = torch_interpreter(args.torch_python, q)
  torch_w, torch_info = start_torch(torch_python, backbones['cnn'], batches,
                                    args.torch_threads)

  phases: dict[str, float] = {}
  mark = [time.time()]

  def phase(name):
    now = time.time()
    phases[name] = round(now - mark[0], 2)
    mark[0] = now
    print(f'[{now - started:6.1f} s] {name} done', flush=True)

  phase('torch_start')
  variants: dict[str, Any] = {}
  for bname, spec in backbones.items():
    for b in batches:
      variants[f'{bname}/b{b}/full'] = _Step(spec, 'all', b)
      variants[f'{bname}/b{b}/head_only'] = _Step(spec, 'head', b)
      variants[f'{bname}/b{b}/forward'] = _Forward(spec, b)
  split = 0 if q else args.split
  if split > 1:
    if jax.device_count() < split:
      raise ValueError(f'--split={split}: this process has {jax.device_count()} devices (XLA_FLAGS must be set before '
                       'jax starts; run the module as a script)')
    variants[f'cnn/b{big}/full_split{split}'] = _SplitStep(backbones['cnn'], big, split)
  n_mm = 256 if q else 1024
  variants[f'matmul/{n_mm}'] = _Matmul(n_mm)
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # XLA drops the GIL
    list(pool.map(lambda v: v.compile(), variants.values()))
  for v in variants.values():
    v()                                                            # warm-up
  times: dict[str, list] = {k: [] for k in variants}
  if torch_w:
    for b in batches:
      times[f'torch/cnn/b{b}/full'] = []
      times[f'torch/cnn/b{b}/forward'] = []

  phase('compile')
  print(f'timing {len(times)} variants × {rounds} rounds ...', flush=True)
  calls = 1 if q else 3
  for r in range(rounds):
    for k, fn in variants.items():
      # One untimed call first: the variant timed just before (e.g. the full step before the head-only
      # one) leaves caches and XLA's thread pool in its own state, which otherwise lands on this sample
      # (it made head-only/forward read 1.30 instead of ~1.1 at batch 128). Then the mean of `calls`.
      fn()
      t = time.perf_counter()
      for _ in range(calls):
        fn()
      times[k].append((time.perf_counter() - t) / calls)
    if torch_w:
      for b in batches:
        times[f'torch/cnn/b{b}/full'].append(torch_w.time(b, 'step'))
        times[f'torch/cnn/b{b}/forward'].append(torch_w.time(b, 'forward'))
  if torch_w:
    torch_w.close()
  timings = {k: _ms(v) for k, v in times.items()}
  phase('timed_rounds')

  full = variants[f'cnn/b{big}/full']
  flops = _flops(full.compiled)
  # The headline JAX full step: the faster of the 1-device step and the batch split over fake devices
  # (both timed in the same rounds; the split step does the same FLOPs, counted from the 1-device compile).
  full_key = min([k for k in (f'cnn/b{big}/full', f'cnn/b{big}/full_split{split}') if k in times],
                 key=lambda k: _median(times[k]))
  train_gflops = flops / _median(times[full_key]) / 1e9
  mm_gflops = variants[f'matmul/{n_mm}'].flops / _median(times[f'matmul/{n_mm}']) / 1e9
  gflops = {'step': full_key, 'step_flops': flops, 'step_gflops_per_s': round(train_gflops, 3),
            'matmul_n': n_mm, 'matmul_gflops_per_s': round(mm_gflops, 3),
            'per_variant_flops': {k: _flops(v.compiled) for k, v in variants.items() if isinstance(v, _Step)}}

  adam = {t: adam_bytes(backbones['cnn'], t) for t in ('head', 'last:1', 'all')}
  adam['resnet/last:1'] = adam_bytes(backbones['resnet'], 'last:1')
  phase('flops_and_bytes')
  pipe = pipeline_vs_memory(full, args.dataset or ('glyphs/small' if q else 'glyphs'), args.data_dir or None,
                            big, chunk=4 if q else 10, rounds=3 if q else 20)
  del variants, full

  phase('pipeline')
  mlm_res = mlm.run(rounds, quick=q, torch_python=torch_python,
                    torch_threads=args.torch_threads or None,
                    torch_also_threads=() if q or (os.cpu_count() or 1) == 1 else (1,),
                    shared_dir=args.shared_data or os.environ.get(mlm.SHARED_ENV) or mlm.SHARED_DEFAULT)
  phase('mlm')
  lora_res = lora.measure(**LORA_QUICK) if q else lora.measure()
  phase('lora')
  ssl_res = self_supervised.run(rounds, quick=q)
  phase('self_supervised')
  experiments = None
  if args.experiments and not q:
    print('experiments (subprocesses) ...', flush=True)
    experiments = run_experiments(args.experiments.split(','), 128, rounds=8, sweeps=2)
    phase('experiments')

  med = lambda k: timings[k]['median_ms']
  torch_key = f'torch/cnn/b{big}/full'
  result = {
      'full_step_jax_over_torch': med(full_key) / med(torch_key) if torch_key in timings else None,
      'head_only_over_forward': med(f'cnn/b{big}/head_only') / med(f'cnn/b{big}/forward'),
      'pipeline_over_in_memory': pipe['pipeline']['median_ms'] / pipe['in_memory']['median_ms'],
      'train_gflops_over_matmul_gflops': train_gflops / mm_gflops,
      'adam_state_over_trainable_bytes': adam['last:1']['ratio'],
      **{k: mlm_res[k] for k in mlm.TOP_KEYS},
      'lora_opt_state_over_adapter_bytes': lora_res['lora_opt_state_over_adapter_bytes'],
      **{k: ssl_res[k] for k in self_supervised.KEYS},
  }
  ratios_all = {}
  for bname in backbones:
    for b in batches:
      ratios_all[f'{bname}/b{b}'] = {
          'full_over_forward': med(f'{bname}/b{b}/full') / med(f'{bname}/b{b}/forward'),
          'head_only_over_forward': med(f'{bname}/b{b}/head_only') / med(f'{bname}/b{b}/forward'),
          'full_over_head_only': med(f'{bname}/b{b}/full') / med(f'{bname}/b{b}/head_only')}
      if f'torch/cnn/b{b}/full' in timings and bname == 'cnn':
        ratios_all[f'{bname}/b{b}']['full_jax_over_torch'] = med(f'cnn/b{b}/full') / med(f'torch/cnn/b{b}/full')
        ratios_all[f'{bname}/b{b}']['forward_jax_over_torch'] = (med(f'cnn/b{b}/forward')
                                                                 / med(f'torch/cnn/b{b}/forward'))
  result = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
  result['raw'] = {
      'command': ' '.join(['python -m experiments.benchmarks.run'] + sys.argv[1:]),
      'quick': q, 'rounds': rounds, 'batches': batches, 'headline_batch': big, 'headline_full_step': full_key,
      'split_devices': split,
      'models': {**backbones, 'head': {'name': 'linear', 'num_outputs': NUM_OUTPUTS}},
      'targets': TARGETS,
      'machine': report.machine(load0, devices=[str(d) for d in jax.devices()]),
      'timings': timings, 'ratios': ratios_all, 'gflops': gflops, 'adam_bytes': adam, 'pipeline': pipe,
      'torch': torch_info, 'experiments': experiments, 'seconds': round(time.time() - started, 1), 'phase_seconds': phases,
      'mlm': mlm_res, 'lora': lora_res, 'self_supervised': ssl_res,
  }
  del np
  return result


def markdown(res: dict) -> str:
  raw = res['raw']
  lines = ['# jaxtransfer benchmark', '', f'`{raw["command"]}` — {raw["machine"]["cpu_count"]} cores of {raw["machine"]["cpu"]}, jax '
           f'{raw["machine"]["jax"]}, load average {raw["machine"]["loadavg_start"]} → {raw["machine"]["loadavg_end"]}, '
           f'{raw["rounds"]} interleaved rounds, {raw["seconds"]} s.', '',
           '| ratio | value | target |', '| --- | --- | --- |']
  for k in TOP_KEYS:
    v = res[k]
    lines.append(f'| `{k}` | {"n/a" if v is None else f"{v:.4g}"} | {TARGETS[k]} |')
  lines += ['', f'JAX full step in the headline ratios: `{raw.get("headline_full_step")}` (the faster of the '
            f'1-device step and the batch split over {raw.get("split_devices") or "no"} fake CPU devices, same rounds).']
  if raw['torch'].get('skipped'):
    lines += ['', f'PyTorch comparison skipped: {raw["torch"]["skipped"]}']
  else:
    lines += ['', f'PyTorch {raw["torch"]["torch"]} eager, {raw["torch"]["threads"]} threads (interop '
              f'{raw["torch"]["interop_threads"]}).']
  lines += ['', '## Step times (median over rounds, ms)', '', '| variant | median | min |', '| --- | --- | --- |']
  for k, v in raw['timings'].items():
    lines.append(f'| {k} | {v["median_ms"]:.1f} | {v["min_ms"]:.1f} |')
  g = raw['gflops']
  lines += ['', f'GFLOP/s: {g["step"]} {g["step_gflops_per_s"]:.2f} ({g["step_flops"] / 1e9:.2f} GFLOP/step, XLA '
            f'cost analysis) vs {g["matmul_n"]}² matmul {g["matmul_gflops_per_s"]:.2f}.', '',
            '## Optimizer state', '', '| trainable | trainable bytes | opt-state bytes | ratio |', '| --- | --- | --- | --- |']
  for k, v in raw['adam_bytes'].items():
    lines.append(f'| {k} | {v["trainable_bytes"]} | {v["opt_state_bytes"]} | {v["ratio"]:.4f} |')
  p = raw['pipeline']
  lines += ['', f'Input pipeline ({p["dataset"]}, {p["examples"]} examples, batch {p["batch"]}): '
            f'{p["pipeline"]["median_ms"]:.1f} ms/step vs in-memory {p["in_memory"]["median_ms"]:.1f} ms/step.']
  if raw.get('mlm'):
    lines += ['', '#' + mlm.markdown(raw['mlm'])]
  if raw.get('lora'):
    lines += ['', '#' + lora.markdown(raw['lora'])]
  if raw.get('self_supervised'):
    lines += ['', '#' + self_supervised.markdown(raw['self_supervised'])]
  if raw.get('experiments'):
    lines += ['', '## Speed experiments', '', raw['experiments']['what'], '',
              '| variant | XLA flags / env | best median ms | speed-up | page faults / step | system ms / step |',
              '| --- | --- | --- | --- | --- | --- |']
    for k, v in raw['experiments']['results'].items():
      ok = [r for r in v['sweeps'] if 'median_ms' in r]
      faults = min((r.get('page_faults_per_step', float('nan')) for r in ok), default=float('nan'))
      sys_ms = min((r.get('system_ms_per_step', float('nan')) for r in ok), default=float('nan'))
      setting = ' '.join([f'`{v["flags"]}`' if v['flags'] else ''] + [f'{a}={b}' for a, b in v.get('env', {}).items()])
      lines.append(f'| {k} | {setting.strip()} | {v["best_median_ms"]} | {v["speedup_vs_default"]} | {faults:.0f} '
                   f'| {sys_ms:.1f} |')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--out', default='runs/bench')
  ap.add_argument('--quick', action='store_true', help='batch 8, 3 rounds, glyphs/small, no experiments (≈ 20 s)')
  ap.add_argument('--rounds', type=int, default=0, help='timed rounds (default 15, quick 3)')
  ap.add_argument('--torch-python', default='', help=f'interpreter with torch (default ${TORCH_ENV}, else this one '
                                                     'if it has torch, except with --quick)')
  ap.add_argument('--torch-threads', type=int, default=0, help='torch.set_num_threads (default: torch\'s own)')
  ap.add_argument('--dataset', default='', help="pipeline dataset (default 'glyphs', quick 'glyphs/small')")
  ap.add_argument('--data-dir', default='', help='TFDS data dir (default: catalog.default_data_dir())')
  ap.add_argument('--shared-data', default='', help=f'where wikitext-2-raw is, for the MLM token batch (default '
                                                     f'${mlm.SHARED_ENV} or {mlm.SHARED_DEFAULT})')
  ap.add_argument('--experiments', default=','.join(EXPERIMENTS),
                  help=f'comma-separated subset of {list(EXPERIMENTS)} ("" = none); skipped with --quick')
  ap.add_argument('--split', type=int, default=0,
                  help='also time the demo CNN full step with the batch split over N fake CPU devices, in the same '
                       'rounds; the headline JAX/torch ratio uses the faster layout (default 0 = off; off with --quick)')
  ap.add_argument('--worker', default='', help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  from jaxtransfer import runtime
  if args.worker:
    runtime.configure()   # before jax starts, under the experiment's XLA_FLAGS / JAXTRANSFER_MALLOC
    w = json.loads(args.worker)
    print(json.dumps(experiment_worker(w['batch'], w['rounds'], w['devices'])))
    return
  if args.split > 1 and not args.quick and 'xla_force_host_platform_device_count' not in _BASE_XLA_FLAGS:
    # Before jax starts (it is imported lazily below): the 1-device variants use device 0 only.
    os.environ['XLA_FLAGS'] = (_BASE_XLA_FLAGS + f' --xla_force_host_platform_device_count={args.split}').strip()
  runtime.configure()   # after --split's XLA_FLAGS, before jax starts
  res = bench(args)
  report.write(args.out, 'bench', res, markdown(res))
  bad = [k for k in TOP_KEYS if isinstance(res[k], float) and not math.isfinite(res[k])]
  if bad:
    print('non-finite:', bad, file=sys.stderr)


if __name__ == '__main__':
  main()
