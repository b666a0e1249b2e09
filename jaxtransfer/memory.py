"""Batch sizes for evaluation and feature extraction from a memory budget, not a fixed number.

An inference batch of B examples costs memory in proportion to B: XLA's buffers for the activations
(`temp`) and results, the batch's own arguments, and the host pipeline's copies of the input (the batch
being assembled and the ones prefetched, `PIPELINE_COPIES`). For 28×28 digits that is a few KB per
example and any batch fits; for 224×224×3 images through EfficientNet-Lite0 it is several MB, and 500 at
a time pushed a head-only fine-tune past 6 GB resident. So the function is compiled once at a small batch,
XLA's `compiled.memory_analysis()` gives its bytes, and the batch is the largest that fits the budget:

    size = memory.batch_size(eval_step, (params, batch_stats), example, mesh, budget_mb=512)

The estimate is per example = (temp + output bytes) / probe batch + input bytes × (1 + `PIPELINE_COPIES`)
(the batch argument itself and the pipeline's copies). Dividing the whole temp by the probe batch counts batch-independent buffers as if they
grew with the batch, so the estimate errs on the large side (a smaller batch). The model's own parameters
are not part of the budget: they are resident whatever the batch size. Results do not depend on the batch
size (evaluation is per example; padding is masked out).
"""

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxtransfer import errors, sharding
from jaxtransfer.data import pipeline, preprocess as preprocess_lib

log = logging.getLogger('jaxtransfer')

MAX_BATCH = 500        # the largest automatic batch (the old fixed size): beyond it nothing gets faster
PROBE_BATCH = 8        # examples per data-axis device in the compile that measures the memory
# Host copies of an input batch alive at once: grain's prefetch buffer (pipeline.eval_batches' default 4)
# plus the batch being assembled (uint8 → float32 → normalised).
PIPELINE_COPIES = 5


def example_of(source: Sequence[Any], pre: preprocess_lib.Preprocess | None = None) -> dict[str, np.ndarray]:
  """One example of `source` as the eval pipeline hands it to a step (a batch of one, with 'mask')."""
  if not len(source):
    raise errors.DataError('cannot size evaluation batches for an empty dataset')
  example = next(pipeline.eval_batches(source, batch_size=1, preprocess=pre, num_threads=1, prefetch=1))
  # Text: the longest input a step can get (every bucket compiles; the longest costs the most memory).
  return pre.probe_example(example) if hasattr(pre, 'probe_example') else example


def per_example_bytes(fn: Callable[..., Any], args: tuple[Any, ...], example: Mapping[str, np.ndarray],
                      mesh: jax.sharding.Mesh, probe: int = PROBE_BATCH) -> float:
  """Estimated host bytes one more example of a batch costs `fn(*args, batch)` (module docstring).

  Compiled with `probe` examples per data-axis device, the batch split over `mesh` as the steps get it;
  XLA reports one device's buffers, and on a CPU host every device's buffers are in the same memory.
  """
  n = int(mesh.shape['data'])
  batch = {k: jax.ShapeDtypeStruct((probe * n, *np.shape(v)[1:]), np.asarray(v).dtype,
                                   sharding=sharding.batch_sharding(mesh)) for k, v in example.items()}
  jitted = fn if hasattr(fn, 'lower') else jax.jit(fn)
  analysis = jitted.lower(*args, batch).compile().memory_analysis()
  input_bytes = sum(np.asarray(v)[:1].nbytes for v in example.values())
  device = (analysis.temp_size_in_bytes + analysis.output_size_in_bytes) / probe
  return device + input_bytes * (1 + PIPELINE_COPIES)


def batch_size(fn: Callable[..., Any], args: tuple[Any, ...], example: Mapping[str, np.ndarray],
               mesh: jax.sharding.Mesh, *, budget_mb: float, cap: int = MAX_BATCH) -> int:
  """The largest batch (a multiple of `data_multiple(mesh)`, at most `cap`, at least one per device) whose
  estimated memory fits `budget_mb`; `fn(*args, batch)` is compiled once at `PROBE_BATCH` per device."""
  if budget_mb <= 0:
    raise errors.ConfigError(f'train.eval_memory_mb: expected a positive budget in MB, got {budget_mb}')
  per = per_example_bytes(fn, args, example, mesh)
  size = fitting(per, budget_mb, data_multiple(mesh), cap)
  log.info('batch size %d from the memory budget: ~%.1f KB per example, budget %g MB', size, per / 2**10, budget_mb)
  return size


def fitting(per_example: float, budget_mb: float, multiple: int = 1, cap: int = MAX_BATCH) -> int:
  """The largest multiple of `multiple` up to `cap` whose `per_example` bytes fit `budget_mb` (at least
  `multiple`: one example per device, whatever the budget)."""
  fits = int(budget_mb * 2**20 // max(per_example, 1.0))
  return max(multiple, min(cap, fits) // multiple * multiple)


def data_multiple(mesh: jax.sharding.Mesh) -> int:
  """What a batch size must be a multiple of: the data-axis devices and the processes."""
  return math.lcm(int(mesh.shape['data']), jax.process_count())


def eval_batch_size(train_config: Any, fn: Callable[..., Any], args: tuple[Any, ...], source: Sequence[Any],
                    mesh: jax.sharding.Mesh, pre: preprocess_lib.Preprocess | None = None) -> int:
  """`train.eval_batch_size` when set (> 0), else (0 = auto) the largest batch that fits
  `train.eval_memory_mb` (`batch_size`) for `fn(*args, batch)` on examples of `source`.

  Auto never exceeds the split (rounded up to `data_multiple`): a 153-example split is not padded to 500
  rows; a split no larger than the probe batch needs no probe.
  """
  requested = int(train_config.get('eval_batch_size', 0) or 0)
  if requested > 0:
    return requested
  multiple = data_multiple(mesh)
  whole = max(multiple, -(-len(source) // multiple) * multiple)
  if whole <= PROBE_BATCH * multiple:
    return whole
  budget = float(train_config.get('eval_memory_mb', 512))
  return batch_size(fn, args, example_of(source, pre), mesh, budget_mb=budget, cap=min(MAX_BATCH, whole))
