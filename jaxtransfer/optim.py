"""Optimizer from config: a learning-rate schedule, and parameter groups from the path rules.

Frozen parameters go through `optax.set_to_zero()` inside `optax.multi_transform`: their update is
exactly zero and the inner optimizer keeps no state for them (`optax.masked` alone would pass their raw
gradients through and let them move). With the gradient unused, XLA also drops the frozen part of the
backward pass, so a head-only step costs about a forward pass.

Per-group optimisation (issue #5), all from the same '/'-path rules (`rules.resolve`, strict):
  optim.lr_mult       ((regex, multiplier), …): learning-rate multipliers, first match wins, others × 1;
  optim.llrd          layer-wise learning-rate decay from the backbone's own block order (generic: every
                      backbone names its blocks block_0 … block_{n-1}): head × 1, block_i × llrd**(n-i);
  optim.decay_rules   ((regex, bool), …): which parameters weight decay acts on (default: all);
  optim.l2sp / l2sp_head   L2-SP: gradient + l2sp·(w − w_start) on the backbone (toward the weights the
                      run STARTED from, kept in the optimizer state, so resume keeps the anchor), + l2sp_head·w on the head;
  optim.unfreeze_every     gradual unfreezing (ULMFiT): the head trains from the first step, one more
                      trainable backbone block (top first) joins every N steps;
  optim.lp_steps / lp_lr   LP-FT: the first N steps train only the head (its own lr, schedule over N steps),
                      then the `trainable` set trains with a fresh optimizer (optim.lr, schedule over the rest).
Multipliers scale the final update (`scale_by_path`, after the optimizer), so they are applied, not just
computed: tests/test_strategies.py measures the per-parameter update ratio. A parameter not yet unfrozen
gets a zero update and its optimizer state does not advance (`phases`), so Adam's bias correction starts
when the parameter starts.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxtransfer import errors, rules


def schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up then cosine decay to 0 (`config.schedule='cosine'`) or constant."""
  lr, warmup = config.lr, min(config.warmup_steps, max(total_steps - 1, 0))
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(total_steps, warmup + 1))
  if config.schedule == 'constant':
    return optax.constant_schedule(lr)
  raise errors.ConfigError(f'optim.schedule: unknown schedule {config.schedule!r} (cosine | constant)')


def base_optimizer(config: ml_collections.ConfigDict, total_steps: int, *, offset: int = 0,
                   decay_mask: Any = None) -> optax.GradientTransformation:
  """The optimizer applied to trainable parameters.

  `offset`: the schedule is read at (own step + offset) — a group that starts late follows the run's clock.
  `decay_mask`: a tree or callable for `optax.adamw(mask=…)` (None: weight decay on every parameter).
  """
  lr = schedule(config, total_steps)
  if offset:
    lr = (lambda sched: lambda count: sched(count + offset))(lr)
  if config.name == 'adam':
    tx = (optax.adamw(lr, weight_decay=config.weight_decay, mask=decay_mask) if config.weight_decay
          else optax.adam(lr))
  elif config.name == 'sgd':
    tx = optax.sgd(lr, momentum=config.momentum or None)
  else:
    raise errors.ConfigError(f'optim.name: unknown optimizer {config.name!r} (adam | sgd)')
  if config.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
  return tx


def _resolve_default(user_rules: Sequence[tuple[str, Any]], tree: Any, default: Any, what: str) -> dict[str, Any]:
  """{path: value}: the user's rules (strict: each must match something) with `default` for the rest."""
  return rules.flatten(rules.resolve([(str(p), v) for p, v in user_rules], tree, what=what, default=default))


def lr_scales(config: ml_collections.ConfigDict, labels: Any) -> dict[str, float]:
  """{path: learning-rate scale}: `lr_mult` rules × layer-wise decay `llrd` from the backbone block order.

  With n backbone blocks: head × 1, block_i × llrd**(n − i) (the top block × llrd), any other backbone
  parameter (outside the blocks) × llrd**(n + 1).
  """
  scales = {p: float(v) for p, v in _resolve_default(config.lr_mult, labels, 1.0, 'lr_mult rule').items()}
  decay = float(config.llrd)
  if decay != 1.0:
    if not 0.0 < decay <= 1.0:
      raise errors.ConfigError(f'optim.llrd must be in (0, 1], got {decay}')
    n = len(rules.block_names(labels)) if 'backbone' in labels else 0
    for path in scales:
      parts = path.split('/')
      if parts[0] != 'backbone':
        continue
      index = rules.block_index(parts[1])
      depth = n + 1 if index is None else n - index
      scales[path] *= decay ** depth
  return scales


def decay_flags(config: ml_collections.ConfigDict, labels: Any) -> dict[str, bool]:
  """{path: whether weight decay acts on it} from `decay_rules` (default: every parameter)."""
  return {p: bool(v) for p, v in _resolve_default(config.decay_rules, labels, True,
                                                   'decay rule').items()}


def start_steps(config: ml_collections.ConfigDict, labels: Any) -> dict[str, int]:
  """{path: the optimizer step from which the parameter trains}, -1 for parameters that never train.

  Plain runs: 0 for 'train', -1 for 'freeze'. Gradual unfreezing (`unfreeze_every=N`): non-block
  trainable parameters (the head) at 0, the trainable blocks from the top at N, 2N, …; backbone
  parameters outside the blocks with the lowest block. LP-FT (`lp_steps=P`): head at 0, the rest of
  the trainable set at P.
  """
  flat = rules.flatten(labels)
  every, lp = int(config.unfreeze_every), int(config.lp_steps)
  if every and lp:
    raise errors.ConfigError('optim.unfreeze_every and optim.lp_steps are two different schedules: set one of them')
  if every < 0 or lp < 0:
    raise errors.ConfigError('optim.unfreeze_every and optim.lp_steps must be ≥ 0')
  out = {p: 0 if v == rules.TRAIN else -1 for p, v in flat.items()}
  if lp:
    return {p: (0 if p.startswith('head/') else lp) if s >= 0 else -1 for p, s in out.items()}
  if every:
    blocks = rules.block_names(labels) if 'backbone' in labels else []
    trainable = [b for b in blocks if any(v == rules.TRAIN for v in jax.tree_util.tree_leaves(labels['backbone'][b]))]
    order = {b: k + 1 for k, b in enumerate(reversed(trainable))}      # top trainable block: 1
    for p, s in out.items():
      parts = p.split('/')
      if s < 0 or parts[0] != 'backbone':
        continue
      out[p] = every * order.get(parts[1], len(trainable))
  return out


def frozen_blocks_at(labels: Any, starts: dict[str, int], step: int) -> tuple[str, ...]:
  """Blocks none of whose parameters trains at optimizer step `step` (their BatchNorm in inference mode)."""
  if 'backbone' not in labels:
    return ()
  out = []
  for name in rules.block_names(labels):
    prefix = f'backbone/{name}/'
    if all(not 0 <= s <= step for p, s in starts.items() if p.startswith(prefix)):
      out.append(name)
  return tuple(out)


def schedule_changes(labels: Any, starts: dict[str, int]) -> list[int]:
  """Optimizer steps > 0 at which the frozen block set changes (the loop recompiles its step there)."""
  return sorted({s for s in starts.values() if s > 0
                 and frozen_blocks_at(labels, starts, s) != frozen_blocks_at(labels, starts, s - 1)})


class PhasesState(NamedTuple):
  count: jax.Array
  inner: tuple[Any, ...]


def phases(schedule: Sequence[tuple[int, optax.GradientTransformation]]) -> optax.GradientTransformation:
  """Run `schedule[k][1]` from optimizer step `schedule[k][0]` until the next entry starts; zero before the first.

  An inner optimizer's state only advances while it is active, so each phase starts fresh (its own Adam
  moments, bias correction and schedule clock) — gradual unfreezing and LP-FT's second phase.

    tx = phases([(0, optax.adam(1e-2)), (100, optax.adam(1e-4))])   # LP then FT, each its own lr
  """
  starts = [int(s) for s, _ in schedule]
  if starts != sorted(starts) or len(set(starts)) != len(starts):
    raise ValueError(f'phases: start steps must increase, got {starts}')
  txs = [tx for _, tx in schedule]

  def init(params):
    return PhasesState(jnp.zeros([], jnp.int32), tuple(tx.init(params) for tx in txs))

  def update(updates, state, params=None):
    out = jax.tree_util.tree_map(jnp.zeros_like, updates)
    new_inner = []
    for k, (tx, inner) in enumerate(zip(txs, state.inner)):
      end = starts[k + 1] if k + 1 < len(starts) else None
      active = (state.count >= starts[k]) & (True if end is None else state.count < end)
      u, new = tx.update(updates, inner, params)
      out = jax.tree_util.tree_map(lambda o, x: jnp.where(active, x, o), out, u)
      new_inner.append(jax.tree_util.tree_map(lambda n, o: jnp.where(active, n, o), new, inner))
    return out, PhasesState(state.count + 1, tuple(new_inner))

  return optax.GradientTransformation(init, update)


def scale_by_path(scales: dict[str, float]) -> optax.GradientTransformation:
  """Multiply each parameter's update by `scales[path]` (learning-rate multipliers, LLRD). Stateless."""

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda p, u: u * scales[rules.path_str(p)], updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class L2SPState(NamedTuple):
  anchor: Any       # the backbone at optimizer init: the weights the run started from


def add_l2sp(alpha: float, beta: float = 0.0) -> optax.GradientTransformation:
  """L2-SP (Li et al. 2018): gradient of α/2‖w_bb − w_bb⁰‖² + β/2‖w_head‖², w⁰ = the params at `init`.

  The penalty pulls the backbone toward its STARTING point (the pretrained weights), not toward zero.
  Re-`init` after loading pretrained weights (train.py does).
  """

  def init(params):
    return L2SPState(jax.tree_util.tree_map(jnp.copy, params.get('backbone', {})))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('add_l2sp needs the params')
    out = dict(updates)
    if 'backbone' in updates:
      out['backbone'] = jax.tree_util.tree_map(lambda g, w, w0: g + alpha * (w - w0), updates['backbone'],
                                               params['backbone'], state.anchor)
    if beta and 'head' in updates:
      out['head'] = jax.tree_util.tree_map(lambda g, w: g + beta * w, updates['head'], params['head'])
    return out, state

  return optax.GradientTransformation(init, update)


def make(config: ml_collections.ConfigDict, labels: Any, total_steps: int) -> optax.GradientTransformation:
  """`base_optimizer` on parameters labelled 'train', zero updates and no state for 'freeze'.

  With the per-group keys (module docstring): L2-SP → {phased groups, frozen} → per-path scales.
  """
  flags = decay_flags(config, labels)
  decay_mask = None
  if config.weight_decay and not all(flags.values()):
    # Inside multi_transform the tree holds MaskedNode (no leaves) for other groups; paths are unchanged.
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: flags[rules.path_str(p)], params)
  starts = start_steps(config, labels)
  lp = int(config.lp_steps)
  group_of, transforms = {}, {rules.FREEZE: optax.set_to_zero()}
  for path, s in starts.items():
    if s < 0:
      group_of[path] = rules.FREEZE
    elif lp and path.startswith('head/'):
      group_of[path] = 'lp_then_ft'
      if 'lp_then_ft' not in transforms:
        lp_config = ml_collections.ConfigDict(config.to_dict())
        lp_config.lr, lp_config.warmup_steps = float(config.lp_lr), 0
        transforms['lp_then_ft'] = phases([(0, base_optimizer(lp_config, lp, decay_mask=decay_mask)),
                                           (lp, base_optimizer(config, total_steps - lp, decay_mask=decay_mask))])
    elif s == 0:
      group_of[path] = rules.TRAIN
      transforms.setdefault(rules.TRAIN, base_optimizer(config, total_steps, decay_mask=decay_mask))
    else:
      group_of[path] = f'from_{s}'
      if group_of[path] not in transforms:
        inner = (base_optimizer(config, total_steps - lp, decay_mask=decay_mask) if lp
                 else base_optimizer(config, total_steps, offset=s, decay_mask=decay_mask))
        transforms[group_of[path]] = phases([(s, inner)])
  group_labels = jax.tree_util.tree_map_with_path(lambda p, _: group_of[rules.path_str(p)], labels)
  tx = optax.multi_transform(transforms, group_labels)
  alpha, beta = float(config.l2sp), float(config.l2sp_head)
  if alpha or beta:
    tx = optax.chain(add_l2sp(alpha, beta), tx)
  scales = lr_scales(config, labels)
  if any(v != 1.0 for v in scales.values()):
    tx = optax.chain(tx, scale_by_path(scales))
  return tx
