"""One rule language over '/'-joined parameter paths (big_vision style).

A rule is `(regex, value)`. `resolve(rules, tree)` gives every leaf the value of the first rule whose
regex fully matches the leaf's path (`backbone/block_2/conv_0/kernel`). It is strict, because a silent
mistake here trains what should be frozen: every leaf must be covered (or the caller names a `default`
for the rest), and a rule that matches no leaf is an error (a typo in a pattern would otherwise do nothing). The same rules drive freezing, learning-
rate multipliers, weight-decay masks and sharding.

Freeze presets (`trainable=`):
  'all'      every parameter trains (full fine-tuning);
  'head'     only the head trains (linear probe when the head is one layer);
  'last:K'   the last K backbone blocks and the head train;
  'bitfit'   only the biases (every path ending in /bias) and the head train (BitFit, Ben Zaken et al.);
  'lora:R'   only the LoRA adapters (every `…/lora_a`, `…/lora_b` leaf, rank R) and the head train
             (Hu et al.; the Transformer encoder creates them with spec `lora_rank=R`, models/transformer.py);
  '<regex>'  the parameters whose path matches the regex train, all others are frozen.
"""

import re
from collections.abc import Sequence
from typing import Any, TypeVar

import jax

from jaxtransfer import errors

T = TypeVar('T')
Rules = Sequence[tuple[str, Any]]

TRAIN, FREEZE = 'train', 'freeze'
LORA_LEAVES = ('lora_a', 'lora_b')   # the names of LoRA adapter parameters (A: (in, R), B: (R, out))


class RuleError(errors.Error):
  """A rule set that does not fit the parameter tree (uncovered leaf, rule that matches nothing)."""


def path_str(path: Sequence[Any]) -> str:
  """'/'-joined names of a `jax.tree_util` key path."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def flatten(tree: Any) -> dict[str, Any]:
  """{path: leaf} for every leaf of `tree`, in tree order."""
  return {path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


_REQUIRED = object()


def resolve(rules: Rules, tree: Any, *, what: str = 'rule', default: Any = _REQUIRED) -> Any:
  """A tree shaped like `tree` holding, per leaf, the value of the first rule that matches its path.

  `default`: the value of every leaf no rule covers (without it, an uncovered leaf is an error). A rule
  that matches no leaf is an error either way.
  """
  compiled = []
  for pattern, value in rules:
    try:
      compiled.append((re.compile(pattern), value))
    except re.error as e:
      raise RuleError(f'{what} {pattern!r} is not a valid regex: {e}') from None
  used = [False] * len(compiled)
  uncovered = []

  def value_of(path, _):
    name = path_str(path)
    for i, (regex, value) in enumerate(compiled):
      if regex.fullmatch(name):
        used[i] = True
        return value
    if default is _REQUIRED:
      uncovered.append(name)
    return default

  out = jax.tree_util.tree_map_with_path(value_of, tree)
  if uncovered:
    raise RuleError(f'no {what} covers parameter(s): {", ".join(uncovered[:10])}'
                    + (f' (+{len(uncovered) - 10} more)' if len(uncovered) > 10 else ''))
  unused = [p for (p, _), u in zip(rules, used) if not u]
  if unused:
    raise RuleError(f'{what} {unused[0]!r} matches no parameter' + (f' (nor do {unused[1:]})' if unused[1:] else ''))
  return out


def block_index(name: str) -> int | None:
  """The number i of a backbone block name 'block_<i>'; None for any other name."""
  match = re.fullmatch(r'block_(\d+)', name)
  return int(match.group(1)) if match else None


def block_names(params: Any) -> list[str]:
  """Backbone block names (`block_0 …`) in computation order."""
  return sorted((k for k in params['backbone'] if block_index(k) is not None), key=block_index)


def is_adapter(path: str) -> bool:
  """Whether the '/'-joined `path` names a LoRA adapter parameter (`…/lora_a` or `…/lora_b`)."""
  return path.rsplit('/', 1)[-1] in LORA_LEAVES


def lora_rank(trainable: str) -> int | None:
  """R of a `trainable='lora:R'` preset (R ≥ 1); None for any other preset. A malformed R is a RuleError."""
  trainable = trainable.strip()
  if not trainable.startswith('lora:'):
    return None
  try:
    rank = int(trainable.split(':', 1)[1])
  except ValueError:
    rank = 0
  if rank < 1:
    raise RuleError(f'trainable {trainable!r}: expected lora:R with an integer rank R ≥ 1')
  return rank


def freeze_rules(trainable: str, params: Any) -> list[tuple[str, str]]:
  """Expand a `trainable` preset or regex (see module docstring) into train rules; the rest is frozen."""
  trainable = trainable.strip()
  if trainable == 'all':
    return [('.*', TRAIN)]
  if trainable == 'head':
    return [('head/.*', TRAIN)]
  if trainable == 'bitfit':
    return [('head/.*', TRAIN), ('backbone/.*/bias', TRAIN)]
  if trainable.startswith('last:'):
    blocks = block_names(params)
    try:
      k = int(trainable.split(':', 1)[1])
    except ValueError:
      raise RuleError(f'trainable {trainable!r}: expected last:K with an integer K') from None
    if not 0 <= k <= len(blocks):
      raise RuleError(f'trainable {trainable!r}: the backbone has {len(blocks)} blocks')
    return [('head/.*', TRAIN)] + [(f'backbone/{b}/.*', TRAIN) for b in blocks[len(blocks) - k:]]
  rank = lora_rank(trainable)
  if rank is not None:
    ranks = {tuple(leaf.shape)[-1] for path, leaf in flatten(params).items() if path.endswith('/lora_a')}
    if not ranks:
      raise RuleError(f'trainable {trainable!r}: the model has no LoRA adapters (…/lora_a, …/lora_b); '
                      f'give the Transformer encoder lora_rank={rank}')
    if ranks != {rank}:
      raise RuleError(f'trainable {trainable!r}: the model\'s LoRA adapters have rank {sorted(ranks)}')
    return [('head/.*', TRAIN), ('backbone/.*/lora_[ab]', TRAIN)]
  return [(trainable, TRAIN)]


def freeze_labels(trainable: str, params: Any) -> Any:
  """A tree of 'train' / 'freeze' labels for `params`: the preset's rules, FREEZE for the rest; strict as `resolve`."""
  return resolve(freeze_rules(trainable, params), params, what='freeze rule', default=FREEZE)


def frozen_blocks(labels: Any) -> tuple[str, ...]:
  """Backbone blocks all of whose parameters are frozen (their BatchNorm runs in inference mode)."""
  out = []
  for name in block_names(labels):
    if all(v == FREEZE for v in jax.tree_util.tree_leaves(labels['backbone'][name])):
      out.append(name)
  return tuple(out)
