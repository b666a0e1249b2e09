"""Backbones: image → feature vector, built from blocks named `block_0 … block_{n-1}` in order.

The order of the blocks is the order of computation, so "the last k blocks" is well defined for every
backbone, and `drop_last=k` removes exactly those (the transfer surgery of the seed notes: "remove the
last 3 layers, add 3 new ones"). A backbone never sees its head: its parameter tree is the same whatever
head sits on top.

Normalisation and freezing. `ResNet` uses BatchNorm, whose running statistics live in the `batch_stats`
collection, not in `params`. A frozen block must not drift either way, so the model runs the BatchNorm
layers of every block named in `frozen` in inference mode (running averages, no statistics update) even
while training — Keras' rule for `trainable=False` BatchNorm. Blocks that train update their statistics
as usual. The training loop derives `frozen` from the freeze rules: a block is frozen when all of its
parameters are.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtransfer import errors
from jaxtransfer.models import conv

_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# nn.Conv, with first layers on 1- or 3-channel images computed as taps (conv.py: XLA:CPU is slow there).
Conv = functools.partial(nn.Conv, conv_general_dilated=conv.conv_general_dilated)


class ConvBlock(nn.Module):
  """Two 3×3 convolutions with ReLU, then 2×2 max-pooling."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(Conv(self.features, (3, 3), kernel_init=_CONV_INIT, name='conv_0')(x))
    x = nn.relu(Conv(self.features, (3, 3), kernel_init=_CONV_INIT, name='conv_1')(x))
    return max_pool(x, 2)


def _windows(x: jax.Array, window: int) -> jax.Array:
  """(B, H, W, C) → (B, H/w, w, W/w, w, C): the non-overlapping windows as axes 2 and 4 (VALID: a
  remainder row or column is dropped)."""
  b, h, w, c = x.shape
  h, w = h // window * window, w // window * window
  return x[:, :h, :w].reshape(b, h // window, window, w // window, window, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window: int) -> jax.Array:
  """Max over non-overlapping `window`×`window` patches of a (B, H, W, C) map (VALID) — what
  `nn.max_pool(x, (w, w), strides=(w, w))` computes, values and gradients alike, written as reshape + max.

  Why: XLA:CPU rewrites the gradient of `reduce_window` max (select-and-scatter) into four int32 iota
  maps the size of the input, a five-operand reduce_window and a scatter — about a third of the demo
  CNN's training step (BUILD_NOTES.md, Performance). Here the derivative is a custom JVP: the tangent of
  each window's first maximum in row-major order (select-and-scatter's choice, ties included), a few
  compares and selects that XLA fuses with the ReLU's into one loop in either direction. A custom JVP
  rather than a VJP, so that forward mode (`jax.jvp`, Hessians) works too; reverse mode transposes it.
  Non-finite inputs: a window holding a NaN has the value NaN (as `nn.max_pool`) and its first NaN takes
  the tangent — where select-and-scatter would pick a finite element — so the gradient stays on the NaN.
  """
  return jnp.max(_windows(x, window), axis=(2, 4))


@max_pool.defjvp
def _max_pool_jvp(window: int, primals: tuple[jax.Array], tangents: tuple[jax.Array]):
  """(pooled, tangent of each window's first maximum): select-and-scatter's derivative as masks, which
  reverse mode transposes into one broadcast-and-select."""
  x6, dx6 = _windows(primals[0], window), _windows(tangents[0], window)
  y = max_pool(primals[0], window)       # not jnp.max: higher derivatives must go through this rule too
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(window):
    row = []
    for j in range(window):
      xij = x6[:, :, i, :, j]
      hit = ((xij == y) | jnp.isnan(xij)) & ~taken   # the first maximum (or NaN) in row-major order
      taken = taken | hit
      row.append(hit)
    rows.append(jnp.stack(row, axis=3))
  first = jnp.stack(rows, axis=2)                   # (B, H/w, w, W/w, w, C): one True per window
  return y, jnp.sum(jnp.where(first, dx6, 0), axis=(2, 4))


class DenseBlock(nn.Module):
  """Flatten (if needed), Dense, ReLU."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.features, name='dense')(x))


class CNN(nn.Module):
  """Small convolutional backbone: conv blocks (2 convs + pool each), then dense blocks.

  `CNN(stages=(16, 32), dense=(128,))` has blocks block_0 (conv 16-16-pool), block_1 (conv 32-32-pool),
  block_2 (dense 128). The output is the last block's activations, flattened.

  `pool` says how the last conv block's (B, H, W, C) map becomes a vector: 'flatten' (position-aware,
  the default) or a global 'max' / 'mean' over positions — translation-invariant, for "is there a …
  anywhere" tasks such as the presence heads of `scenes`, and independent of the image size, so conv
  blocks trained on 28×28 glyphs fit 48×48 scenes. Pooling has no parameters: the same checkpoint
  restores into every `pool`.
  """
  stages: Sequence[int] = (16, 32)
  dense: Sequence[int] = (128,)
  drop_last: int = 0
  pool: str = 'flatten'

  def _pool(self, x: jax.Array) -> jax.Array:
    if self.pool == 'flatten':
      return x.reshape(x.shape[0], -1)
    if self.pool in ('max', 'mean'):
      return getattr(jnp, self.pool)(x, axis=(1, 2))
    raise errors.ConfigError(f"CNN pool: expected 'flatten', 'max' or 'mean', got {self.pool!r}")

  def block_modules(self) -> list[tuple[str, Any]]:
    kinds = [(ConvBlock, f) for f in self.stages] + [(DenseBlock, f) for f in self.dense]
    return kinds[:len(kinds) - self.drop_last]

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, frozen: Sequence[str] = ()) -> jax.Array:
    del train, frozen  # No normalisation statistics in this backbone.
    for i, (cls, features) in enumerate(self.block_modules()):
      if cls is DenseBlock and x.ndim == 4:
        x = self._pool(x)
      x = cls(features, name=f'block_{i}')(x)
    return self._pool(x) if x.ndim == 4 else x


class ResidualBlock(nn.Module):
  """Pre-activation-free basic residual block (conv-BN-ReLU-conv-BN + shortcut, ReLU)."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
    norm = lambda name: nn.BatchNorm(use_running_average=use_running_average, momentum=0.9, name=name)
    y = Conv(self.features, (3, 3), (self.strides,) * 2, use_bias=False, kernel_init=_CONV_INIT, name='conv_0')(x)
    y = nn.relu(norm('norm_0')(y))
    y = Conv(self.features, (3, 3), use_bias=False, kernel_init=_CONV_INIT, name='conv_1')(y)
    y = norm('norm_1')(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = Conv(self.features, (1, 1), (self.strides,) * 2, use_bias=False, kernel_init=_CONV_INIT, name='proj')(x)
      x = norm('norm_proj')(x)
    return nn.relu(x + y)


class Stem(nn.Module):
  """3×3 convolution + BatchNorm + ReLU (small images: no 7×7 stride-2 stem, no max-pool)."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
    x = Conv(self.features, (3, 3), use_bias=False, kernel_init=_CONV_INIT, name='conv')(x)
    return nn.relu(nn.BatchNorm(use_running_average=use_running_average, momentum=0.9, name='norm')(x))


class ResNet(nn.Module):
  """ResNet for small images: stem, then stages of basic residual blocks, then global average pooling.

  `width` is the stem's channels; stage i has `width * 2**i` channels and `depth[i]` blocks, the first
  of each stage after the first striding by 2. Blocks are numbered through: block_0 is the stem.
  """
  depth: Sequence[int] = (1, 1, 1)
  width: int = 16
  drop_last: int = 0

  def block_modules(self) -> list[tuple[Any, dict[str, int]]]:
    blocks: list[tuple[Any, dict[str, int]]] = [(Stem, {'features': self.width})]
    for stage, n in enumerate(self.depth):
      for j in range(n):
        strides = 2 if stage > 0 and j == 0 else 1
        blocks.append((ResidualBlock, {'features': self.width * 2**stage, 'strides': strides}))
    return blocks[:len(blocks) - self.drop_last]

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, frozen: Sequence[str] = ()) -> jax.Array:
    for i, (cls, kwargs) in enumerate(self.block_modules()):
      name = f'block_{i}'
      x = cls(**kwargs, name=name)(x, use_running_average=not train or name in frozen)
    return jnp.mean(x, axis=(1, 2))


from jaxtransfer.models.efficientnet import EfficientNetLite  # noqa: E402  (ImageNet-pretrained via `import-weights`)
from jaxtransfer.models.transformer import TransformerEncoder  # noqa: E402  (text tokens or image patches)

BACKBONES = {'cnn': CNN, 'resnet': ResNet, 'efficientnet_lite': EfficientNetLite, 'transformer': TransformerEncoder}
