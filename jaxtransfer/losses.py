"""Losses: pure functions of logits and labels, with example weights for padding and unknowns."""

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy over the examples whose weight is non-zero.

  `labels` are integer class indices; `weights` (0/1 per example, e.g. the padding mask of an
  evaluation batch) default to all ones. A batch with no weight returns 0, not NaN.
  """
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    weights = jnp.ones_like(per_example)
  return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)
