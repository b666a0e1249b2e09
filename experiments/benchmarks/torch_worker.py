"""PyTorch eager reference for `experiments.benchmarks.run`: the demo CNN's full training step with Adam.

Runs under a SEPARATE interpreter that has torch (never jaxtransfer's venv), e.g.

  python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
  JAXTRANSFER_TORCH_PYTHON=/tmp/torchvenv/bin/python python -m experiments.benchmarks.run --out=runs/bench

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
