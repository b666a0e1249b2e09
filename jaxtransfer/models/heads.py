"""Heads: feature vector → outputs. Freshly initialised on transfer; never part of the backbone tree."""

from collections.abc import Sequence

import flax.linen as nn
import jax


class LinearHead(nn.Module):
  """One Dense layer to `num_outputs` logits (a linear probe when the backbone is frozen)."""
  num_outputs: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    return nn.Dense(self.num_outputs, name='out')(x)


class MLPHead(nn.Module):
  """`len(hidden)` new Dense+ReLU layers (`layer_0 …`), optional dropout, then the output layer `out`."""
  num_outputs: int
  hidden: Sequence[int] = (128,)
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    for i, features in enumerate(self.hidden):
      x = nn.relu(nn.Dense(features, name=f'layer_{i}')(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, name='out')(x)


HEADS = {'linear': LinearHead, 'mlp': MLPHead}
