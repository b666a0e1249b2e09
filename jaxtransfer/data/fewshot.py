"""Few-shot subsets: k labelled examples per class, nested across k.

    y = catalog.labels('real_digits', 'train')
    idx1 = k_per_class_indices(y, 1, seed=0)     # 10 indices
    idx10 = k_per_class_indices(y, 10, seed=0)   # 100 indices, a superset of idx1
    src_subset = pipeline.train_batches(src, batch_size=32, seed=0, indices=idx10)
"""

from __future__ import annotations

import numpy as np

from jaxtransfer import errors


def class_order(labels: np.ndarray, cls: int, seed: int) -> np.ndarray:
  """Indices of class `cls` in a seeded random order that does not depend on k."""
  members = np.flatnonzero(labels == cls)
  return np.random.default_rng([seed, int(cls)]).permutation(members)


def k_per_class_indices(labels: np.ndarray, k: int | None, seed: int, *,
                        num_classes: int | None = None) -> np.ndarray:
  """Sorted int64 indices of k examples per class, deterministic in `seed`.

  Each class's examples are put in a seeded random order (independent of k) and the first
  k are taken, so for one seed the subsets are nested: k=1 ⊂ k=10 ⊂ k=100 ⊂ k=None.

  Args:
    labels: (N,) integer class labels.
    k: examples per class; None means all N examples.
    seed: selects the examples.
    num_classes: if given, classes 0..num_classes-1 must all have k examples (a class
      missing from `labels` is then an error too); otherwise the classes present count.

  Raises:
    errors.DataError: if a class has fewer than k examples (names the classes and counts).
    errors.ConfigError: if k < 1.

  >>> k_per_class_indices(np.array([0, 1, 0, 1, 1]), 1, seed=0).tolist()  # one per class
  [0, 4]
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D, got shape {labels.shape}')
  if k is None:
    return np.arange(len(labels), dtype=np.int64)
  if int(k) != k or k < 1:
    raise errors.ConfigError(f'k must be a positive integer or None, got {k!r}')
  classes = (np.arange(num_classes) if num_classes is not None
             else np.unique(labels))
  counts = {int(c): int(np.sum(labels == c)) for c in classes}
  short = {c: n for c, n in counts.items() if n < k}
  if short:
    detail = ', '.join(f'class {c}: {n}' for c, n in short.items())
    raise errors.DataError(f'k={k} per class requested but {len(short)} class(es) have fewer '
                           f'examples ({detail})')
  picked = [class_order(labels, c, seed)[:k] for c in classes]
  return np.sort(np.concatenate(picked)).astype(np.int64)
