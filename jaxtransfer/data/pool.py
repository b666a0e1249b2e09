"""Pooled datasets: 'pool:<name>+<name>…' reads the same split of several datasets as one, in order.

    src = catalog.load('pool:real_digits+real_digits/usps', 'train')   # 4000 MNIST + 7291 USPS digits
    len(src) == 11291; src[4000] is USPS train example 0

For pretraining without labels on every unlabelled image one has (objective 'mae' or 'simclr' read no
label): the members must have the same image shape (one line naming the two that differ); labels, where
read, are each member's own (the same classes only if the members share them — `info` takes the first
member's). A split (with its slicing) applies to each member: 'train[:50%]' is the first half of each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtransfer import errors

PREFIX = 'pool:'


def members(name: str) -> list[str]:
  """The dataset names a 'pool:a+b+…' name pools (at least two, none itself a pool)."""
  parts = [p.strip() for p in name[len(PREFIX):].split('+')]
  if len(parts) < 2 or not all(parts):
    raise errors.DataError(f'{name!r}: a pool names two or more datasets joined by "+", e.g. '
                           "'pool:real_digits+real_digits/usps'")
  nested = [p for p in parts if p.startswith(PREFIX)]
  if nested:
    raise errors.DataError(f'{name!r}: a pool cannot hold another pool ({nested[0]!r})')
  return parts


class ConcatSource(Sequence):
  """Random access over several sources one after the other (picklable for grain workers)."""

  def __init__(self, sources: Sequence[Sequence[Any]]):
    self._sources = list(sources)
    self._starts = np.cumsum([0] + [len(s) for s in self._sources])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _locate(self, i: int) -> tuple[int, int]:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f'index {i} out of range for a pool of {len(self)} examples')
    k = int(np.searchsorted(self._starts, i, side='right')) - 1
    return k, i - int(self._starts[k])

  def __getitem__(self, i: int) -> Any:
    k, j = self._locate(i)
    return self._sources[k][j]

  def __getitems__(self, ids: Sequence[int]) -> list[Any]:
    located = [self._locate(i) for i in ids]
    out: list[Any] = [None] * len(located)
    for k, source in enumerate(self._sources):
      mine = [(n, j) for n, (kk, j) in enumerate(located) if kk == k]
      if not mine:
        continue
      got = (source.__getitems__([j for _, j in mine]) if hasattr(source, '__getitems__')
             else [source[j] for _, j in mine])
      for (n, _), example in zip(mine, got):
        out[n] = example
    return out
