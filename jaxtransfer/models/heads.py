"""Heads: feature vector → outputs. Freshly initialised on transfer; never part of the backbone tree."""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtransfer import errors
from jaxtransfer.models import projection, transformer


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


class MultiTaskHead(nn.Module):
  """A dict of heads keyed by task name over one shared feature vector: {task: (B, width)}.

  `outputs` maps task name → output width (binary 1, softmax / multilabel K, regression D); what the
  outputs mean is the objective's business (`objectives.multitask`). Each task gets its own submodule
  named after the task — `hidden` Dense+ReLU layers (`layer_0 …`, optional dropout) then `out` — so its
  parameters live at `head/<task>/…` and the path rules freeze or re-weight one head
  (`trainable='backbone/.*|head/has_3/.*'`). `MLPHead` per task, in the order of `outputs`.

    head = MultiTaskHead(outputs={'has_0': 1, 'count': 5})
    head.apply(head.init(key, x), x)   # {'has_0': (B, 1), 'count': (B, 5)}
  """
  outputs: Mapping[str, int]
  hidden: Sequence[int] = ()
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    if not self.outputs:
      raise errors.ConfigError('MultiTaskHead needs at least one task in `outputs`')
    return {name: MLPHead(int(width), tuple(self.hidden), self.dropout, name=name)(x, train=train)
            for name, width in self.outputs.items()}


class MLMHead(nn.Module):
  """BERT's masked-LM head on per-token features (…, width) → (…, num_outputs) vocabulary logits: Dense
  (width `hidden`, 0 = the input's) + GELU + LayerNorm, then the output projection `out`.

  Not tied to the token embedding: the head is a separate module that transfer drops (the embedding lives in
  the backbone's block_0), so a frozen or layer-wise-decayed stem never silently changes how the output layer
  trains, and the cost of untying is one vocabulary × width matrix during pretraining only.
  """
  num_outputs: int
  hidden: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    x = nn.gelu(nn.Dense(self.hidden or x.shape[-1], dot_general=projection.dot_general, name='transform')(x),
                approximate=False)
    x = nn.LayerNorm(epsilon=1e-12, name='norm')(x)
    # the vocabulary projection widens 128 → 8000: its kernel gradient copies x, not the logits' gradient
    return nn.Dense(self.num_outputs, dot_general=projection.dot_general, name='out')(x)


class MAEHead(nn.Module):
  """MAE's light decoder (He et al. 2022): the encoder's outputs at the V visible patches → Dense to `width`,
  a learned [MASK] vector at the N − V masked patches, back in patch order (`restore`), fixed sine-cosine
  positions, `depth` pre-LN Transformer layers, LayerNorm and `out` → (B, N, num_outputs = p·p·C) pixels.

  Called with a pooled (B, D) vector (the model's plain forward pass, e.g. at init) it decodes one token:
  the parameters are the same, so the head initialises like any other and transfer drops it like any other.
  """
  num_outputs: int
  width: int = 64
  depth: int = 1
  num_heads: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, restore: jax.Array | None = None, train: bool = False) -> jax.Array:
    del train
    if x.ndim == 2:
      x = x[:, None]
    y = nn.Dense(self.width, name='embed')(x)
    mask_token = self.param('mask_token', nn.initializers.normal(0.02), (1, 1, self.width))
    if restore is not None:
      b, n = restore.shape
      if y.shape[1] > n:
        raise errors.ConfigError(f'MAEHead: {y.shape[1]} visible patches for {n} patches in all')
      y = jnp.concatenate([y, jnp.broadcast_to(mask_token.astype(y.dtype), (b, n - y.shape[1], self.width))], axis=1)
      y = jnp.take_along_axis(y, restore[..., None].astype(jnp.int32), axis=1)
    y = y + transformer.sincos_positions(y.shape[1], self.width)[None].astype(y.dtype)
    ones = jnp.ones(y.shape[:2], bool)
    for i in range(self.depth):
      y = transformer.EncoderBlock(self.num_heads, 4 * self.width, 'pre_ln', 0.0, 0.0, 'einsum',
                                   name=f'layer_{i}')(y, ones, deterministic=True)
    y = nn.LayerNorm(epsilon=1e-6, name='norm')(y)
    return nn.Dense(self.num_outputs, name='out')(y)


HEADS = {'linear': LinearHead, 'mlp': MLPHead, 'multitask': MultiTaskHead, 'mlm': MLMHead, 'mae': MAEHead}
