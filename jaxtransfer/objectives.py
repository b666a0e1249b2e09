"""Objectives: what a run optimises and how it is measured, separate from the one training loop.

An `Objective` is three pure functions:
  loss(outputs, batch)          → (scalar loss, {name: scalar}) — jitted inside the train step;
  per_example(outputs, batch)   → {name: (B, …) array} — jitted inside the eval step, gathered on host;
  summarize({name: array})      → {metric: float} — host side, over a whole split without padding.
Gathering per-example values (not running sums) keeps metrics such as AUC and average precision exact.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtransfer import losses

Batch = dict[str, Any]


class Objective(NamedTuple):
  loss: Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]
  per_example: Callable[[Any, Batch], dict[str, jax.Array]]
  summarize: Callable[[dict[str, np.ndarray]], dict[str, float]]


def classification() -> Objective:
  """Single-label classification: softmax cross-entropy, accuracy."""

  def loss(logits, batch):
    value = losses.softmax_cross_entropy(logits, batch['label'])
    return value, {'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}

  def per_example(logits, batch):
    return {'nll': optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']),
            'correct': (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)}

  def summarize(values):
    return {'accuracy': float(np.mean(values['correct'])), 'loss': float(np.mean(values['nll']))}

  return Objective(loss, per_example, summarize)
