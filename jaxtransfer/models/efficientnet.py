"""EfficientNet-Lite (Tan & Le 2019; the "Lite" variants of tensorflow/tpu) as a jaxtransfer backbone.

    spec = {'name': 'efficientnet_lite', 'variant': 'lite0'}
    bb = model.build_backbone(spec)   # image (B, H, W, C) in [0, 1] → features (B, 1280)

Lite = EfficientNet-B without squeeze-excitation, with ReLU6 instead of swish, and with the stem and
the head convolution not scaled with the width (friendlier to quantisation and mobile accelerators).
Blocks, in order of computation (so `drop_last` and 'last:K' freezing work as for every backbone):
  block_0              stem: 3×3 conv stride 2 (32 channels) + BatchNorm + ReLU6
  block_1 … block_16   MBConv blocks (lite0: 16; deeper variants have more): [1×1 expand + BN + ReLU6]
                       → k×k depthwise (stride 1 or 2) + BN + ReLU6 → 1×1 project + BN, + input when
                       the shapes allow
  block_17             head: 1×1 conv to 1280 channels + BN + ReLU6
then global average pooling. Convolutions pad like TensorFlow's 'SAME' (which is what lax 'SAME' does),
BatchNorm has epsilon 1e-3 — as in the reference, so converted weights give the same numbers.

Input: images in [0, 1]. The backbone normalises them itself with `input_mean`/`input_std` (per channel,
in [0, 1] units) — the statistics its weights were trained with, so they travel with the checkpoint's
spec and a fine-tune cannot forget them. For the TF-trained Lite weights they are 127/255 and 128/255,
i.e. (x·255 − 127) / 128. A one-channel image is repeated to three channels (grayscale data on an RGB
backbone). The model does not resize: feed it the resolution it was trained at (224 for lite0; see
`imagefolder:<dir>?size=224` or the pipeline's `resize`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtransfer import errors

# (width multiplier, depth multiplier, resolution, dropout) of tensorflow/tpu's efficientnet_lite_builder.
VARIANTS = {
    'lite0': (1.0, 1.0, 224, 0.2),
    'lite1': (1.0, 1.1, 240, 0.2),
    'lite2': (1.1, 1.2, 260, 0.3),
    'lite3': (1.2, 1.4, 280, 0.3),
    'lite4': (1.4, 1.8, 300, 0.3),
}
# Stages: (repeats, kernel, stride, expand ratio, input channels, output channels).
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Channels scaled by `width`, rounded to a multiple of `divisor` (never more than 10 % down)."""
  if width == 1.0:
    return filters
  scaled = filters * width
  new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return int(new + divisor if new < 0.9 * scaled else new)


def block_configs(variant: str) -> list[dict[str, int]]:
  """The MBConv blocks of `variant`: kernel, stride, expand, in/out channels (first and last stage unscaled in depth)."""
  if variant not in VARIANTS:
    raise errors.ConfigError(f'unknown EfficientNet-Lite variant {variant!r}; known: {", ".join(VARIANTS)}')
  width, depth, _, _ = VARIANTS[variant]
  blocks = []
  for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
    cin = STEM_CHANNELS if i == 0 else round_filters(cin, width)
    cout = round_filters(cout, width)
    if 0 < i < len(STAGES) - 1:
      repeats = int(math.ceil(depth * repeats))
    for j in range(repeats):
      blocks.append({'kernel': kernel, 'stride': stride if j == 0 else 1, 'expand': expand,
                     'in_channels': cin if j == 0 else cout, 'out_channels': cout})
  return blocks


def _bn(name: str, use_running_average: bool) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=use_running_average, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      name=name)


class ConvBNAct(nn.Module):
  """k×k convolution (no bias, TF 'SAME' padding) + BatchNorm + ReLU6: the stem and the head."""
  features: int
  kernel: int = 3
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
    x = nn.Conv(self.features, (self.kernel,) * 2, (self.stride,) * 2, padding='SAME', use_bias=False,
                kernel_init=_CONV_INIT, name='conv')(x)
    return nn.relu6(_bn('norm', use_running_average)(x))


class DepthwiseConv(nn.Module):
  """k×k depthwise convolution (no bias, TF 'SAME' padding) as a sum of k² shifted, scaled copies.

  Same parameter (`kernel`, (k, k, 1, C)) and the same numbers as `nn.Conv(feature_group_count=C)`,
  but XLA's CPU backend runs grouped convolutions slowly: this form is several times faster per layer
  and for the whole lite0 forward (numbers in BUILD_NOTES.md "Performance").
  """
  kernel_size: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.stride
    channels = x.shape[-1]
    kernel = self.param('kernel', _CONV_INIT, (k, k, 1, channels), jnp.float32).astype(x.dtype)
    h, w = x.shape[1:3]
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)   # TF 'SAME': extra pixel after
    x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = None
    for i in range(k):
      for j in range(k):
        term = x[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :] * kernel[i, j, 0]
        out = term if out is None else out + term
    return out


class MBConv(nn.Module):
  """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite)."""
  kernel: int
  stride: int
  expand: int
  in_channels: int
  out_channels: int

  @nn.compact
  def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
    inputs = x
    hidden = self.in_channels * self.expand
    if self.expand != 1:
      x = nn.Conv(hidden, (1, 1), use_bias=False, kernel_init=_CONV_INIT, name='expand_conv')(x)
      x = nn.relu6(_bn('expand_norm', use_running_average)(x))
    x = DepthwiseConv(self.kernel, self.stride, name='depthwise_conv')(x)
    x = nn.relu6(_bn('depthwise_norm', use_running_average)(x))
    x = nn.Conv(self.out_channels, (1, 1), use_bias=False, kernel_init=_CONV_INIT, name='project_conv')(x)
    x = _bn('project_norm', use_running_average)(x)
    if self.stride == 1 and self.in_channels == self.out_channels:
      x = x + inputs
    return x


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite backbone (see the module docstring). Output: (B, 1280) pooled features."""
  variant: str = 'lite0'
  input_mean: Sequence[float] | None = TF_LITE_MEAN
  input_std: Sequence[float] | None = TF_LITE_STD
  drop_last: int = 0

  def block_modules(self) -> list[tuple[Any, dict[str, int]]]:
    blocks: list[tuple[Any, dict[str, int]]] = [(ConvBNAct, {'features': STEM_CHANNELS, 'kernel': 3, 'stride': 2})]
    blocks += [(MBConv, cfg) for cfg in block_configs(self.variant)]
    blocks.append((ConvBNAct, {'features': HEAD_CHANNELS, 'kernel': 1, 'stride': 1}))
    return blocks[:len(blocks) - self.drop_last]

  def normalize(self, x: jax.Array) -> jax.Array:
    """[0, 1] images (B, H, W, 1 or 3) → what the first convolution expects."""
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    if x.shape[-1] != 3:
      raise errors.DataError(f'EfficientNet-Lite takes 1- or 3-channel images, got {x.shape[-1]} channels')
    if self.input_mean is not None:
      x = (x - jnp.asarray(self.input_mean, x.dtype)) / jnp.asarray(self.input_std, x.dtype)
    return x

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, frozen: Sequence[str] = ()) -> jax.Array:
    x = self.normalize(x)
    for i, (cls, kwargs) in enumerate(self.block_modules()):
      name = f'block_{i}'
      x = cls(**kwargs, name=name)(x, use_running_average=not train or name in frozen)
    return jnp.mean(x, axis=(1, 2))
