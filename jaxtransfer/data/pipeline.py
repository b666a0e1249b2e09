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

Batches, not examples, are grain's elements: batch s is read from the source with one `__getitems__`
call (array_record reads a batch in one go) or gathered from memory — a source whose examples fit in
`cache_bytes` is read once and kept as arrays (a few-shot subset, the 50k glyphs). Per-example grain
transformations were much slower, above all for small subsets (an epoch per few elements); numbers in
BUILD_NOTES.md.

Prefetching: `to_iter_dataset(grain.ReadOptions(num_threads, prefetch_buffer_size))` assembles
whole batches in background threads, so the host work overlaps the device step. `worker_count > 0`
moves that into grain worker processes (needs absl flags marked as parsed; done here if nobody
parsed them).

Preprocessing (`preprocess=Preprocess(...)`, see preprocess.py, built from config.input by
`preprocess.from_config`): resize / crop / flip per example, normalisation per batch. Text datasets
(a 'text' feature) need `preprocess=text.inputs.TextInputs(...)`: each batch's texts become 'tokens'
(int32 (B, T), padded per batch to one of a few bucket lengths); `group_by_length=G` deals them in
batches of like token counts, G batches at a time (`_TrainStream`), so that fewer batches pad to the
longest bucket (the masked-LM pretraining: BUILD_NOTES). Training
augmentation of element j (its position in the shuffled, repeated stream) draws from a generator
seeded by (seed, j), so batch s is still a pure function of (seed, s) and a resumed run sees the same
augmented images. Evaluation is deterministic (centre crop).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jaxtransfer import errors
from jaxtransfer.data.preprocess import Preprocess

Batch = dict[str, np.ndarray]


def num_examples(source: Sequence[Any]) -> int:
  return len(source)


def _host_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
  if batch_size < 1:
    raise errors.ConfigError(f'batch_size must be >= 1, got {batch_size}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, {process_count})')
  if batch_size % process_count:
    raise errors.ConfigError(f'global batch_size={batch_size} is not divisible by '
                             f'process_count={process_count}')
  return batch_size // process_count


def _to_model_inputs(batch: dict[str, np.ndarray], preprocess: Preprocess | Any = None) -> Batch:
  if 'text' in batch:   # text: `preprocess` is a text.inputs.TextInputs (tokenizer + padding buckets)
    if not hasattr(preprocess, 'tokens'):
      raise errors.DataError('a text dataset needs a tokenizer to make model inputs (text.tokenizer, or a '
                             'transfer.init_from checkpoint that holds one)')
    out = {'tokens': preprocess.tokens(batch['text'])}
  else:
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
    if k not in out and k not in ('image', 'text') and v.dtype.kind in 'biuf':
      out[k] = v.astype(np.float32) if v.dtype.kind == 'f' else v.astype(np.int32)
  return out




CACHE_BYTES = 256 * 2**20   # sources (or subsets) up to this size are read once and kept in memory


def _read(source: Sequence[Any], ids: Sequence[int]) -> list[Any]:
  ids = [int(i) for i in ids]
  if hasattr(source, '__getitems__'):
    return list(source.__getitems__(ids))
  return [source[i] for i in ids]


def _stack(examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  return {k: np.stack([np.asarray(ex[k]) for ex in examples]) for k in examples[0]}


class _Examples:
  """Examples `ids[p]` of `source` by position p: from memory when they fit in `cache_bytes`."""

  def __init__(self, source: Sequence[Any], ids: np.ndarray, cache_bytes: int):
    self._source, self._ids = source, ids
    self._arrays = None
    if not len(ids):
      return
    size = sum(np.asarray(v).nbytes for v in _read(source, ids[:1])[0].values())
    if size * len(ids) <= cache_bytes:
      chunks = [_stack(_read(source, ids[i:i + 4096])) for i in range(0, len(ids), 4096)]
      self._arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

  def __len__(self) -> int:
    return len(self._ids)

  def batch(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    if self._arrays is not None:
      return {k: v[positions] for k, v in self._arrays.items()}
    return _stack(_read(self._source, self._ids[positions]))

  def examples(self, positions: np.ndarray) -> list[dict[str, Any]]:
    b = self.batch(positions)
    return [{k: v[i] for k, v in b.items()} for i in range(len(positions))]


def _subset_ids(source: Sequence[Any], indices: np.ndarray | None) -> np.ndarray:
  n = len(source)
  if indices is None:
    return np.arange(n, dtype=np.int64)
  ids = np.asarray(indices, dtype=np.int64)
  if ids.ndim != 1:
    raise ValueError(f'indices must be 1-D, got shape {ids.shape}')
  if len(ids) and (ids.min() < 0 or ids.max() >= n):
    raise IndexError(f'indices out of range for a source of {n} examples')
  return ids


class _TrainStream:
  """Random access to this host's rows of global training batch s (picklable, for grain workers).

  Global position j holds subset element perm_e(j mod n), e = j // n, with one seeded permutation per
  epoch; this host's rows of batch s are positions s·B + [lo, hi). With `group` G > 0 (text only) the
  positions of batches [wG, (w+1)G) — window w — are sorted by their texts' token counts (stable), cut into
  G batches of like lengths and dealt in a seeded order: batch s = wG + c holds the sorted window's chunk
  π_w(c). Every position is still used once, so epochs hold every example once, and batch s is still a pure
  function of (seed, s).
  """

  def __init__(self, examples: _Examples, batch_size: int, rows: tuple[int, int], seed: int,
               preprocess: Preprocess | None, group: int = 0):
    self._ex, self._B, self._rows = examples, batch_size, rows
    self._seed = int(np.random.SeedSequence([int(seed), 0x6A78]).generate_state(1)[0])
    self._aug_seed = int(np.random.SeedSequence([int(seed), 0x6175]).generate_state(1)[0])
    self._group_seed = int(np.random.SeedSequence([int(seed), 0x676C]).generate_state(1)[0])
    self._pre = preprocess
    self._group = int(group)
    self._perms: dict[int, np.ndarray] = {}
    self._windows: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def _perm(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)       # grain's reader threads share this cache: no check-then-read
    if perm is None:
      perm = np.random.default_rng([self._seed, epoch]).permutation(len(self._ex))
      if len(self._perms) > 256:
        self._perms.clear()
      self._perms[epoch] = perm
    return perm

  def _positions(self, j: np.ndarray) -> np.ndarray:
    epochs, r = np.divmod(j, len(self._ex))
    return np.array([self._perm(int(e))[i] for e, i in zip(epochs, r)])

  def _window(self, w: int) -> np.ndarray:
    """(G, B) stream positions of window w's batches: sorted by token count, chunks in seeded order."""
    window = self._windows.get(w)       # shared by reader threads, like _perms: a race only recomputes it
    if window is None:
      j = w * self._group * self._B + np.arange(self._group * self._B)
      counts = self._pre.token_counts(self._ex.batch(self._positions(j))['text'])
      chunks = j[np.argsort(counts, kind='stable')].reshape(self._group, self._B)
      window = chunks[np.random.default_rng([self._group_seed, w]).permutation(self._group)]
      if len(self._windows) > 8:
        self._windows.clear()
      self._windows[w] = window
    return window

  def __getitem__(self, step: int) -> Batch:
    if self._group:
      w, c = divmod(int(step), self._group)
      j = self._window(w)[c, self._rows[0]:self._rows[1]]
    else:
      j = int(step) * self._B + np.arange(*self._rows)
    positions = self._positions(j)
    if self._pre is None or self._pre.is_identity:
      batch = self._ex.batch(positions)
    else:  # element j augmented with rng(seed, j)
      batch = _stack([self._pre.train_example(ex, np.random.default_rng([self._aug_seed, int(p)]))
                      for ex, p in zip(self._ex.examples(positions), j)])
    return _to_model_inputs(batch, self._pre)


class _EvalStream:
  """This host's rows of eval batch i: every example once, in order, then zero padding with mask 0."""

  def __init__(self, examples: _Examples, batch_size: int, rows: tuple[int, int],
               preprocess: Preprocess | None):
    self._ex, self._B, self._rows, self._pre = examples, batch_size, rows, preprocess
    self._len = -(-len(examples) // batch_size)

  def __len__(self) -> int:
    return self._len

  def _read(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    if self._pre is None or self._pre.is_identity:
      return self._ex.batch(positions)
    return _stack([self._pre.eval_example(ex) for ex in self._ex.examples(positions)])

  def __getitem__(self, i: int) -> Batch:
    j = int(i) * self._B + np.arange(*self._rows)
    real = j[j < len(self._ex)]
    batch = self._read(real if len(real) else np.zeros(1, np.int64))   # a template when all rows pad
    n_pad = len(j) - len(real)
    out = {k: np.concatenate([v[:len(real)], np.zeros((n_pad, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    out['mask'] = (np.arange(len(j)) < len(real)).astype(np.float32)
    return _to_model_inputs(out, self._pre)


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
                  preprocess: Preprocess | None = None,
                  cache_bytes: int = CACHE_BYTES, group_by_length: int = 0) -> Iterator[Batch]:
  """Infinite shuffled training batches; batch s depends only on (seed, s, indices, group_by_length).

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
    cache_bytes: keep the (subset of the) source in memory when it is at most this large.
    group_by_length: G > 0 (text, `preprocess` a `TextInputs`): batches of like token counts, drawn G at a
      time (`_TrainStream`), so that fewer of them pad to the longest bucket. 0: every batch a uniform draw.

  Yields:
    {'image': float32 (b, H, W, C) in [0, 1] (normalised if `preprocess` says so), 'label': int32 (b,)}.
  """
  b = _host_batch_size(batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  ids = _subset_ids(source, indices)
  if len(ids) == 0:
    raise errors.DataError('cannot draw training batches from an empty dataset')
  if group_by_length < 0:
    raise errors.ConfigError(f'text.group_by_length={group_by_length}: must be 0 (off) or a number of batches')
  if group_by_length and not hasattr(preprocess, 'token_counts'):
    raise errors.ConfigError(f'text.group_by_length={group_by_length} needs a text dataset (it sorts by token '
                             'count); set it to 0 for images')
  stream = _TrainStream(_Examples(source, ids, cache_bytes), batch_size,
                        (process_index * b, (process_index + 1) * b), seed, preprocess, group_by_length)
  return _iterate(grain.MapDataset.source(stream)[start_step:], num_threads, prefetch, worker_count)


def eval_batches(source: Sequence[Any], *, batch_size: int,
                 indices: np.ndarray | None = None, num_threads: int = 2,
                 prefetch: int = 4, worker_count: int = 0, process_index: int = 0,
                 process_count: int = 1, preprocess: Preprocess | None = None,
                 cache_bytes: int = 0) -> Iterator[Batch]:
  """Every example exactly once, in order; the last batch is zero-padded to batch_size.

  Yields:
    {'image': float32 (b, H, W, C), 'label': int32 (b,), 'mask': float32 (b,)}, mask 1
    for real examples and 0 for padding (every batch carries 'mask'). With several
    processes, each gets its slice of every global batch; summing masked metrics over
    processes counts every example once.
  """
  b = _host_batch_size(batch_size, process_index, process_count)
  stream = _EvalStream(_Examples(source, _subset_ids(source, indices), cache_bytes), batch_size,
                       (process_index * b, (process_index + 1) * b), preprocess)
  return _iterate(grain.MapDataset.source(stream), num_threads, prefetch, worker_count)
