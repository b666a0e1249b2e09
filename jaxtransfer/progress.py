"""What a run reports while it goes: periodic progress lines (rate, ETA) and metric files.

Metrics go to `<workdir>/metrics.jsonl` (one JSON object per write: {"step": …, "<name>": value}) and to
TensorBoard event files under `<workdir>/tb/` (tensorboardX: no TensorFlow needed). Only process 0 writes.
"""

import datetime
import json
import logging
import os
import time

import jax

log = logging.getLogger('jaxtransfer')


class MetricWriter:
  """Appends scalars to metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if self._active:
      from tensorboardX import SummaryWriter  # Imported lazily: it pulls in protobuf.
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._active:
      return
    with open(self._path, 'a') as f:
      f.write(json.dumps({'step': step, **{k: float(v) for k, v in scalars.items()}}) + '\n')
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class ProgressLog:
  """Logs `step/total`, the given metrics, steps/s and ETA every `every` steps (and at the last step)."""

  def __init__(self, start: int, total: int, every: int):
    self._start, self._total, self._every = start, total, max(every, 1)
    self._t0 = time.perf_counter()

  def due(self, step: int) -> bool:
    return step % self._every == 0 or step == self._total

  def log(self, step: int, metrics: dict[str, float]) -> None:
    elapsed = time.perf_counter() - self._t0
    rate = (step - self._start) / max(elapsed, 1e-9)
    eta = datetime.timedelta(seconds=round((self._total - step) / max(rate, 1e-9)))
    shown = ' '.join(f'{k.split("/")[-1]} {v:.4f}' for k, v in metrics.items())
    log.info('step %d/%d %s | %.1f steps/s, ETA %s', step, self._total, shown, rate, eta)
