"""Image preprocessing ops and the config-driven `Preprocess` that the input pipelines apply.

    pre = Preprocess(resize=(256, 256), crop=(224, 224), flip=True, normalize='imagenet')
    pre.output_shape((500, 375, 3))          # (224, 224, 3): what the model is initialised with
    ex = pre.train_example(ex, rng)          # uint8 in, uint8 out: resize → random crop → random flip
    ex = pre.eval_example(ex)                # resize → centre crop
    x = pre.normalize_batch(x01)             # float32 [0, 1] → (x - mean) / std, channel-wise

Order: resize (train and eval) → crop (train: a random window, eval: the centre one) → horizontal flip
(train only, p = 1/2) → normalise (after the batch is float32 in [0, 1]). Randomness comes only from the
`rng` the pipeline passes in, which is seeded by (seed, position in the stream) — so the batch at step s
stays a pure function of (seed, s), augmentation included.

Resize policies (PIL, bicubic, antialiased when shrinking):
  crop    (default) scale so the image covers H×W keeping its aspect ratio, then take the centre H×W;
  pad     scale so the image fits inside H×W keeping its aspect ratio, pad with black;
  stretch scale width and height independently.

Normalisation: '' (none: the model sees [0, 1]), one of NORMALIZATIONS, or explicit `mean`/`std`
per channel. A backbone that carries its own input statistics (the imported EfficientNet-Lite does, see
models/efficientnet.py) wants ''. Three-channel statistics applied to one-channel images use their
channel means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from jaxtransfer import errors

RESIZE_POLICIES = ('crop', 'pad', 'stretch')
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),     # torchvision / timm ImageNet models
    'inception': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),                 # [-1, 1]
    'efficientnet_lite': ((127.0 / 255,) * 3, (128.0 / 255,) * 3),   # TF EfficientNet-Lite: (x - 127) / 128
}


def _size(value: Any, what: str) -> tuple[int, int] | None:
  """(H, W) from None / 0 / '' / int / 'H' / 'HxW' / (H, W)."""
  if value in (None, 0, '', ()):
    return None
  if isinstance(value, str):
    h, _, w = value.lower().partition('x')
    if not (h.strip().isdigit() and (w.strip().isdigit() or not w)):
      raise errors.ConfigError(f'{what}: expected a size H or HxW, got {value!r}')
    value = (int(h), int(w or h))
  elif isinstance(value, (int, np.integer)):
    value = (int(value), int(value))
  size = tuple(int(v) for v in value)
  if len(size) != 2 or min(size) < 1:
    raise errors.ConfigError(f'{what}: expected a size H or (H, W) with H, W >= 1, got {value!r}')
  return size


def resize_pil(img: Image.Image, size: tuple[int, int], policy: str = 'crop') -> Image.Image:
  """`img` resized to H×W = `size` by `policy` (see the module docstring)."""
  if policy not in RESIZE_POLICIES:
    raise errors.ConfigError(f'resize policy must be one of {RESIZE_POLICIES}, got {policy!r}')
  h, w = size
  if img.size == (w, h):
    return img
  if policy == 'stretch':
    return img.resize((w, h), Image.Resampling.BICUBIC)
  iw, ih = img.size
  scale = (max if policy == 'crop' else min)(w / iw, h / ih)
  nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
  if policy == 'crop':
    nw, nh = max(nw, w), max(nh, h)
  img = img.resize((nw, nh), Image.Resampling.BICUBIC)
  if policy == 'crop':
    left, top = (nw - w) // 2, (nh - h) // 2
    return img.crop((left, top, left + w, top + h))
  canvas = Image.new(img.mode, (w, h))
  canvas.paste(img, ((w - nw) // 2, (h - nh) // 2))
  return canvas


def resize(image: np.ndarray, size: tuple[int, int], policy: str = 'crop') -> np.ndarray:
  """uint8 (H', W', C) → uint8 (H, W, C) by `policy`."""
  image = np.asarray(image)
  if image.shape[:2] == tuple(size):
    return image
  squeeze = image.ndim == 3 and image.shape[-1] == 1
  out = np.asarray(resize_pil(Image.fromarray(image[..., 0] if squeeze else image), size, policy))
  return out[..., None] if out.ndim == 2 else out


def crop(image: np.ndarray, size: tuple[int, int], top: int, left: int) -> np.ndarray:
  h, w = size
  return image[top:top + h, left:left + w]


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  return crop(image, size, (image.shape[0] - size[0]) // 2, (image.shape[1] - size[1]) // 2)


def random_crop(image: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  """A uniformly random H×W window of `image` (which must be at least that large)."""
  if image.shape[0] < size[0] or image.shape[1] < size[1]:
    raise errors.ConfigError(f'random crop {size} larger than the image {image.shape[:2]}')
  top = int(rng.integers(0, image.shape[0] - size[0] + 1))
  left = int(rng.integers(0, image.shape[1] - size[1] + 1))
  return crop(image, size, top, left)


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Left-right flip with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """What the pipeline does to each image; every field off by default (then images pass untouched)."""
  resize: tuple[int, int] | None = None
  resize_policy: str = 'crop'
  crop: tuple[int, int] | None = None
  flip: bool = False
  normalize: str = ''
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None

  def __post_init__(self):
    object.__setattr__(self, 'resize', _size(self.resize, 'resize'))
    object.__setattr__(self, 'crop', _size(self.crop, 'random_crop'))
    if self.resize_policy not in RESIZE_POLICIES:
      raise errors.ConfigError(f'resize_policy must be one of {RESIZE_POLICIES}, got {self.resize_policy!r}')
    if self.normalize and self.normalize not in NORMALIZATIONS:
      raise errors.ConfigError(f'normalize must be \'\' or one of {", ".join(NORMALIZATIONS)}, got {self.normalize!r}')
    if (self.mean is None) != (self.std is None):
      raise errors.ConfigError('give both mean and std, or neither')
    if self.normalize and self.mean is not None:
      raise errors.ConfigError('give either normalize=<name> or mean/std, not both')
    if self.std is not None and min(self.std) <= 0:
      raise errors.ConfigError(f'std must be positive, got {self.std}')

  @property
  def is_identity(self) -> bool:
    return not (self.resize or self.crop or self.flip or self.normalize or self.mean is not None)

  @property
  def augments(self) -> bool:
    """Whether training examples are randomly transformed (then features are not a function of the example)."""
    return bool(self.crop or self.flip)

  def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if self.normalize:
      return NORMALIZATIONS[self.normalize]
    return (tuple(self.mean), tuple(self.std)) if self.mean is not None else None

  def output_shape(self, image_shape: Sequence[int | None]) -> tuple[int, ...]:
    """The model's input shape (H, W, C) for stored images of `image_shape`; raises if it is not fixed."""
    h, w, c = image_shape
    if self.resize:
      h, w = self.resize
    if self.crop:
      if h is not None and (self.crop[0] > h or self.crop[1] > w):
        raise errors.ConfigError(f'random_crop {self.crop} is larger than the images ({h}, {w}); resize first')
      h, w = self.crop
    if h is None or w is None:
      raise errors.ConfigError(f'images of shape {tuple(image_shape)} have no fixed size: set a resize (e.g. 224)')
    return (h, w, c)

  def _geometry(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    if self.resize:
      image = resize(image, self.resize, self.resize_policy)
    if self.crop:
      image = random_crop(image, self.crop, rng) if rng is not None else center_crop(image, self.crop)
    if self.flip and rng is not None:
      image = random_flip(image, rng)
    return np.ascontiguousarray(image)

  def train_example(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {**example, 'image': self._geometry(np.asarray(example['image']), rng)}

  def eval_example(self, example: Mapping[str, Any]) -> dict[str, Any]:
    return {**example, 'image': self._geometry(np.asarray(example['image']), None)}

  def normalize_batch(self, images: np.ndarray) -> np.ndarray:
    """float32 (B, H, W, C) in [0, 1] → normalised (unchanged without statistics)."""
    stats = self.stats()
    if stats is None:
      return images
    mean, std = (np.asarray(s, np.float32) for s in stats)
    if images.shape[-1] != len(mean):
      if images.shape[-1] == 1:
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
      else:
        raise errors.ConfigError(f'{len(mean)}-channel statistics for {images.shape[-1]}-channel images')
    return (images - mean) / std


def from_config(input_config: Mapping[str, Any] | Any) -> Preprocess:
  """`Preprocess` from config.input's keys (missing keys = off):

    resize         0 | H | 'HxW' | (H, W)  every image, train and eval
    resize_policy  'crop' | 'pad' | 'stretch'
    random_crop    0 | H | 'HxW' | (H, W)  train: random window; eval: centre window
    flip           bool                     train: random left-right flip
    normalize      '' | 'imagenet' | 'inception' | 'efficientnet_lite'
  """
  get = input_config.get
  return Preprocess(resize=get('resize', None), resize_policy=get('resize_policy', 'crop') or 'crop',
                    crop=get('random_crop', None), flip=bool(get('flip', False)),
                    normalize=get('normalize', '') or '')
