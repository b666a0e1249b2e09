"""Benchmark: the own-photos workflow (issue #19) — head-only fine-tune of EfficientNet-Lite0 at 224×224,
before and after the automatic feature cache and memory-budgeted evaluation batches.

    python -m experiments.benchmarks.own_photos [--out=runs/bench/own_photos.json] [--steps=300]

What a user does with their photos, on a generated stand-in of the ants/bees folder: 2 classes, 246
training and 200 test images at 224×224 (PNG; a noisy striped background with one small disc or square
of a colour near the background's, at a random place and size: deterministic from --seed, learnable but
not trivially — a closed-form probe on Lite0 features scores ≈ 0.9), then
  jaxtransfer import-weights --workdir=<tmp>/lite0
  jaxtransfer finetune --config=experiments/configs/finetune.py --workdir=<tmp>/<variant> \
      --config.data='imagefolder:<tmp>/photos' --config.transfer.init_from=<tmp>/lite0 \
      --config.input.data_dir=<tmp>/tfds --config.train.steps=300 --config.train.batch_size=32 <variant flags>
with the variants
  before  --config.train.feature_cache=False --config.train.eval_batch_size=500 (the backbone's forward
          pass every step, evaluation 500 images at a time: the behaviour before issue #19)
  after   the defaults (features extracted once; evaluation/extraction batches from train.eval_memory_mb).
Each variant is its own `jaxtransfer` process, with its own empty JAX compilation cache (a new user's
first run), timed end to end (wall clock, process start to exit, compilation included); its peak resident
memory is the child's own `ru_maxrss` (`os.wait4`). The folder is prepared (TFDS array_record) and the
weights imported before either variant runs, untimed. The test accuracy is the run's final evaluation
(metrics.jsonl); `jaxtransfer evaluate` on each run's checkpoint is timed too and must agree.
Targets: after ≤ 2 GB peak RSS, before/after wall time ≥ 5.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'experiments', 'configs', 'finetune.py')
VARIANTS = {
    'before': ['--config.train.feature_cache=False', '--config.train.eval_batch_size=500'],
    'after': [],
}
CLASSES = ('disc', 'square')
TARGET_RSS_MB, TARGET_SPEEDUP = 2048, 5.0


def make_photos(root: str, per_class: dict[str, int], size: int = 224, seed: int = 0) -> dict[str, int]:
  """`root/<split>/<class>/<i>.png`: one coloured disc or square on a noisy textured background."""
  from PIL import Image, ImageDraw
  rng = np.random.default_rng(seed)
  counts = {}
  for split, n in per_class.items():
    for label, name in enumerate(CLASSES):
      folder = os.path.join(root, split, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(n):
        base = rng.uniform(40, 200, size=3)
        yy, xx = np.mgrid[0:size, 0:size]
        freq, phase = rng.uniform(0.05, 0.3), rng.uniform(0, 2 * np.pi)
        texture = 40 * np.sin(freq * (xx * np.cos(phase) + yy * np.sin(phase)))[..., None]
        pixels = np.clip(base + texture + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels)
        r = int(rng.integers(size // 24, size // 12))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        colour = tuple(int(c) for c in np.clip(base + rng.normal(0, 40, 3), 0, 255))
        box = (cx - r, cy - r, cx + r, cy + r)
        (ImageDraw.Draw(img).ellipse if label == 0 else ImageDraw.Draw(img).rectangle)(box, fill=colour)
        img.save(os.path.join(folder, f'{i:04d}.png'))
      counts[f'{split}/{name}'] = n
  return counts


def run(cmd: list[str], env: dict[str, str], log_path: str) -> dict[str, float]:
  """Run `cmd` to completion: wall seconds, the child's peak RSS (MB) and exit code; output to `log_path`."""
  with open(log_path, 'w') as log:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    raise SystemExit(f'{" ".join(cmd)} failed with exit code {proc.returncode}; see {log_path}')
  return {'wall_s': round(wall, 2), 'peak_rss_mb': round(usage.ru_maxrss / 1024, 1)}


def final_eval(workdir: str) -> dict[str, float]:
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  last = [l for l in lines if 'eval/accuracy' in l][-1]
  return {'accuracy': last['eval/accuracy'], 'loss': last['eval/loss'], 'count': last['eval/count']}


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument('--out', default='runs/bench/own_photos.json')
  p.add_argument('--tmp', default='', help='work directory (default: a new temporary directory)')
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--train_per_class', type=int, default=123)
  p.add_argument('--test_per_class', type=int, default=100)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--variants', default='before,after')
  a = p.parse_args(argv)
  tmp = a.tmp or tempfile.mkdtemp(prefix='own_photos_')
  bin_dir = os.path.dirname(sys.executable)
  jt = os.path.join(bin_dir, 'jaxtransfer')
  env = {**os.environ, 'PYTHONUNBUFFERED': '1'}

  photos = os.path.join(tmp, 'photos')
  t = time.perf_counter()
  counts = make_photos(photos, {'train': a.train_per_class, 'test': a.test_per_class}, seed=a.seed)
  setup = {'make_photos_s': round(time.perf_counter() - t, 2)}
  data = f'imagefolder:{photos}'
  tfds_dir = os.path.join(tmp, 'tfds')
  # Untimed set-up: the folder prepared once (both variants read the same prepared dataset) and the weights.
  prep = ('from jaxtransfer import runtime; runtime.configure("off"); from jaxtransfer.data import catalog; '
          f'[len(catalog.load({data!r}, s, data_dir={tfds_dir!r})) for s in ("train", "test")]')
  setup['prepare'] = run([sys.executable, '-c', prep], env, os.path.join(tmp, 'prepare.log'))
  lite0 = os.path.join(tmp, 'lite0')
  if not os.path.exists(os.path.join(lite0, 'checkpoints')):
    setup['import_weights'] = run([jt, 'import-weights', f'--workdir={lite0}'], env,
                                  os.path.join(tmp, 'import.log'))

  results = {}
  for name in a.variants.split(','):
    workdir = os.path.join(tmp, name)
    cache = os.path.join(tmp, f'jax_cache_{name}')    # a new user's first run: nothing compiled yet
    venv = {**env, 'JAXTRANSFER_JAX_CACHE': cache}
    cmd = [jt, 'finetune', f'--config={CONFIG}', f'--workdir={workdir}', f'--config.data={data}',
           f'--config.transfer.init_from={lite0}', f'--config.input.data_dir={tfds_dir}',
           f'--config.train.steps={a.steps}', f'--config.train.batch_size={a.batch_size}',
           f'--config.seed={a.seed}', *VARIANTS[name]]
    r = run(cmd, venv, os.path.join(tmp, f'{name}.log'))
    r['eval'] = final_eval(workdir)
    ev_log = os.path.join(tmp, f'{name}_evaluate.log')
    ev = run([jt, 'evaluate', f'--workdir={workdir}'], venv, ev_log)
    printed = dict(w.split('=', 1) for w in open(ev_log).read().split() if w.startswith(('accuracy=', 'count=')))
    r['evaluate_command'] = {**ev, **{k: float(v) for k, v in printed.items()}}
    log_text = open(os.path.join(tmp, f'{name}.log')).read()
    r['feature_cache_used'] = 'the frozen backbone runs once per example' in log_text
    r['command'] = ' '.join(cmd)
    results[name] = r
    print(name, json.dumps(r), flush=True)

  out = {'setup': setup, 'images': counts, 'steps': a.steps, 'batch_size': a.batch_size, 'variants': results,
         'tmp': tmp, 'targets': {'after_peak_rss_mb_max': TARGET_RSS_MB, 'speedup_min': TARGET_SPEEDUP}}
  if {'before', 'after'} <= set(results):
    b, f = results['before'], results['after']
    out['speedup_end_to_end'] = round(b['wall_s'] / f['wall_s'], 2)
    out['peak_rss_ratio'] = round(b['peak_rss_mb'] / f['peak_rss_mb'], 2)
    out['same_accuracy'] = abs(b['eval']['accuracy'] - f['eval']['accuracy']) < 1e-6
    out['targets_met'] = (f['peak_rss_mb'] <= TARGET_RSS_MB and out['speedup_end_to_end'] >= TARGET_SPEEDUP)
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, 'w') as fh:
    json.dump(out, fh, indent=1)
  print(json.dumps({k: v for k, v in out.items() if k != 'variants'}, indent=1))
  print('wrote', a.out)


if __name__ == '__main__':
  main()
