"""`glyphs`: printed characters rendered offline, made to look handwritten-ish (task A).

62 classes, label names '0'..'9', 'A'..'Z', 'a'..'z' in that order (so the digits are
labels 0-9 and line up with MNIST labels). Each example is a 28x28x1 uint8 image, white
glyph on black, fitted into a 20x20 box and centred by centre of mass in 28x28 like MNIST.

Glyphs come from the TrueType fonts that matplotlib ships (nothing is downloaded). A font
is used only if its cmap covers all 62 characters, it draws 62 distinct bitmaps (catches
"last resort" fonts that draw the same box for everything) and it is not a math-symbol
font (cmsy10/cmex10 map ASCII codes to symbols). See `font_report()`.

Every example is a pure function of (config seed, split, index): rendering is
byte-identical whether it runs in one process or in a pool, and across runs. The pool
(large splits) is a 'spawn' pool: no fork of a process in which JAX has started.

    import tensorflow_datasets as tfds
    from jaxtransfer.data.builders import glyphs
    b = glyphs.Glyphs(config='small', data_dir='/tmp/tfds')
    b.download_and_prepare(file_format='array_record')
    src = b.as_data_source('train')      # src[0] == {'image': (28,28,1) uint8, 'label': int}
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import multiprocessing
import os
import string
import time
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
import tensorflow_datasets as tfds

from jaxtransfer.data import builders

log = logging.getLogger(__name__)

CHARS = string.digits + string.ascii_uppercase + string.ascii_lowercase
CLASS_NAMES = tuple(CHARS)
NUM_CLASSES = len(CHARS)  # 62
IMAGE_SHAPE = (28, 28, 1)

# Math fonts whose cmap maps ASCII codes to symbols rather than letters/digits.
SYMBOL_FONTS = frozenset({'cmsy10', 'cmex10'})

_SPLIT_IDS = {'train': 0, 'test': 1}
_CANVAS = 64  # working canvas (px); the glyph is ~2x the final 20 px box
_GLYPH_PX = 34  # longest side of the glyph's bounding box on that canvas
_POOL_MIN_EXAMPLES = 10_000  # render in a process pool from this split size on
_POOL_PROCESSES = 2
_CHUNK = 500
_STROKE_CDF = np.cumsum([0.35, 0.4, 0.2, 0.05])[:-1]  # P(stroke_width = 0, 1, 2, 3 px)


def font_dir() -> str:
  import matplotlib  # local: only needed to find the fonts

  return os.path.join(matplotlib.get_data_path(), 'fonts', 'ttf')


@functools.lru_cache(maxsize=None)
def font_report() -> tuple[tuple[str, ...], dict[str, str]]:
  """Returns (usable font paths, sorted) and {excluded font file: reason}."""
  from fontTools.ttLib import TTFont  # matplotlib dependency

  used, excluded = [], {}
  for fname in sorted(os.listdir(font_dir())):
    if not fname.lower().endswith('.ttf'):
      continue
    path = os.path.join(font_dir(), fname)
    stem = os.path.splitext(fname)[0]
    if stem in SYMBOL_FONTS:
      excluded[fname] = 'math symbol font'
      continue
    cmap = TTFont(path, lazy=True).getBestCmap() or {}
    missing = [c for c in CHARS if ord(c) not in cmap]
    if missing:
      excluded[fname] = f'cmap lacks {len(missing)} of 62 chars (e.g. {"".join(missing[:5])!r})'
      continue
    font = ImageFont.truetype(path, 32)
    bitmaps = set()
    for c in CHARS:
      im = Image.new('L', (48, 48))
      ImageDraw.Draw(im).text((24, 24), c, font=font, fill=255, anchor='mm')
      bitmaps.add(im.tobytes())
    if len(bitmaps) < NUM_CLASSES:
      excluded[fname] = f'draws only {len(bitmaps)} distinct glyphs (placeholder boxes)'
      continue
    used.append(path)
  if not used:
    raise RuntimeError(f'No usable font in {font_dir()}: {excluded}')
  return tuple(used), excluded


@functools.lru_cache(maxsize=None)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
  return ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=None)
def _glyph_size(path: str, char: str) -> float:
  """Font size at which `char`'s bounding box has longest side _GLYPH_PX."""
  l, t, r, b = _font(path, 100).getbbox(char)
  return 100.0 * _GLYPH_PX / max(r - l, b - t, 1)


@functools.lru_cache(maxsize=4)
def _elastic_tables(h: int, w: int, nodes: int = 4):
  """Pixel grid and the (size, nodes) linear-interpolation matrices for the field."""
  def up(n):
    return np.stack([np.interp(np.linspace(0, nodes - 1, n), np.arange(nodes), e)
                     for e in np.eye(nodes)], axis=1).astype(np.float32)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  return yy, xx, up(h), up(w)


def _elastic(img: np.ndarray, rng: np.random.Generator, alpha: float) -> np.ndarray:
  """Elastic distortion: a smooth random displacement field (4x4 grid of N(0, alpha) px
  displacements, interpolated), then bilinear resampling. `img` is float32 (h, w)."""
  h, w = img.shape
  yy, xx, uh, uw = _elastic_tables(h, w)
  coarse = rng.standard_normal((2, 4, 4)).astype(np.float32) * np.float32(alpha)
  sy = np.clip(yy + uh @ coarse[0] @ uw.T, 0, h - 1.001)
  sx = np.clip(xx + uh @ coarse[1] @ uw.T, 0, w - 1.001)
  y0, x0 = sy.astype(np.int32), sx.astype(np.int32)
  fy, fx = sy - y0, sx - x0
  flat, i = img.ravel(), y0 * w + x0
  top = flat[i] * (1 - fx) + flat[i + 1] * fx
  bot = flat[i + w] * (1 - fx) + flat[i + w + 1] * fx
  return top * (1 - fy) + bot * fy


def render(label: int, rng: np.random.Generator, fonts: tuple[str, ...]) -> np.ndarray:
  """Renders one jittered glyph of class `label`; returns (28, 28, 1) uint8."""
  font_path = fonts[rng.integers(len(fonts))]
  char = CHARS[label]
  # Size the font so every glyph's bounding box has about the same longest side: lowercase
  # letters then get the same relative stroke weight as capitals once fitted to 20 px.
  size = max(8, int(_glyph_size(font_path, char) * rng.uniform(0.9, 1.1)))
  font = _font(font_path, size)
  # Stroke weight: PIL's stroke_width thickens the outline (bold-ish), biased to heavier
  # strokes since MNIST pen strokes are ~2-3 px at 28x28.
  stroke = int(np.searchsorted(_STROKE_CDF, rng.random(), side='right'))
  x0, y0, x1, y1 = font.getbbox(char, stroke_width=stroke)
  im = Image.new('L', (_CANVAS, _CANVAS), 0)
  c = _CANVAS / 2
  ImageDraw.Draw(im).text((c - (x0 + x1) / 2, c - (y0 + y1) / 2), char, font=font, fill=255,
                          stroke_width=stroke, stroke_fill=255)

  # Random affine about the centre: rotation, anisotropic scale, shear.
  theta = np.deg2rad(rng.uniform(-14, 14))
  shear = rng.uniform(-0.3, 0.3)
  sx, sy = rng.uniform(0.8, 1.15), rng.uniform(0.85, 1.15)
  # forward map = rotation @ [[sx, shear*sy], [0, sy]]; PIL wants its inverse (output ->
  # input). Scalar maths on purpose: tiny np.linalg calls go through BLAS/LAPACK threads.
  cos, sin = float(np.cos(theta)), float(np.sin(theta))
  a, b, c_, d = cos * sx, cos * shear * sy - sin * sy, sin * sx, sin * shear * sy + cos * sy
  det = a * d - b * c_
  ia, ib, ic, id_ = d / det, -b / det, -c_ / det, a / det
  im = im.transform(im.size, Image.AFFINE,
                    (ia, ib, c - (ia + ib) * c, ic, id_, c - (ic + id_) * c),
                    resample=Image.BILINEAR)

  # Extra stroke variation: thicken (MaxFilter), or thin (MinFilter) only strokes that
  # were thickened above (eroding a plain serif font wipes out its hairlines).
  r = rng.random()
  if r < 0.12:
    im = im.filter(ImageFilter.MaxFilter(3))
  elif r < 0.25 and stroke >= 2:
    im = im.filter(ImageFilter.MinFilter(3))

  # MNIST-style normalisation: fit the bounding box into a (jittered) 20x20 box keeping
  # the aspect ratio, then centre by centre of mass in 28x28 (plus a small shift).
  bbox = im.getbbox()
  if bbox is None:  # cannot happen with the fonts above; keep the image black
    return np.zeros(IMAGE_SHAPE, np.uint8)
  im = im.crop(bbox)
  box = rng.uniform(17.0, 20.0)
  scale = box / max(im.size)
  nw, nh = max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))
  glyph = np.asarray(im.resize((nw, nh), Image.LANCZOS), dtype=np.float32)
  tot = glyph.sum() + 1e-6
  cy = (glyph.sum(1) * np.arange(nh)).sum() / tot
  cx = (glyph.sum(0) * np.arange(nw)).sum() / tot
  ty = int(round(14 - cy + rng.uniform(-1.5, 1.5)))
  tx = int(round(14 - cx + rng.uniform(-1.5, 1.5)))
  ty, tx = int(np.clip(ty, 0, 28 - nh)), int(np.clip(tx, 0, 28 - nw))
  out = np.zeros((28, 28), np.float32)
  out[ty:ty + nh, tx:tx + nw] = glyph

  if rng.random() < 0.8:
    out = _elastic(out, rng, alpha=rng.uniform(0.4, 1.1))
  sigma = rng.uniform(0.0, 0.8)
  if sigma > 0.4:
    out = np.asarray(Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
                     .filter(ImageFilter.GaussianBlur(sigma)), np.float32)
  # Rescale so the brightest pixel is ~255 (like MNIST), then add light noise.
  out *= 255.0 / max(out.max(), 1.0)
  if rng.random() < 0.3:
    out += rng.normal(0.0, rng.uniform(2.0, 8.0), out.shape)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)[:, :, None]


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, _SPLIT_IDS[split], index])


def split_labels(seed: int, split: str, n: int) -> np.ndarray:
  """Balanced labels (n // 62 or n // 62 + 1 per class) in a seeded random order."""
  labels = np.arange(n) % NUM_CLASSES
  np.random.default_rng([seed, _SPLIT_IDS[split], 2**32 - 1]).shuffle(labels)
  return labels


def render_example(seed: int, split: str, index: int, label: int,
                   fonts: tuple[str, ...] | None = None) -> np.ndarray:
  return render(int(label), example_rng(seed, split, index), fonts or font_report()[0])


_WORKER_FONTS: tuple[str, ...] = ()


def _init_worker(fonts, parent: int | None = None):
  global _WORKER_FONTS
  _WORKER_FONTS = tuple(fonts)
  if parent is not None:   # a pool worker: it ends with the preparing process, even a killed one
    from jaxtransfer import workers
    workers.exit_with_parent(parent)


def _render_chunk(args):
  seed, split, start, labels = args
  return [render_example(seed, split, start + i, lab, _WORKER_FONTS)
          for i, lab in enumerate(labels)]


def _chunks(seed, split, labels, first=0):
  for start in range(first, len(labels), _CHUNK):
    yield seed, split, start, labels[start:start + _CHUNK]


def _rendered(seed: int, split: str, labels: np.ndarray,
              fonts: tuple[str, ...]) -> Iterator[list[np.ndarray]]:
  """The split's images, chunk by chunk in order: in a process pool from _POOL_MIN_EXAMPLES on.

  The pool is 'spawn', never fork: data is prepared after JAX has started its threads (train.train
  builds the mesh first), and forking a multithreaded process can deadlock. Each worker starts a fresh
  interpreter and imports this module (~1 s, in parallel) and, as every spawn pool does, the caller's
  __main__ module. A worker that fails to start (a script without an `if __name__ == '__main__':`
  guard re-runs itself there) breaks the pool: the rest is rendered here, with a warning. Every image
  is a pure function of (seed, split, index), so the output is the same either way.
  """
  done = 0
  if len(labels) >= _POOL_MIN_EXAMPLES:
    pool = concurrent.futures.ProcessPoolExecutor(
        _POOL_PROCESSES, mp_context=multiprocessing.get_context('spawn'), initializer=_init_worker,
        initargs=(fonts, os.getpid()))
    try:
      for images in pool.map(_render_chunk, _chunks(seed, split, labels)):
        yield images
        done += len(images)
    except concurrent.futures.BrokenExecutor as e:  # BrokenProcessPool: a worker died
      log.warning('glyphs %s: the rendering pool broke (%s; a script that prepares data needs an '
                  "`if __name__ == '__main__':` guard); rendering the remaining %d examples in this process",
                  split, e, len(labels) - done)
    finally:
      pool.shutdown(wait=True, cancel_futures=True)
  _init_worker(fonts)
  yield from map(_render_chunk, _chunks(seed, split, labels, first=done))


@dataclasses.dataclass(eq=False)
class GlyphsConfig(tfds.core.BuilderConfig):
  num_train: int = 50_000
  num_test: int = 5_000
  seed: int = 0


class Glyphs(tfds.core.GeneratorBasedBuilder):
  """Printed characters (62 classes) with handwriting-like jitter, 28x28x1 uint8."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      GlyphsConfig(name='default', description='50k train / 5k test.',
                   num_train=50_000, num_test=5_000, seed=0),
      GlyphsConfig(name='small', description='3k train / 500 test, for tests.',
                   num_train=3_000, num_test=500, seed=0),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  def _info(self) -> tfds.core.DatasetInfo:
    return builders.image_label_info(self, __doc__.split('\n\n')[0], IMAGE_SHAPE,
                                     tfds.features.ClassLabel(names=CLASS_NAMES))

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    return {
        'train': self._generate_examples('train', cfg.num_train),
        'test': self._generate_examples('test', cfg.num_test),
    }

  def _generate_examples(self, split: str, n: int):
    cfg = self.builder_config
    labels = split_labels(cfg.seed, split, n)
    t0, done = time.time(), 0
    for images in _rendered(cfg.seed, split, labels, font_report()[0]):
      for img in images:
        yield done, {'image': img, 'label': int(labels[done])}
        done += 1
      if done % 10_000 < _CHUNK or done == n:
        log.info('glyphs/%s %s: rendered %d/%d (%.0f/s)', cfg.name, split, done, n,
                 done / max(time.time() - t0, 1e-9))
