"""Optimizer from config: a learning-rate schedule, and parameter groups from the path rules.

Frozen parameters go through `optax.set_to_zero()` inside `optax.multi_transform`: their update is
exactly zero and the inner optimizer keeps no state for them (`optax.masked` alone would pass their raw
gradients through and let them move). With the gradient unused, XLA also drops the frozen part of the
backward pass, so a head-only step costs about a forward pass.
"""

from typing import Any

import ml_collections
import optax

from jaxtransfer import rules


def schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up then cosine decay to 0 (`config.schedule='cosine'`) or constant."""
  lr, warmup = config.lr, min(config.warmup_steps, max(total_steps - 1, 0))
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(total_steps, warmup + 1))
  if config.schedule == 'constant':
    return optax.constant_schedule(lr)
  raise ValueError(f'optim.schedule: unknown schedule {config.schedule!r} (cosine | constant)')


def base_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """The optimizer applied to trainable parameters."""
  lr = schedule(config, total_steps)
  if config.name == 'adam':
    tx = optax.adamw(lr, weight_decay=config.weight_decay) if config.weight_decay else optax.adam(lr)
  elif config.name == 'sgd':
    tx = optax.sgd(lr, momentum=config.momentum or None)
  else:
    raise ValueError(f'optim.name: unknown optimizer {config.name!r} (adam | sgd)')
  if config.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
  return tx


def make(config: ml_collections.ConfigDict, labels: Any, total_steps: int) -> optax.GradientTransformation:
  """`base_optimizer` on parameters labelled 'train', zero updates and no state for 'freeze'."""
  return optax.multi_transform(
      {rules.TRAIN: base_optimizer(config, total_steps), rules.FREEZE: optax.set_to_zero()}, labels)
