"""PyTorch eager reference for `experiments.benchmarks.run`: the demo CNN's full training step with Adam, and
the masked-LM pretraining step of `experiments.benchmarks.mlm`.

Runs as its own process under an interpreter that has torch — jaxtransfer's venv with the `convert` extra
(`pip install -c constraints.txt -e '.[convert]'`: the pinned CPU wheel, what CI installs) or a separate venv:

  JAXTRANSFER_TORCH_PYTHON=.venv/bin/python python -m experiments.benchmarks.run --out=runs/bench

It imports neither jax nor jaxtransfer. The parent starts it once and then talks to it over stdin/stdout,
one JSON object per line, so that torch steps are timed in the same rounds as the JAX steps (the two never
run at the same time: the worker only computes while the parent waits for its answer):

  → {"cmd": "setup", "stages": [32, 64], "dense": [256], "num_outputs": 62, "batches": [32, 128]}
  ← {"ok": true, "torch": "2.13.0+cpu", "threads": 2, "interop_threads": 2, "warmed_up": true}
  → {"cmd": "time", "batch": 128, "what": "step", "n": 1}       # 'step' (full Adam step) or 'forward'
  ← {"ok": true, "times": [0.112]}
  → {"cmd": "quit"}

The architecture mirrors `jaxtransfer.models.backbones.CNN` + `LinearHead`: per stage two 3×3 'SAME'
convolutions with bias and ReLU then 2×2 max-pool, then Dense+ReLU blocks, then the linear head; softmax
cross-entropy; Adam(lr=1e-3). Layout is torch's native NCHW (what a PyTorch user would run).

Masked-LM pretraining step (`experiments.benchmarks.mlm`), the same protocol:

  → {"cmd": "setup_mlm", "tokens": [[...], ...], "vocab_size": 8000, "max_len": 64, "width": 128,
     "num_layers": 4, "num_heads": 4, "mlp_dim": 512, "dropout": 0.1, "head_hidden": 0, "pad_id": 0,
     "mask_rate": 0.15, "mask_token": 0.8, "random_token": 0.1, "mask_id": 4, "special_ids": [0, 1, 2, 3, 4],
     "lr": 1e-3, "warmup_steps": 300, "total_steps": 4000, "weight_decay": 0.01, "grad_clip": 1.0,
     "b1": 0.9, "b2": 0.999, "eps": 1e-8}
  ← {"ok": true, "torch": ..., "threads": 2, "params": 2190720, "loss": 9.1}
  → {"cmd": "time", "what": "mlm_step", "batch": 0, "n": 1}
  → {"cmd": "mlm_loss", "state": {name: nested list}, "tokens": [[...]], "positions": [[...]], "valid": [[...]],
     "targets": [[...]]}
  ← {"ok": true, "loss": 8.99, "correct": 3.0}     # eval mode (no dropout), given weights: the equivalence check

The step's matmul classes (`mlm.kernel_classes`), each timed alone as `calls` back-to-back products of fixed
random operands (kinds as `mlm.GEMM_DIMENSIONS`: 'nn' a·b — here `F.linear` on a weight stored (n, k), as
`nn.Linear` stores it —, 'tn' aᵀ·b, 'bnt' a·bᵀ per batch):

  → {"cmd": "setup_kernels", "calls": 10, "kernels": {"attention": ["bnt", [512, 64, 32], [512, 64, 32]], ...}}
  → {"cmd": "time", "what": "kernel:attention", "batch": 0, "n": 1}
  → {"cmd": "gemm", "kind": "tn", "a": [[...]], "b": [[...]]}
  ← {"ok": true, "value": [[...]]}                 # the product of given operands (the tests' check)

`MLMEncoder` mirrors `jaxtransfer.models.transformer.TransformerEncoder` (layout 'pre_ln', token stem) +
`heads.MLMHead`: token embedding + learned positions, dropout; per layer x + Drop(Out(Attn(LN(x)))) and
x + Drop(MLP(LN(x))) with LayerNorm ε 1e-6, separate q/k/v/out projections, a key-padding mask and tanh-GELU;
a final LayerNorm without scale and bias; the head Dense + exact GELU + LayerNorm ε 1e-12 + output
projection on the K = ceil(rate × T) gathered positions of each row (BERT's `max_predictions_per_seq`).
Attention is `F.scaled_dot_product_attention` (what a PyTorch 2 user writes). The step masks like
`jaxtransfer.objectives.mlm.select_and_corrupt` (drawn every step: exactly round(rate × real tokens) positions
per row, uniform among the real non-special ones via top-k of random scores; 80/10/10), takes the mean
cross-entropy over the valid gathered positions and their accuracy, clips the global gradient norm and steps
AdamW (decoupled weight decay on every parameter, as `optax.adamw`) at the warm-up + cosine learning rate of
step s — the project's optimizer for that config.
"""

import json
import sys
import time


def build(torch, stages, dense, num_outputs, in_hw=28, in_ch=1):
  nn = torch.nn
  layers, ch, hw = [], in_ch, in_hw
  for f in stages:
    layers += [nn.Conv2d(ch, f, 3, padding=1), nn.ReLU(), nn.Conv2d(f, f, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    ch, hw = f, hw // 2
  layers.append(nn.Flatten())
  width = ch * hw * hw
  for f in dense:
    layers += [nn.Linear(width, f), nn.ReLU()]
    width = f
  layers.append(nn.Linear(width, num_outputs))
  return nn.Sequential(*layers)


def build_mlm(torch, vocab_size, max_len, width, num_layers, num_heads, mlp_dim, dropout, head_hidden=0):
  """The pre-LN Transformer encoder + MLM head of the module docstring (torch.nn.Module)."""
  nn, F = torch.nn, torch.nn.functional

  def linear(n_in, n_out):
    lin = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.norm_attention, self.norm_mlp = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
      self.query, self.key, self.value, self.out = (linear(width, width) for _ in range(4))
      self.mlp_in, self.mlp_out = linear(width, mlp_dim), linear(mlp_dim, width)
      self.drop = nn.Dropout(dropout)

    def forward(self, x, attn_mask):
      b, t, _ = x.shape
      y = self.norm_attention(x)
      q, k, v = (p(y).view(b, t, num_heads, width // num_heads).transpose(1, 2)
                 for p in (self.query, self.key, self.value))
      a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)      # (B, H, T, Dh)
      x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, t, width)))
      return x + self.drop(self.mlp_out(F.gelu(self.mlp_in(self.norm_mlp(x)), approximate='tanh')))

  class MLMEncoder(nn.Module):
    def __init__(self):
      super().__init__()
      self.token_embed = nn.Embedding(vocab_size, width)
      self.position_embed = nn.Parameter(torch.empty(max_len, width))
      nn.init.normal_(self.token_embed.weight, std=0.02)
      nn.init.normal_(self.position_embed, std=0.02)
      self.drop = nn.Dropout(dropout)
      self.blocks = nn.ModuleList(Block() for _ in range(num_layers))
      self.final_norm = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
      hidden = head_hidden or width
      self.transform, self.norm = linear(width, hidden), nn.LayerNorm(hidden, eps=1e-12)
      self.out = linear(hidden, vocab_size)

    def forward(self, tokens, pad_id, positions):
      t = tokens.shape[1]
      attn_mask = (tokens != pad_id)[:, None, None, :]                   # keys: real tokens only
      x = self.drop(self.token_embed(tokens) + self.position_embed[:t])
      for block in self.blocks:
        x = block(x, attn_mask)
      x = self.final_norm(x)
      x = torch.gather(x, 1, positions[..., None].expand(-1, -1, x.shape[-1]))   # (B, K, D): the head's rows
      return self.out(self.norm(F.gelu(self.transform(x))))

  return MLMEncoder()


def gemm(torch, kind, a, b):
  """One GEMM class (module docstring) as the PyTorch step computes it: 'nn' through `F.linear` with the
  weight stored (n, k), as `nn.Linear` keeps it (b given (k, n) is passed as its transposed view)."""
  if kind == 'nn':
    return torch.nn.functional.linear(a, b.t())
  if kind == 'tn':
    return a.t() @ b
  if kind == 'bnt':
    return torch.bmm(a, b.transpose(1, 2))
  raise ValueError(f'unknown GEMM kind {kind!r}')


def kernels_setup(torch, msg):
  """{'kernel:<name>': fn(batch)} running each class `calls` times on fixed random operands."""
  torch.manual_seed(0)
  calls, fns = int(msg['calls']), {}
  for name, (kind, shape_a, shape_b) in msg['kernels'].items():
    a = torch.randn(*shape_a)
    b = torch.randn(*shape_b[::-1]).t() if kind == 'nn' else torch.randn(*shape_b)   # nn.Linear's (n, k) storage
    gemm(torch, kind, a, b)    # warm-up
    fns[f'kernel:{name}'] = lambda _batch, kind=kind, a=a, b=b: [gemm(torch, kind, a, b) for _ in range(calls)]
  return fns


def mlm_setup(torch, msg):
  """(step(batch) → loss, loss_of(msg) → dict, info) for a `setup_mlm` message (module docstring)."""
  import math
  F = torch.nn.functional
  torch.manual_seed(0)
  model = build_mlm(torch, msg['vocab_size'], msg['max_len'], msg['width'], msg['num_layers'], msg['num_heads'],
                    msg['mlp_dim'], msg['dropout'], msg.get('head_hidden', 0))
  opt = torch.optim.AdamW(model.parameters(), lr=msg['lr'], betas=(msg['b1'], msg['b2']), eps=msg['eps'],
                          weight_decay=msg['weight_decay'])
  tokens = torch.tensor(msg['tokens'], dtype=torch.long)
  pad_id, mask_id = int(msg['pad_id']), int(msg['mask_id'])
  special = torch.tensor(sorted(msg['special_ids']), dtype=torch.long)
  ordinary = torch.tensor([i for i in range(msg['vocab_size']) if i not in set(msg['special_ids'])], dtype=torch.long)
  lr, warmup, total = float(msg['lr']), int(msg['warmup_steps']), int(msg['total_steps'])
  k = max(1, math.ceil(msg['mask_rate'] * tokens.shape[1]))
  count = [0]

  def lr_at(s):    # optax.warmup_cosine_decay_schedule(0, lr, warmup, total), end value 0
    if s < warmup:
      return lr * s / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * min(s - warmup, total - warmup) / max(total - warmup, 1)))

  def step(_batch=None):
    model.train()
    eligible = ~torch.isin(tokens, special)
    real = eligible.sum(1)
    n = torch.where(real > 0, torch.clamp(torch.round(msg['mask_rate'] * real), 1, k), 0)
    scores = torch.where(eligible, torch.rand(tokens.shape), -1.0)
    positions = torch.topk(scores, k, dim=1).indices                          # (B, K)
    valid = torch.arange(k)[None, :] < n[:, None]
    selected = torch.zeros_like(eligible).scatter(1, positions, valid)
    how = torch.rand(tokens.shape)
    random_ids = ordinary[torch.randint(0, len(ordinary), tokens.shape)]
    corrupted = torch.where(how < msg['mask_token'], torch.full_like(tokens, mask_id),
                            torch.where(how < msg['mask_token'] + msg['random_token'], random_ids, tokens))
    inputs = torch.where(selected, corrupted, tokens)
    targets = torch.where(valid, torch.gather(tokens, 1, positions), torch.full_like(positions, -100))
    for g in opt.param_groups:
      g['lr'] = lr_at(count[0])
    opt.zero_grad(set_to_none=True)
    logits = model(inputs, pad_id, positions)                                  # (B, K, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    if msg['grad_clip']:
      torch.nn.utils.clip_grad_norm_(model.parameters(), msg['grad_clip'])
    opt.step()
    count[0] += 1
    with torch.no_grad():
      accuracy = (logits.argmax(-1) == targets)[valid].float().mean()
    return loss.item(), accuracy.item()

  def loss_of(m):
    """Eval-mode loss on given weights and a given corruption (module docstring: the equivalence check)."""
    state = {k: torch.tensor(v, dtype=torch.float32) for k, v in m['state'].items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    toks = torch.tensor(m['tokens'], dtype=torch.long)
    pos = torch.tensor(m['positions'], dtype=torch.long)
    valid = torch.tensor(m['valid'], dtype=torch.bool)
    tgt = torch.tensor(m['targets'], dtype=torch.long)
    with torch.no_grad():
      logits = model(toks, pad_id, pos)
      loss = F.cross_entropy(logits[valid], tgt[valid])
      correct = (logits.argmax(-1) == tgt)[valid].sum()
    return {'loss': loss.item(), 'correct': float(correct.item())}

  first = step()
  for _ in range(2):      # warm-up: allocator, thread pool
    step()
  info = {'params': sum(p.numel() for p in model.parameters()), 'loss': first[0],
          'state_names': sorted(model.state_dict())}
  return step, loss_of, info


def main() -> None:
  import torch
  if len(sys.argv) > 1 and sys.argv[1].isdigit():
    torch.set_num_threads(int(sys.argv[1]))
  state = {}

  def reply(obj):
    sys.stdout.write(json.dumps(obj) + '\n')
    sys.stdout.flush()

  for line in sys.stdin:
    msg = json.loads(line)
    cmd = msg.get('cmd')
    try:
      if cmd == 'setup':
        torch.manual_seed(0)
        model = build(torch, msg['stages'], msg['dense'], msg['num_outputs'])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        data = {b: (torch.rand(b, 1, 28, 28), torch.randint(0, msg['num_outputs'], (b,))) for b in msg['batches']}

        def step(b):
          x, y = data[b]
          opt.zero_grad(set_to_none=True)
          loss = loss_fn(model(x), y)
          loss.backward()
          opt.step()
          return loss.item()

        def forward(b):
          with torch.no_grad():
            return model(data[b][0]).sum().item()

        state.update(step=step, forward=forward)
        for b in msg['batches']:
          for _ in range(3):
            step(b)
            forward(b)
        reply({'ok': True, 'torch': torch.__version__, 'threads': torch.get_num_threads(),
               'interop_threads': torch.get_num_interop_threads(), 'warmed_up': True})
      elif cmd == 'setup_mlm':
        step, loss_of, info = mlm_setup(torch, msg)
        state.update(mlm_step=step, mlm_loss=loss_of)
        reply({'ok': True, 'torch': torch.__version__, 'threads': torch.get_num_threads(),
               'interop_threads': torch.get_num_interop_threads(), **info})
      elif cmd == 'setup_kernels':
        state.update(kernels_setup(torch, msg))
        reply({'ok': True})
      elif cmd == 'gemm':
        out = gemm(torch, msg['kind'], torch.tensor(msg['a'], dtype=torch.float32),
                   torch.tensor(msg['b'], dtype=torch.float32))
        reply({'ok': True, 'value': out.tolist()})
      elif cmd == 'mlm_loss':
        reply({'ok': True, **state['mlm_loss'](msg)})
      elif cmd == 'time':
        fn = state[msg.get('what', 'step')]
        times = []
        for _ in range(int(msg.get('n', 1))):
          t0 = time.perf_counter()
          fn(msg['batch'])
          times.append(time.perf_counter() - t0)
        reply({'ok': True, 'times': times})
      elif cmd == 'quit':
        reply({'ok': True})
        return
      else:
        reply({'ok': False, 'error': f'unknown command {cmd!r}'})
    except Exception as e:  # report, keep serving: the parent decides
      reply({'ok': False, 'error': f'{type(e).__name__}: {e}'})


if __name__ == '__main__':
  main()
