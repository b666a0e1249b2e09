"""Shared by the experiments/multitask_*.py scripts: run a grid of multi-task configs over seeds through
THE training loop (`train.train`), and write results.md / results.json / PNG plots (mean ± std over seeds).

A finished run leaves `final.json` in its workdir and is not run again, so a script interrupted half-way
continues where it stopped.
"""

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import flags

from experiments.configs import multitask_scenes
from jaxtransfer import checkpoint, config, runtime, train

flags.DEFINE_string('pretrain', multitask_scenes.PRETRAIN,
                    'Glyph pretraining workdir (config.pretrain()); trained there first if it holds no checkpoint.')

log = logging.getLogger('experiments')


def setup() -> None:
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
  logging.getLogger('jaxtransfer').setLevel(logging.WARNING)
  logging.getLogger('absl').setLevel(logging.WARNING)
  runtime.configure()


def pretrained(stages: Sequence[int] | None = None, path: str | None = None) -> str:
  """The glyph pretraining workdir the scenes models start from (trained here if missing): the demo's
  (`--pretrain`) for the default CNN, or `path` for a CNN with other conv `stages` (widths)."""
  c = config.pretrain()
  if stages is not None and list(stages) != list(c.model.backbone['stages']):
    if path is None:
      raise ValueError(f'pretrained(stages={list(stages)}): a workdir for the non-default width is needed')
    c.model.backbone = {**c.model.backbone, 'stages': list(stages)}
  else:
    path = flags.FLAGS.pretrain
  path = os.path.abspath(path)
  if checkpoint.manager(os.path.join(path, 'checkpoints')).latest_step() is None:
    log.info('no pretraining checkpoint in %s: pretraining on glyphs first (stages %s)', path,
             c.model.backbone['stages'])
    train.train(c, path)
  return path


def run(config, workdir: str) -> dict[str, float] | None:
  """Final test metrics of one run (cached in `workdir/final.json`); None if the config has no
  training example (unknown_policy='drop' with no fully labelled example), recorded as such."""
  done = os.path.join(workdir, 'final.json')
  if os.path.exists(done):
    return json.load(open(done))['metrics']
  t0, c0 = time.time(), time.process_time()
  try:
    metrics = train.train(config, workdir).metrics
  except ValueError as e:
    if 'no fully labelled example' not in str(e):
      raise
    metrics = None
  os.makedirs(workdir, exist_ok=True)
  with open(done, 'w') as f:
    json.dump({'metrics': metrics, 'wall_s': time.time() - t0, 'cpu_s': time.process_time() - c0}, f)
  log.info('%s: mean AP %s (%.0f s)', workdir, f'{metrics["mean_ap"]:.4f}' if metrics else 'n/a',
           time.time() - t0)
  return metrics


def grid(cells: Sequence[tuple[str, Callable[[int], Any]]], seeds: int, workdir: str,
         key: str = 'mean_ap') -> dict[str, list[float | None]]:
  """{cell name: [metric per seed]} for `cells` = [(name, seed -> config)]."""
  out: dict[str, list[float | None]] = {}
  for name, make in cells:
    for seed in range(seeds):
      m = run(make(seed), os.path.join(workdir, name, f'seed_{seed}'))
      out.setdefault(name, []).append(None if m is None else float(m[key]))
  return out


def wall_seconds(workdir: str, name: str, seeds: int) -> list[float]:
  """The recorded wall-clock seconds of each seed's run of a grid cell (machine load included)."""
  return [json.load(open(os.path.join(workdir, name, f'seed_{s}', 'final.json')))['wall_s'] for s in range(seeds)]


def mean_std(values: Sequence[float | None]) -> tuple[float, float] | None:
  vals = [v for v in values if v is not None]
  return (float(np.mean(vals)), float(np.std(vals))) if vals else None


def fmt(values: Sequence[float | None], scale: float = 100.0) -> str:
  ms = mean_std(values)
  return 'n/a' if ms is None else f'{scale * ms[0]:.1f} ± {scale * ms[1]:.1f}'


def write(workdir: str, title: str, text: str, data: dict[str, Any]) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'# {title}\n\n{text}\n')
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(data, f, indent=1)
  print(text, flush=True)


def line_plot(path: str, xs: Sequence[Any], series: dict[str, Sequence[Sequence[float | None]]], xlabel: str,
              ylabel: str = 'mean AP (%)', title: str = '') -> None:
  """One line per series with ±std error bars; `series[name][i]` = per-seed values at xs[i]."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for name, per_x in series.items():
    pts = [(i, mean_std(v)) for i, v in enumerate(per_x)]
    pts = [(i, ms) for i, ms in pts if ms is not None]
    if pts:
      ax.errorbar([xs[i] for i, _ in pts], [100 * ms[0] for _, ms in pts], yerr=[100 * ms[1] for _, ms in pts],
                  marker='o', capsize=3, label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
