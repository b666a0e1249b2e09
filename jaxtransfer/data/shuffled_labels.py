"""Training labels permuted across examples: the "unrelated task" control of a multi-task study.

    src = ShuffledLabels(source, arrays={'labels': y}, columns={('labels', 3): perm})
    src[i]['labels'][3] == y[perm[i], 3]     # every other label and feature of example i is its own

A permuted label column keeps its values and their frequencies but carries no information about the image:
the task it feeds is a learnable function (a network can memorise it) unrelated to the others. A shared
network trained on one real task plus such tasks shows what sharing costs when the tasks do not share
structure (Caruana's control; experiment 6b's `--unrelated_control`). Only the training source is wrapped;
evaluation reads the true labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def permutation(n: int, seed: int, column: int) -> np.ndarray:
  """The seeded permutation of n examples for one label column (independent of the other columns)."""
  return np.random.default_rng([seed, 0x5F, column]).permutation(n)


class ShuffledLabels(Sequence):
  """`source` with some label columns taken from other examples: `columns[(key, index)]` = perm gives example
  i the value `arrays[key][perm[i], index]` (index None: the whole `arrays[key][perm[i]]`). Random access
  and picklable, like the data sources it wraps (grain workers read it)."""

  def __init__(self, source: Sequence[Any], arrays: Mapping[str, np.ndarray],
               columns: Mapping[tuple[str, int | None], np.ndarray]):
    n = len(source)
    for (key, _), perm in columns.items():
      if len(arrays[key]) != n or sorted(perm.tolist()) != list(range(n)):
        raise ValueError(f'labels {key!r}: {len(arrays[key])} labels and a permutation of {len(perm)} for a source '
                         f'of {n} examples')
    self._source, self._arrays, self._columns = source, dict(arrays), dict(columns)

  def __len__(self) -> int:
    return len(self._source)

  def _replace(self, i: int, example: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(example)
    for (key, index), perm in self._columns.items():
      if index is None:
        out[key] = self._arrays[key][perm[i]]
      else:
        value = np.array(out[key], copy=True)
        value[index] = self._arrays[key][perm[i], index]
        out[key] = value
    return out

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    return self._replace(i, self._source[i])

  def __getitems__(self, ids: Sequence[int]) -> list[dict[str, Any]]:
    ids = [int(i) for i in ids]
    examples = (self._source.__getitems__(ids) if hasattr(self._source, '__getitems__')
                else [self._source[i] for i in ids])
    return [self._replace(i, ex) for i, ex in zip(ids, examples)]
