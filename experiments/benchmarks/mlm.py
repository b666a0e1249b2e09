"""Benchmark: the masked-LM pretraining step — JAX (THE train step) vs PyTorch eager, GFLOP/s, tokens/s.

    python -m experiments.benchmarks.mlm [--rounds=10] [--torch-python=.venv/bin/python] [--torch-threads=N]
        [--quick] [--out=runs/bench/mlm]
    (`make bench` runs it inside `experiments.benchmarks.run` and puts its three keys in bench.json.)

What is timed. JAX: `steps.make_train_step(model, optim.make(...), frozen, MaskedLM)` jitted with the loop's
buffer donation — the step `jaxtransfer pretrain` runs — for experiments/configs/pretrain_mlm_wikitext.py:
pre-LN encoder 4 × 128, 4 heads, MLP 512, dropout 0.1, vocabulary 8000, BERT masking (exactly round(15 %) of
each row's real tokens, 80/10/10) drawn inside the step, the MLM head (dense + GELU + LayerNorm + untied
output projection) on the K = ceil(0.15 × 64) = 10 gathered positions per row, AdamW (weight decay 0.01)
after global-norm clipping 1.0 at the warm-up + cosine learning rate; batch 128 × sequence 64, float32.
PyTorch: the same network, masking, gathered head, loss, clipping and AdamW written in torch eager
(`torch_worker.py`, `setup_mlm`; `test_benchmarks.py` checks it computes the JAX model's loss from the JAX
weights) in a separate interpreter with `--torch-threads` threads (default: every core, what XLA's CPU
thread pool uses), driven call by call in the same rounds. `--torch-also-threads` (default 1 on a
multi-core machine) times a second torch worker with that many threads in the same rounds, reported in
`raw` only: on a loaded shared machine torch's OpenMP regions wait for descheduled threads, which can make
its multi-threaded step slower than its single-threaded one and the headline ratio look better than it is.
A 1024² float32 matmul is timed in the same rounds too (5 calls per sample). Per round and variant: one
untimed call, then one timed call; the order alternates from round to round; medians over rounds.

The token batch. With ../shared/data/wikitext-2-raw present (`--shared-data`, $JAXTRANSFER_SHARED_DATA):
real sentences of `wikitext2/sentences` (`data.builders.text.wikitext_sentences`, the builder's own
splitting) tokenized by a SentencePiece of the config's 8000 pieces trained on 20,000 of them (seeded; the
full corpus takes ~3× longer and gives the same lengths within 2 %), padded like the pipeline
(`text.inputs.TextInputs`, buckets 32/64). One such batch is timed (the step's cost depends only on its
shape); the real-token count is the mean over `REAL_TOKEN_BATCHES` random batches of 128 and the share
padded to each bucket is recorded (uniform draws: the pretraining config's `text.group_by_length` deals
batches of like lengths instead, most of them shorter than 64 — the step timed here is its longest). Without the data: random tokens with row lengths uniform in [8, 64]
(`raw.tokens.source` says which).

Where the step ratio comes from (`raw.kernels`, a second table in the markdown): the step's matmul classes —
a projection x·W (rows × width × width), the MLP's widening layer, a projection's kernel gradient xᵀ·g
(contracting all batch × seq rows), the attention's q·kᵀ per (row, head) (batch·heads products of seq × head_dim
× seq) and the head's vocabulary projection — each timed alone as `KERNEL_CALLS` back-to-back products in JAX
(`jax.lax.dot_general`, jitted) and in the torch worker (`F.linear` on an `nn.Linear`-stored weight, `.t() @`,
`torch.bmm`), in the same rounds as the
steps, with their GFLOP/s and the time ratio. The two CPUs this project runs on differ most there (BUILD_NOTES).

Keys (top level of the JSON):
  mlm_step_jax_over_torch               median JAX step / median PyTorch step (target ≤ 0.8; null without torch)
  mlm_train_gflops_over_matmul_gflops   (XLA cost-analysis FLOPs of the compiled JAX step / its median time) /
                                        the matmul's GFLOP/s in the same rounds (target ≥ 0.5). `raw.flops`
                                        also has the analytic count (matmuls only: 3 × forward) for comparison
  mlm_pretrain_tokens_per_s             mean real (non-padding) tokens per batch / median JAX step time
Writes `<out>/mlm.json` and `<out>/mlm.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import time
from typing import Any

import numpy as np

from experiments.benchmarks import report, timing

TOP_KEYS = ('mlm_step_jax_over_torch', 'mlm_train_gflops_over_matmul_gflops', 'mlm_pretrain_tokens_per_s')
TARGETS = {'mlm_step_jax_over_torch': '<= 0.8', 'mlm_train_gflops_over_matmul_gflops': '>= 0.5',
           'mlm_pretrain_tokens_per_s': '(measured)'}
SHARED_ENV = 'JAXTRANSFER_SHARED_DATA'
SHARED_DEFAULT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..',
                                               'shared', 'data'))
SPM_SENTENCES = 20000
REAL_TOKEN_BATCHES = 50
MATMUL_CALLS = 5
# --quick: the same program, tiny (what the test runs; XLA compile time dominates on 2 cores).
QUICK = {'backbone': {'num_layers': 1, 'width': 32, 'num_heads': 2, 'mlp_dim': 64, 'vocab_size': 256, 'max_len': 16},
         'batch': 8, 'matmul': 128}
# The reserved ids of the project's SentencePiece ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4).
SPECIAL_IDS = (0, 1, 2, 3, 4)
MASK_ID = 4


def _config(quick: bool):
  from experiments.configs import pretrain_mlm_wikitext
  c = pretrain_mlm_wikitext.get_config()
  if quick:
    c.model.backbone = {**dict(c.model.backbone), **QUICK['backbone']}
    c.text.max_len, c.train.batch_size = QUICK['backbone']['max_len'], QUICK['batch']
    c.text.buckets = (QUICK['backbone']['max_len'] // 2, QUICK['backbone']['max_len'])
  return c


# ------------------------------------------------------------------------------------------- the batch


def token_batch(config, shared_dir: str | None, seed: int = 0) -> tuple[np.ndarray, Any, dict[str, Any]]:
  """(tokens (batch, max_len) int32, the SentencePiece tokenizer or None, info) — module docstring."""
  batch, max_len = int(config.train.batch_size), int(config.text.max_len)
  vocab = int(config.model.backbone['vocab_size'] or config.text.vocab_size)
  rng = np.random.default_rng(seed)
  raw = os.path.join(shared_dir or '', 'wikitext-2-raw', 'wiki.train.raw')
  if shared_dir and os.path.exists(raw):
    from jaxtransfer.data.builders import text as text_builders
    from jaxtransfer.text import inputs as text_inputs
    from jaxtransfer.text import sentencepiece
    t0 = time.perf_counter()
    sentences = text_builders.wikitext_sentences(raw)
    tok = sentencepiece.train_sentencepiece(sentences, vocab, seed=seed, max_sentences=SPM_SENTENCES)
    pad = text_inputs.TextInputs(tok, max_len, tuple(config.text.buckets))
    draws = [pad.tokens([sentences[i].encode() for i in rng.choice(len(sentences), batch, replace=False)])
             for _ in range(REAL_TOKEN_BATCHES)]
    lengths = [d.shape[1] for d in draws]
    full = [d for d in draws if d.shape[1] == max_len]
    tokens = full[0] if full else np.pad(draws[0], ((0, 0), (0, max_len - draws[0].shape[1])))
    real = [int(np.sum(d != tok.pad_id)) for d in draws]
    info = {'source': f'wikitext2/sentences train ({len(sentences)} sentences), SentencePiece {vocab} trained on '
                      f'{SPM_SENTENCES} of them', 'prepare_s': round(time.perf_counter() - t0, 2),
            'real_tokens_per_batch': float(np.mean(real)), 'real_tokens_per_batch_min_max': [min(real), max(real)],
            'batches_sampled': REAL_TOKEN_BATCHES,
            'bucket_share': {str(b): lengths.count(b) / len(lengths) for b in sorted(set(lengths))}}
    return tokens.astype(np.int32), tok, {**info, 'timed_batch_real_tokens': int(np.sum(tokens != tok.pad_id))}
  lengths = rng.integers(min(8, max_len), max_len + 1, batch)
  tokens = rng.integers(len(SPECIAL_IDS), vocab, (batch, max_len)).astype(np.int32)
  tokens[:, 0], tokens[np.arange(batch), lengths - 1] = 2, 3                   # [CLS] … [SEP]
  tokens[np.arange(max_len)[None, :] >= lengths[:, None]] = 0                  # [PAD]
  real = int(np.sum(tokens != 0))
  why = f'no {raw}' if shared_dir else 'no data directory given'
  return tokens, None, {'source': f'synthetic ({why}): random tokens, row lengths uniform in [8, {max_len}]',
                        'real_tokens_per_batch': float(real), 'timed_batch_real_tokens': real}


# ------------------------------------------------------------------------------------------- JAX side


class JaxMLMStep:
  """THE train step of `jaxtransfer pretrain` for `config`, carrying its donated state from call to call."""

  def __init__(self, config, tokens: np.ndarray, tokenizer: Any = None, seed: int = 0):
    import jax

    from jaxtransfer import objectives, optim, rules, steps
    from jaxtransfer.models import model as model_lib

    objective = objectives.from_config(config)
    vocab = int(config.model.backbone['vocab_size'] or config.text.vocab_size)
    if tokenizer is not None:
      objective = objective.for_tokenizer(tokenizer)
    else:
      objective = dataclasses.replace(objective, mask_id=MASK_ID, special_ids=SPECIAL_IDS, vocab_size=vocab)
    self.objective = objective
    self.spec = steps.model_spec(config, vocab, objective)
    self.spec['backbone'] = {**self.spec['backbone'], 'vocab_size': vocab}
    self.model = model = model_lib.build(self.spec)
    params = jax.jit(lambda k: model_lib.init(model, k, (tokens.shape[1],)))(jax.random.key(seed))['params']
    labels = rules.freeze_labels(config.trainable, params)
    frozen = rules.frozen_blocks(labels)
    self.tx = optim.make(config.optim, labels, config.train.steps)
    opt_state = jax.jit(steps.opt_init(self.tx, objective))(params)
    self.num_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
    self.step = jax.jit(steps.make_train_step(model, self.tx, frozen, objective), donate_argnums=(0, 1, 2))
    self.state = [params, {}, opt_state]
    self.batch = {'tokens': jax.device_put(tokens)}
    self.key = jax.random.key(seed + 1)
    self.lowered = self.step.lower(*self.state, self.batch, self.key)
    self.compiled = None

  def compile(self) -> 'JaxMLMStep':
    self.compiled = self.lowered.compile()
    return self

  def __call__(self) -> dict[str, Any]:
    import jax
    p, s, o, m = self.compiled(*self.state, self.batch, self.key)
    self.state = [p, s, o]
    jax.block_until_ready((p, s, o, m))
    return m


def analytic_flops(backbone: dict[str, Any], batch: int, seq: int, head_positions: int,
                   head_hidden: int = 0) -> dict[str, float]:
  """Matmul FLOPs of one train step (forward × 3: the backward costs two forwards), per part; the head
  runs on `head_positions` rows per sequence (the MLM objective's K gathered positions)."""
  d, layers, m, v = backbone['width'], backbone['num_layers'], backbone['mlp_dim'] or 4 * backbone['width'], \
      backbone['vocab_size']
  h = head_hidden or d
  n, nh = batch * seq, batch * head_positions
  parts = {'encoder_projections': 2 * n * layers * (4 * d * d + 2 * d * m),
           'attention_scores_and_values': 2 * 2 * batch * seq * seq * d * layers,
           'head_transform': 2 * nh * d * h, 'vocab_projection': 2 * nh * h * v}
  return {**{k: 3.0 * x for k, x in parts.items()}, 'total': 3.0 * sum(parts.values())}


def torch_state(params: Any) -> dict[str, list]:
  """The JAX MLM model's parameters under `torch_worker.build_mlm`'s names and layouts (nested lists)."""
  from jaxtransfer import rules
  flat = {p: np.asarray(x) for p, x in rules.flatten(params).items()}
  out: dict[str, np.ndarray] = {}
  for path, x in flat.items():
    parts = path.split('/')
    if parts[0] == 'head':
      name = {'transform': 'transform', 'norm': 'norm', 'out': 'out'}[parts[1]]
      out[f'{name}.{"weight" if parts[2] in ("kernel", "scale") else "bias"}'] = x.T if parts[2] == 'kernel' else x
      continue
    block = int(parts[1].split('_')[1])
    if block == 0:
      out['token_embed.weight' if parts[2] == 'token_embed' else 'position_embed'] = x
      continue
    prefix = f'blocks.{block - 1}.'
    module = parts[3] if parts[2] == 'attention' else parts[2]
    leaf = parts[-1]
    if leaf in ('scale', 'bias') and module.startswith('norm'):
      out[prefix + module + ('.weight' if leaf == 'scale' else '.bias')] = x
    elif leaf == 'kernel':
      out[prefix + module + '.weight'] = x.reshape(-1, x.shape[-1]).T if module == 'out' else x.reshape(x.shape[0], -1).T
    else:
      out[prefix + module + '.bias'] = x.reshape(-1)
  return {k: np.ascontiguousarray(v, np.float32).tolist() for k, v in out.items()}


# ------------------------------------------------------------------------------------------- matmul classes

# The step's matmuls fall into a few shapes, each run many times per step; `raw.kernels` times one of each
# alone, in JAX and in torch, in the same rounds as the steps, so the record says which class a CPU runs
# slower under XLA than under torch — where the step ratio comes from (module docstring). GEMM kinds, dims
# (m, k, n) or (batch, m, k, n): 'nn' a(m, k)·b(k, n); 'tn' a(k, m)ᵀ·b(k, n), the kernel gradient's
# contraction over the rows; 'bnt' a(batch, m, k)·b(batch, n, k)ᵀ, one small product per (row, head).
KERNEL_CALLS = 10
GEMM_DIMENSIONS = {'nn': (((1,), (0,)), ((), ())), 'tn': (((0,), (0,)), ((), ())),
                   'bnt': (((2,), (2,)), ((0,), (0,)))}


def kernel_classes(backbone: dict[str, Any], batch: int, seq: int, head_positions: int,
                   head_hidden: int = 0) -> dict[str, tuple[str, tuple[int, ...]]]:
  """name → (GEMM kind, dims) of the masked-LM step's matmul classes, one shape standing for several dots of
  the step (per layer: 'projection' 4 forward + 4 input gradients, 'kernel_grad' 4, 'attention' 6 batched
  products of the same size in several transposes; 'mlp_in' and 'vocab' forward, their gradients alike)."""
  d, heads, m, v = backbone['width'], backbone['num_heads'], backbone['mlp_dim'] or 4 * backbone['width'], \
      backbone['vocab_size']
  rows = batch * seq
  return {'projection': ('nn', (rows, d, d)),                    # q/k/v/out: x·W (and g·Wᵀ)
          'mlp_in': ('nn', (rows, d, m)),                        # the MLP's widening layer
          'kernel_grad': ('tn', (d, rows, d)),                   # xᵀ·g over every row: a projection's dW
          'attention': ('bnt', (batch * heads, seq, d // heads, seq)),   # q·kᵀ per (row, head)
          'vocab': ('nn', (batch * head_positions, head_hidden or d, v))}  # the head's output projection


def gemm_shapes(kind: str, dims: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The operand shapes of a GEMM class (see `GEMM_DIMENSIONS`)."""
  if kind == 'bnt':
    b, m, k, n = dims
    return (b, m, k), (b, n, k)
  m, k, n = dims
  return ((m, k) if kind == 'nn' else (k, m)), (k, n)


def jax_gemm(kind: str):
  """The GEMM class as `jax.lax.dot_general` (what the step's dots are)."""
  import jax
  return lambda a, b: jax.lax.dot_general(a, b, GEMM_DIMENSIONS[kind])


class JaxGemm:
  """`calls` back-to-back jitted products of one GEMM class on fixed random operands (`compile()` before
  timing; `flops` per product). run.py's 1024² matmul is the 'nn' class of one call."""

  def __init__(self, kind: str, dims: tuple[int, ...], calls: int = KERNEL_CALLS, seed: int = 0):
    import jax
    shape_a, shape_b = gemm_shapes(kind, dims)
    ka, kb = jax.random.split(jax.random.key(seed))
    self.a, self.b = jax.random.normal(ka, shape_a), jax.random.normal(kb, shape_b)
    self.calls, self.flops = calls, 2.0 * math.prod(dims)
    self.fn = jax.jit(jax_gemm(kind))

  def compile(self) -> 'JaxGemm':
    self.fn = self.fn.lower(self.a, self.b).compile()
    return self

  def __call__(self):
    import jax
    return jax.block_until_ready([self.fn(self.a, self.b) for _ in range(self.calls)])


# ------------------------------------------------------------------------------------------- torch side


def torch_setup_message(config, tokens: np.ndarray, objective: Any) -> dict[str, Any]:
  """`torch_worker.py`'s `setup_mlm` message: the same network, masking, loss and optimizer as `config`."""
  b, o = dict(config.model.backbone), config.optim
  return {'cmd': 'setup_mlm', 'tokens': tokens.tolist(), 'vocab_size': int(objective.vocab_size),
          'max_len': int(b['max_len']), 'width': int(b['width']), 'num_layers': int(b['num_layers']),
          'num_heads': int(b['num_heads']), 'mlp_dim': int(b['mlp_dim'] or 4 * b['width']),
          'dropout': float(b.get('dropout', 0.0)), 'head_hidden': int(objective.head_hidden),
          'pad_id': int(b.get('pad_id', 0)), 'mask_rate': objective.mask_rate, 'mask_token': objective.mask_token,
          'random_token': objective.random_token, 'mask_id': int(objective.mask_id),
          'special_ids': [int(i) for i in objective.special_ids], 'lr': float(o.lr),
          'warmup_steps': int(o.warmup_steps), 'total_steps': int(config.train.steps),
          'weight_decay': float(o.weight_decay), 'grad_clip': float(o.grad_clip),
          'b1': 0.9, 'b2': 0.999, 'eps': 1e-8}   # optax.adamw's defaults (optim.base_optimizer passes none)


def start_torch(python: str | None, threads: int | None, setup: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
  """(worker answering `setup_mlm` or None, info dict saying why not)."""
  from experiments.benchmarks import run as bench_run
  worker, info = bench_run.start_torch(python, None, (), threads)
  if worker is None:
    return None, info
  out = worker.ask(setup)
  return worker, {**info, 'threads': out['threads'], 'interop_threads': out['interop_threads'], 'params': out['params'],
                  'first_loss': out['loss']}


# ------------------------------------------------------------------------------------------- run


def run(rounds: int, *, quick: bool = False, torch_python: str | None = None, torch_threads: int | None = None,
        torch_also_threads: tuple[int, ...] = (), shared_dir: str | None = None) -> dict[str, Any]:
  """Everything of the module docstring; the three keys at the top level, the measurements in `raw`."""
  import jax

  from experiments.benchmarks import run as bench_run
  from jaxtransfer.objectives import mlm as mlm_objective

  started, load0 = time.time(), os.getloadavg()
  config = _config(quick)
  tokens, tokenizer, tok_info = token_batch(config, None if quick else shared_dir)
  jax_step = JaxMLMStep(config, tokens, tokenizer)
  threads = torch_threads or os.cpu_count() or 1
  setup = torch_setup_message(config, tokens, jax_step.objective)
  torch_w, torch_info = start_torch(torch_python, threads, setup)
  also = {}
  for n in (torch_also_threads if torch_w else ()):
    if n != threads:
      also[n] = start_torch(torch_python, n, setup)
  n_mm = QUICK['matmul'] if quick else 1024
  matmul = bench_run._Matmul(n_mm).compile()
  t0 = time.perf_counter()
  jax_step.compile()
  compile_s = time.perf_counter() - t0
  first = {k: float(v) for k, v in jax_step().items()}
  fns = {'jax_mlm_step': jax_step, f'matmul_{n_mm}_x{MATMUL_CALLS}': lambda: [matmul() for _ in range(MATMUL_CALLS)]}
  ask = lambda w: (lambda: w.ask({'cmd': 'time', 'what': 'mlm_step', 'batch': 0, 'n': 1}))
  if torch_w:
    fns['torch_mlm_step'] = ask(torch_w)
  for n, (w, _) in also.items():
    fns[f'torch_mlm_step_{n}_threads'] = ask(w)
  backbone = dict(jax_step.spec['backbone'])
  head_positions = mlm_objective.num_predictions(tokens.shape[1], jax_step.objective.mask_rate)
  kernels = kernel_classes(backbone, tokens.shape[0], tokens.shape[1], head_positions, jax_step.objective.head_hidden)
  for name, (kind, dims) in kernels.items():
    fns[f'jax_{name}_x{KERNEL_CALLS}'] = JaxGemm(kind, dims).compile()
  if torch_w:
    torch_w.ask({'cmd': 'setup_kernels', 'calls': KERNEL_CALLS,
                 'kernels': {name: [kind, *gemm_shapes(kind, dims)] for name, (kind, dims) in kernels.items()}})
    for name in kernels:
      fns[f'torch_{name}_x{KERNEL_CALLS}'] = (
          lambda name=name: torch_w.ask({'cmd': 'time', 'what': f'kernel:{name}', 'batch': 0, 'n': 1}))
  print(f'mlm: timing {list(fns)} × {rounds} rounds ...', flush=True)
  times = timing.interleaved(fns, rounds, calls=1, untimed=1)
  for w in [torch_w] + [w for w, _ in also.values()]:
    if w:
      w.close()
  med = {k: statistics.median(v) for k, v in times.items()}
  step_flops = bench_run._flops(jax_step.compiled)
  analytic = analytic_flops(backbone, tokens.shape[0], tokens.shape[1], head_positions,
                            jax_step.objective.head_hidden)
  kernel_rows = {}
  for name, (kind, dims) in kernels.items():
    flops = fns[f'jax_{name}_x{KERNEL_CALLS}'].flops
    gflops = lambda key: (flops * KERNEL_CALLS / med[key] / 1e9) if key in med else None
    j, t = gflops(f'jax_{name}_x{KERNEL_CALLS}'), gflops(f'torch_{name}_x{KERNEL_CALLS}')
    kernel_rows[name] = {'kind': kind, 'dims': list(dims), 'gflop': flops / 1e9,
                         'jax_gflops_per_s': round(j, 2), 'torch_gflops_per_s': None if t is None else round(t, 2),
                         'jax_time_over_torch': None if t is None else round(t / j, 4)}
  step_gflops = step_flops / med['jax_mlm_step'] / 1e9
  mm_gflops = matmul.flops * MATMUL_CALLS / med[f'matmul_{n_mm}_x{MATMUL_CALLS}'] / 1e9
  res = {
      'mlm_step_jax_over_torch': med['jax_mlm_step'] / med['torch_mlm_step'] if torch_w else None,
      'mlm_train_gflops_over_matmul_gflops': step_gflops / mm_gflops,
      'mlm_pretrain_tokens_per_s': tok_info['real_tokens_per_batch'] / med['jax_mlm_step'],
  }
  res = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}
  res['raw'] = {
      'quick': quick, 'rounds': rounds, 'batch': list(tokens.shape), 'model': jax_step.spec,
      'params': jax_step.num_params, 'optim': dict(config.optim), 'targets': TARGETS,
      'timings': {k: {'median_ms': round(1e3 * med[k], 3), 'min_ms': round(1e3 * min(v), 3), 'n': len(v)}
                  for k, v in times.items()},
      'flops': {'used': 'XLA cost analysis of the compiled JAX step', 'xla_step_flops': step_flops,
                'analytic_matmul_flops': analytic, 'xla_over_analytic': step_flops / analytic['total'],
                'step_gflops_per_s': round(step_gflops, 3), 'matmul_n': n_mm,
                'matmul_gflops_per_s': round(mm_gflops, 3)},
      'kernels': kernel_rows,
      'tokens': tok_info, 'jax_first_step_metrics': first, 'jax_compile_s': round(compile_s, 2),
      'torch': torch_info,
      'torch_also': {str(n): {**info, 'jax_over_this_torch': med['jax_mlm_step'] / med[f'torch_mlm_step_{n}_threads']}
                     for n, (_, info) in also.items()},
      'machine': report.machine(load0),
      'seconds': round(time.time() - started, 1),
  }
  return res


def markdown(res: dict[str, Any]) -> str:
  raw = res['raw']
  f, t = raw['flops'], raw['tokens']
  rows = [(f'`{k}`', 'n/a' if res[k] is None else f'{res[k]:.4g}', TARGETS[k]) for k in TOP_KEYS]
  kernel_keys = {f'{side}_{name}_x{KERNEL_CALLS}' for name in raw['kernels'] for side in ('jax', 'torch')}
  rows += [(f'{k} (median / min ms)', f'{v["median_ms"]:.1f} / {v["min_ms"]:.1f}', '') for k, v in raw['timings'].items()
           if k not in kernel_keys]
  rows += [('JAX step GFLOP/s (XLA count) vs matmul', f'{f["step_gflops_per_s"]:.1f} ({f["xla_step_flops"] / 1e9:.2f} '
            f'GFLOP/step; analytic matmuls {f["analytic_matmul_flops"]["total"] / 1e9:.2f}) vs {f["matmul_gflops_per_s"]:.1f}',
            ''),
           ('real tokens / batch', f'{t["real_tokens_per_batch"]:.0f} of {raw["batch"][0] * raw["batch"][1]} '
            f'({t["source"]})', '')]
  torch = raw['torch']
  torch_line = (f'PyTorch comparison skipped: {torch["skipped"]}' if torch.get('skipped') else
                f'PyTorch {torch["torch"]} eager, {torch["threads"]} threads, {torch["params"]:,} parameters '
                f'(JAX: {raw["params"]:,}).')
  for n, info in raw.get('torch_also', {}).items():
    torch_line += (f' Same rounds, torch with {n} thread(s): JAX / that step = {info["jax_over_this_torch"]:.3f} '
                   '(raw only; see the module docstring).')
  num = lambda x, fmt: 'n/a' if x is None else format(x, fmt)
  kernel_rows = [(name, f'{k["kind"]} {"×".join(map(str, k["dims"]))}', f'{k["jax_gflops_per_s"]:.1f}',
                  num(k['torch_gflops_per_s'], '.1f'), num(k['jax_time_over_torch'], '.3f'))
                 for name, k in raw['kernels'].items()]
  return (report.table(f'Masked-LM pretraining step, batch {raw["batch"][0]} × {raw["batch"][1]}, {raw["rounds"]} '
                       f'interleaved rounds, {raw["machine"]["cpu"]}, load average {raw["machine"]["loadavg_start"]} → '
                       f'{raw["machine"]["loadavg_end"]}', ('quantity', 'value', 'target'), rows)
          + '\n' + torch_line + '\n\n'
          + report.table('The step\'s matmul classes alone, same rounds (GFLOP/s; time ratio JAX / torch)',
                         ('class', 'GEMM (dims)', 'JAX', 'torch', 'JAX / torch time'), kernel_rows))


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--rounds', type=int, default=10)
  ap.add_argument('--quick', action='store_true', help='a tiny encoder, batch 8 × 16, synthetic tokens')
  ap.add_argument('--torch-python', default='', help='interpreter with torch (default $JAXTRANSFER_TORCH_PYTHON)')
  ap.add_argument('--torch-threads', type=int, default=0, help='torch.set_num_threads (default: every core)')
  ap.add_argument('--torch-also-threads', default='1' if (os.cpu_count() or 1) > 1 else '',
                  help='comma-separated thread counts of extra torch workers timed in the same rounds (raw only)')
  ap.add_argument('--shared-data', default='', help=f'default ${SHARED_ENV} or {SHARED_DEFAULT}')
  ap.add_argument('--out', default='runs/bench/mlm')
  a = ap.parse_args(argv)
  from experiments.benchmarks import run as bench_run
  from jaxtransfer import runtime
  runtime.configure()   # XLA flags and the allocator, before jax starts
  res = run(a.rounds, quick=a.quick, torch_python=a.torch_python or os.environ.get(bench_run.TORCH_ENV),
            torch_threads=a.torch_threads or None,
            torch_also_threads=tuple(int(x) for x in a.torch_also_threads.split(',') if x),
            shared_dir=a.shared_data or os.environ.get(SHARED_ENV) or SHARED_DEFAULT)
  report.write(a.out, 'mlm', res, markdown(res))


if __name__ == '__main__':
  main()
