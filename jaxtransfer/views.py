"""Random views of images, made inside the jitted step from its key: the augmentations of joint-embedding
pretraining (two views per image, `two_views`), reproducible per (seed, step) and so resumable bit-identically.

    v1, v2 = two_views(images, key, ViewConfig())        # (B, H, W, C) each, float32

One view of an image = one random affine map (a random resized crop — area fraction in `crop_scale`, aspect in
`ratio` — composed with a rotation, a shear and a translation) sampled bilinearly (`jax.scipy.ndimage.
map_coordinates`; outside the image: its own minimum, the background), then a random stroke width (3×3 grey
dilation or erosion, each with probability `stroke / 2` — thicker or thinner pen), a random contrast and
brightness, and an optional left-right flip. Every draw is per image from its own fold of the key. A config
of all zeros and `crop_scale=(1, 1)`, `ratio=(1, 1)` is the identity (tested).
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxtransfer import errors


@dataclasses.dataclass(frozen=True)
class ViewConfig:
  """What a random view may change (module docstring); angles in degrees, translation as a fraction of size."""
  crop_scale: tuple[float, float] = (0.5, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  rotate: float = 15.0
  shear: float = 10.0
  translate: float = 0.1
  stroke: float = 0.4
  contrast: float = 0.4
  brightness: float = 0.2
  flip: bool = False

  def __post_init__(self):
    lo, hi = self.crop_scale
    if not 0 < lo <= hi <= 1:
      raise errors.ConfigError(f'views.crop_scale={self.crop_scale}: expected 0 < low ≤ high ≤ 1')
    if not 0 < self.ratio[0] <= self.ratio[1]:
      raise errors.ConfigError(f'views.ratio={self.ratio}: expected 0 < low ≤ high')
    if not 0 <= self.stroke <= 1 or self.contrast < 0 or self.brightness < 0 or self.translate < 0:
      raise errors.ConfigError(f'views: stroke in [0, 1] and contrast, brightness, translate ≥ 0, got {self}')


def from_config(views: Mapping[str, Any]) -> ViewConfig:
  """A ViewConfig from `config.views` (lists become tuples)."""
  return ViewConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(views).items()})


def _affine(key: jax.Array, h: int, w: int, cfg: ViewConfig) -> tuple[jax.Array, jax.Array]:
  """(2×2 matrix, offset): output pixel p samples the input at M·(p − c) + c + offset, c = the centre."""
  ks = jax.random.split(key, 6)
  area = jax.random.uniform(ks[0], (), minval=cfg.crop_scale[0], maxval=cfg.crop_scale[1])
  log_r = jax.random.uniform(ks[1], (), minval=math.log(cfg.ratio[0]), maxval=math.log(cfg.ratio[1]))
  r = jnp.exp(log_r)
  sy, sx = jnp.minimum(jnp.sqrt(area / r), 1.0), jnp.minimum(jnp.sqrt(area * r), 1.0)   # crop extent / size
  theta = jnp.deg2rad(jax.random.uniform(ks[2], (), minval=-cfg.rotate, maxval=cfg.rotate))
  shear = jnp.deg2rad(jax.random.uniform(ks[3], (), minval=-cfg.shear, maxval=cfg.shear))
  rot = jnp.array([[jnp.cos(theta), -jnp.sin(theta)], [jnp.sin(theta), jnp.cos(theta)]])
  sh = jnp.array([[1.0, 0.0], [jnp.tan(shear), 1.0]])
  m = rot @ sh @ jnp.diag(jnp.stack([sy, sx]))
  size = jnp.array([h, w], jnp.float32)
  # The crop's centre anywhere it fits, plus a translation.
  room = (1.0 - jnp.stack([sy, sx])) / 2
  centre = jax.random.uniform(ks[4], (2,), minval=-1.0, maxval=1.0) * room
  shift = jax.random.uniform(ks[5], (2,), minval=-cfg.translate, maxval=cfg.translate)
  return m, (centre + shift) * size


def _bilinear(images: jax.Array, ys: jax.Array, xs: jax.Array) -> jax.Array:
  """(B, H, W, C) sampled at (B, H·W) float coordinates, bilinearly; 0 outside the image (what
  `map_coordinates(order=1, mode='constant')` computes, as four batched gathers — one per corner, faster on
  CPU than one gather of all four or a vmapped map_coordinates, measured)."""
  b, h, w, c = images.shape
  flat = images.reshape(b, h * w, c)
  y0, x0 = jnp.floor(ys), jnp.floor(xs)
  out = jnp.zeros((b, ys.shape[1], c), images.dtype)
  for dy in (0, 1):
    for dx in (0, 1):
      y, x = y0 + dy, x0 + dx
      weight = (1 - jnp.abs(ys - y)) * (1 - jnp.abs(xs - x))
      inside = (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)
      idx = (jnp.clip(y, 0, h - 1) * w + jnp.clip(x, 0, w - 1)).astype(jnp.int32)
      value = jnp.take_along_axis(flat, idx[..., None], axis=1)
      out = out + jnp.where(inside, weight, 0.0)[..., None] * value
  return out.reshape(b, h, w, c)


def random_views(images: jax.Array, key: jax.Array, cfg: ViewConfig) -> jax.Array:
  """A random view of each image of a batch (B, H, W, C) (module docstring), each image's draws from its own
  fold of `key`; computed batch-wide (one gather per bilinear corner, one dilation and erosion of the batch)."""
  b, h, w, c = images.shape
  images = images.astype(jnp.float32)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
  k_affine, k_stroke, k_contrast, k_bright, k_flip = [jax.vmap(lambda k, j=j: jax.random.fold_in(k, j))(keys)
                                                      for j in range(5)]
  m, offset = jax.vmap(lambda k: _affine(k, h, w, cfg))(k_affine)            # (B, 2, 2), (B, 2)
  centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
  grid = jnp.stack([yy.ravel(), xx.ravel()]) - centre[:, None]                # (2, H·W)
  src = jnp.einsum('bij,jn->bin', m, grid) + (centre + offset)[..., None]     # (B, 2, H·W)
  background = jnp.min(images, axis=(1, 2, 3), keepdims=True)                 # outside the image: its minimum
  out = _bilinear(images - background, src[:, 0], src[:, 1]) + background
  # Stroke width: a 3×3 grey dilation (u < p/2) or erosion (u > 1 − p/2) of the view.
  u = jax.vmap(lambda k: jax.random.uniform(k, ()))(k_stroke)[:, None, None, None]
  window = lambda op, init: jax.lax.reduce_window(out, init, op, (1, 3, 3, 1), (1, 1, 1, 1), 'SAME')
  if cfg.stroke > 0:
    p = cfg.stroke
    out = jnp.where(u < p / 2, window(jax.lax.max, -jnp.inf), jnp.where(u > 1 - p / 2, window(jax.lax.min, jnp.inf), out))
  draw = lambda ks, lo, hi: jax.vmap(lambda k: jax.random.uniform(k, (), minval=lo, maxval=hi))(ks)[:, None, None, None]
  contrast = draw(k_contrast, 1 - cfg.contrast, 1 + cfg.contrast)
  brightness = draw(k_bright, -cfg.brightness, cfg.brightness)
  mean = jnp.mean(out, axis=(1, 2, 3), keepdims=True)
  span = jnp.max(images, axis=(1, 2, 3), keepdims=True) - background
  out = (out - mean) * contrast + mean + brightness * span
  if cfg.flip:
    flip = jax.vmap(jax.random.bernoulli)(k_flip)[:, None, None, None]
    out = jnp.where(flip, out[:, :, ::-1], out)
  return out


def random_view(image: jax.Array, key: jax.Array, cfg: ViewConfig) -> jax.Array:
  """One random view of one image (H, W, C): `random_views` of a batch of one (the same draws)."""
  return random_views(image[None], key, cfg)[0]


def two_views(images: jax.Array, key: jax.Array, cfg: ViewConfig) -> tuple[jax.Array, jax.Array]:
  """Two independent random views of every image (the positive pairs of a joint-embedding method)."""
  k1, k2 = jax.random.split(key)
  return random_views(images, k1, cfg), random_views(images, k2, cfg)
