"""Host input pipelines over random-access sources, built with `grain.MapDataset`.

    src = catalog.load('glyphs', 'train')
    for batch in train_batches(src, batch_size=128, seed=0, start_step=step):
      ...   # {'image': float32 (B, H, W, C) in [0, 1], 'label': int32 (B,)}
    for batch in eval_batches(catalog.load('glyphs', 'test'), batch_size=256):
      ...   # plus 'mask': float32 (B,), 0 on padding in the last batch

Determinism: the training stream is a pure function of (seed, indices, batch_size): the
global element at position j of the stream is example `perm_e(j mod n)` of epoch
e = j // n, with a different seeded permutation per epoch (grain's shuffle folds the epoch
into the seed). Batch s is positions [s*B, (s+1)*B), so batches span epoch boundaries and
a dataset smaller than one batch works. Resuming is random access at step `start_step`
-- nothing is replayed.

Multi-host: with `process_count > 1` every global batch of `batch_size` is split into
`process_count` contiguous slices and process `process_index` gets its slice (its batches
have batch_size // process_count rows). With process_count=1 nothing changes.

Prefetching: `to_iter_dataset(grain.ReadOptions(num_threads, prefetch_buffer_size))` reads
and assembles whole batches in background threads, so the host work overlaps the device
step. `worker_count > 0` moves that into grain worker processes (needs absl flags marked
as parsed; done here if nobody parsed them).

Preprocessing (`preprocess=Preprocess(...)`, see preprocess.py, built from config.input by
`preprocess.from_config`): resize / crop / flip per example, normalisation per batch. Training
augmentation draws from grain's `random_map`, whose generator for element j is seeded by (seed, j)
— j being the position in the (shuffled, repeated) stream — so batch s is still a pure function of
(seed, s) and a resumed run sees the same augmented images. Evaluation is deterministic (centre crop).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

import functools

import grain
import numpy as np

from jaxtransfer.data.preprocess import Preprocess

Batch = dict[str, np.ndarray]


def num_examples(source: Sequence[Any]) -> int:
  return len(source)


class _Subset:
  """Random-access view `source[indices[i]]` (picklable, for grain workers)."""

  def __init__(self, source: Sequence[Any], indices: np.ndarray):
    self._source = source
    self._indices = np.asarray(indices, dtype=np.int64)
    if self._indices.ndim != 1:
      raise ValueError(f'indices must be 1-D, got shape {self._indices.shape}')
    n = len(source)
    if len(self._indices) and (self._indices.min() < 0 or self._indices.max() >= n):
      raise IndexError(f'indices out of range for a source of {n} examples')

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> Any:
    return self._source[int(self._indices[i])]

  def __getitems__(self, keys: Sequence[int]) -> Sequence[Any]:
    ids = [int(self._indices[k]) for k in keys]
    if hasattr(self._source, '__getitems__'):
      return self._source.__getitems__(ids)
    return [self._source[i] for i in ids]


class _PaddedWithMask:
  """Elements 0..n-1 of `source` with mask 1, then zero-filled padding with mask 0."""

  def __init__(self, source: Sequence[Any], padded_len: int):
    self._source, self._n, self._len = source, len(source), padded_len
    self._pad = None

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, Any]:
    if i < self._n:
      return {**self._source[i], 'mask': np.float32(1.0)}
    if self._pad is None:  # every feature zero-filled (multi-task label arrays included)
      ex = self._source[0]
      self._pad = {**{k: np.zeros_like(np.asarray(v)) for k, v in ex.items()}, 'mask': np.float32(0.0)}
    return self._pad


class _HostSlice:
  """Process `index`'s share of every global batch: element k of this host is global
  element (k // b) * B + index * b + k % b, with b = B // count."""

  def __init__(self, parent: Sequence[Any], global_batch: int, index: int, count: int):
    self._parent, self._B, self._b, self._i = parent, global_batch, global_batch // count, index
    self._len = (len(parent) // global_batch) * self._b if len(parent) < sys.maxsize else sys.maxsize

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, k: int) -> Any:
    step, r = divmod(int(k), self._b)
    return self._parent[step * self._B + self._i * self._b + r]


def _host_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, {process_count})')
  if batch_size % process_count:
    raise ValueError(f'global batch_size={batch_size} is not divisible by '
                     f'process_count={process_count}')
  return batch_size // process_count


def _to_model_inputs(batch: dict[str, np.ndarray], preprocess: Preprocess | None = None) -> Batch:
  image = np.asarray(batch['image'])
  if np.issubdtype(image.dtype, np.integer):
    image = image.astype(np.float32) * np.float32(1.0 / 255.0)
  else:
    image = image.astype(np.float32)
  if preprocess is not None:
    image = preprocess.normalize_batch(image)
  out = {'image': image}
  if 'label' in batch:
    out['label'] = np.asarray(batch['label']).astype(np.int32)
  if 'mask' in batch:
    out['mask'] = np.asarray(batch['mask'], dtype=np.float32)
  # Any other feature (multi-task label arrays such as 'labels', 'true_labels', 'count') is carried
  # along: integers as int32, floats as float32 (non-numeric features, e.g. file names, are dropped).
  for k, v in batch.items():
    v = np.asarray(v)
    if k not in out and k != 'image' and v.dtype.kind in 'biuf':
      out[k] = v.astype(np.float32) if v.dtype.kind == 'f' else v.astype(np.int32)
  return out


def _shuffle_seed(seed: int) -> int:
  # Hash the user seed so seeds s and s+1 do not share epochs (grain uses seed + epoch).
  return int(np.random.SeedSequence([int(seed), 0x6A78]).generate_state(1)[0])


def _iterate(ds: grain.MapDataset, num_threads: int, prefetch: int,
             worker_count: int) -> Iterator[Batch]:
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                               prefetch_buffer_size=prefetch))
  if worker_count > 0:
    from absl import flags  # grain workers read absl flags

    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(it_ds)


def train_batches(source: Sequence[Any], *, batch_size: int, seed: int,
                  start_step: int = 0, indices: np.ndarray | None = None,
                  num_threads: int = 2, prefetch: int = 4, worker_count: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  preprocess: Preprocess | None = None) -> Iterator[Batch]:
  """Infinite shuffled training batches; batch s depends only on (seed, s, indices).

  Args:
    source: random-access source of {'image': uint8 (H, W, C), 'label': int}.
    batch_size: global batch size (each process gets batch_size // process_count rows).
    seed: shuffling seed; every epoch is shuffled differently.
    start_step: index of the first batch to yield (resume without replaying).
    indices: optional subset of `source` (e.g. from `fewshot.k_per_class_indices`).
    num_threads, prefetch: grain read threads and prefetch buffer (in batches).
    worker_count: grain worker processes (0 = threads only).
    process_index, process_count: this host's slice of every global batch.
    preprocess: optional resize / random crop / flip / normalisation (module docstring).

  Yields:
    {'image': float32 (b, H, W, C) in [0, 1] (normalised if `preprocess` says so), 'label': int32 (b,)}.
  """
  b = _host_batch_size(batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  src = source if indices is None else _Subset(source, indices)
  if len(src) == 0:
    raise ValueError('cannot draw training batches from an empty dataset')
  ds = grain.MapDataset.source(src).shuffle(seed=_shuffle_seed(seed)).repeat()
  if preprocess is not None and not preprocess.is_identity:
    # Per-position generators: element j of the stream is augmented with rng(seed, j).
    ds = ds.random_map(preprocess.train_example,
                       seed=int(np.random.SeedSequence([int(seed), 0x6175]).generate_state(1)[0]))
  if process_count > 1:
    ds = grain.MapDataset.source(_HostSlice(ds, batch_size, process_index, process_count))
  ds = ds.batch(b, drop_remainder=True).map(functools.partial(_to_model_inputs, preprocess=preprocess))
  return _iterate(ds[start_step:], num_threads, prefetch, worker_count)


def eval_batches(source: Sequence[Any], *, batch_size: int,
                 indices: np.ndarray | None = None, num_threads: int = 2,
                 prefetch: int = 4, worker_count: int = 0, process_index: int = 0,
                 process_count: int = 1, preprocess: Preprocess | None = None) -> Iterator[Batch]:
  """Every example exactly once, in order; the last batch is zero-padded to batch_size.

  Yields:
    {'image': float32 (b, H, W, C), 'label': int32 (b,), 'mask': float32 (b,)}, mask 1
    for real examples and 0 for padding (every batch carries 'mask'). With several
    processes, each gets its slice of every global batch; summing masked metrics over
    processes counts every example once.
  """
  b = _host_batch_size(batch_size, process_index, process_count)
  src = source if indices is None else _Subset(source, indices)
  padded = -(-len(src) // batch_size) * batch_size
  ds = grain.MapDataset.source(_PaddedWithMask(src, padded))
  if preprocess is not None and not preprocess.is_identity:
    ds = ds.map(preprocess.eval_example)  # deterministic: resize, centre crop (padding rows included)
  if process_count > 1:
    ds = grain.MapDataset.source(_HostSlice(ds, batch_size, process_index, process_count))
  ds = ds.batch(b, drop_remainder=True).map(functools.partial(_to_model_inputs, preprocess=preprocess))
  return _iterate(ds, num_threads, prefetch, worker_count)
