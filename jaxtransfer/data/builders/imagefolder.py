"""`imagefolder:<dir>`: your own images, prepared once into a TFDS array_record dataset (no TensorFlow).

Layouts (decided by what `<dir>` holds):
  * split layout   `<dir>/<split>/<class>/<image>` — every subfolder of `<dir>` holds only folders;
    the split names are the folder names (`train`, `test`, `validation`, …). Every split must have the
    same classes: a class folder that one split has and another lacks is an error.
  * class layout   `<dir>/<class>/<image>` — split into `train`/`test` per class by a seeded ratio
    (`test=0.2`, `seed=0`): each class's files, sorted by name, are put in a seeded random order and
    the first round(test × n) go to `test` (at least one each way when a class has ≥ 2 files).
Images are files ending in .jpg .jpeg .png .bmp .webp (any case); other files are ignored. Class names
are the folder names, sorted; label i is the i-th name. An empty class folder (no image file) is an
error.

Options follow the path as a query: `imagefolder:/data/pets?size=128&resize=pad&channels=3&test=0.1`.
  size      'H' or 'HxW': the stored image size. Default: the images' own size when they all have one
            size, else 224.
  resize    how an image of another size becomes H×W (PIL, bicubic, antialiased):
              crop    (default) scale so the image covers H×W, keep the aspect ratio, centre-crop;
              pad     scale so the image fits inside H×W, keep the aspect ratio, pad with black;
              stretch scale each side independently.
  channels  1 (grayscale, PIL 'L') or 3 (RGB; alpha is dropped). Default: 1 when every image is
            grayscale, else 3.
  test, seed  the class layout's split (ignored for the split layout).
Every image is first rotated upright as its EXIF Orientation tag says (phone photos), then converted
to the channels, then resized. It is stored as PNG (lossless) and read back as uint8 (H, W, C).

Unreadable or truncated files are skipped and reported, never fatal and never silent: a warning with
the count and the first few paths after each split, and the full list in the prepared dataset's
metadata (`skipped_files(builder)`).

Prepared once, reused: the prepared dataset's config name is `<folder name>_<digest>`, the digest
covering the folder's absolute path, the options and every image file's (path, size, mtime). Adding,
removing or changing a file gives a new digest, so the next use prepares again (and removes the
dataset prepared from the folder's previous state).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

import tensorflow_datasets as tfds

from jaxtransfer import errors
from jaxtransfer.data import preprocess

log = logging.getLogger(__name__)

PREFIX = 'imagefolder:'
EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
RESIZE_POLICIES = preprocess.RESIZE_POLICIES
DEFAULT_SIZE = 224
REPORT_FIRST = 5          # paths named in a skip warning
PROGRESS_EVERY_S = 5.0    # seconds between progress lines while preparing
_GRAY_MODES = frozenset({'1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F'})


class _QuietCustomConfig(logging.Filter):
  """Drops TFDS's 'Using custom data configuration' warning for our per-folder configs (every call makes
  one: the config is derived from the folder, so it is never among BUILDER_CONFIGS)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith('Using custom data configuration')
                and record.args and type(record.args[0]).__name__ == 'ImageFolderConfig')


logging.getLogger('absl').addFilter(_QuietCustomConfig())


class ImageFolderError(errors.Error):
  """The folder cannot become a dataset (no images, empty class, splits with different classes, bad option)."""


@dataclasses.dataclass(frozen=True)
class Options:
  size: tuple[int, int] | None = None
  resize: str = 'crop'
  channels: int | None = None
  test: float = 0.2
  seed: int = 0


IMAGE_OPTIONS = ('size', 'resize', 'channels', 'test', 'seed')
IMAGE_OPTIONS_HELP = f'size=H or HxW, resize={"|".join(RESIZE_POLICIES)}, channels=1|3, test in [0, 1), seed=int'


def split_spec(spec: str, prefix: str, error: type[Exception]) -> tuple[str, list[tuple[str, str]]]:
  """('/abs/path', [(key, value), …]) from '<prefix><path>[?key=value&…]' (or a bare '<path>[?…]')."""
  spec = spec[len(prefix):] if spec.startswith(prefix) else spec
  path, _, query = spec.partition('?')
  if not path:
    raise error(f'{prefix}<path>: no path given in {spec!r}')
  try:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
  except ValueError:
    raise error(f'{spec!r}: bad options {query!r} (expected key=value&key=value)') from None
  return os.path.abspath(os.path.expanduser(path)), pairs


def image_option(key: str, value: str) -> Any:
  """The value of one of the IMAGE_OPTIONS from its text; ValueError when it is out of range."""
  if key == 'size':
    h, _, w = value.lower().partition('x')
    size = (int(h), int(w or h))
    if min(size) < 1:
      raise ValueError(value)
    return size
  if key == 'resize':
    if value not in RESIZE_POLICIES:
      raise ValueError(value)
    return value
  if key == 'channels':
    if int(value) not in (1, 3):
      raise ValueError(value)
    return int(value)
  if key == 'test':
    if not 0.0 <= float(value) < 1.0:
      raise ValueError(value)
    return float(value)
  return int(value)   # seed


def parse(spec: str) -> tuple[str, Options]:
  """('/abs/dir', Options) from 'imagefolder:<dir>[?key=value&…]' (or a bare '<dir>[?…]')."""
  root, pairs = split_spec(spec, PREFIX, ImageFolderError)
  kw: dict[str, Any] = {}
  for key, value in pairs:
    if key not in IMAGE_OPTIONS:
      raise ImageFolderError(f'{spec!r}: unknown option {key!r} (known: {", ".join(IMAGE_OPTIONS)})')
    try:
      kw[key] = image_option(key, value)
    except ValueError:
      raise ImageFolderError(f'{spec!r}: bad value {value!r} for {key} ({IMAGE_OPTIONS_HELP})') from None
  return root, Options(**kw)


def _is_image(name: str) -> bool:
  return name.lower().endswith(EXTENSIONS) and not name.startswith('.')


def _subdirs(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith('.'))


def _images(path: str) -> list[os.DirEntry]:
  return sorted((e for e in os.scandir(path) if e.is_file() and _is_image(e.name)), key=lambda e: e.name)


@dataclasses.dataclass(frozen=True)
class Listing:
  """What the folder holds: {split: [(relative path, label)]}, class names, and a digest of the files."""
  root: str
  layout: str                                       # 'split' | 'class'
  class_names: tuple[str, ...]
  splits: dict[str, list[tuple[str, int]]]
  digest: str


def scan(root: str, options: Options = Options()) -> Listing:
  """Lists the folder (names and stat only, no image is opened) and checks its structure."""
  if not os.path.isdir(root):
    raise ImageFolderError(f'{PREFIX}{root}: not a directory')
  top = _subdirs(root)
  if not top:
    raise ImageFolderError(f'{PREFIX}{root}: no class folders (expected <dir>/<class>/*.jpg or '
                           '<dir>/<split>/<class>/*.jpg)')
  h = hashlib.sha256(f'{root}\0{options}'.encode())
  files: dict[str, dict[str, list[str]]] = {}   # split -> class -> relative paths

  def collect(split: str, cls_dir: str, rel: str) -> None:
    entries = _images(cls_dir)
    if not entries:
      raise ImageFolderError(f'{PREFIX}{root}: class folder {rel!r} holds no image '
                             f'({", ".join(EXTENSIONS)}); remove it or add images')
    names = []
    for e in entries:
      st = e.stat()
      names.append(f'{rel}/{e.name}')
      h.update(f'{rel}/{e.name}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
    files.setdefault(split, {})[os.path.basename(rel)] = names

  # Split layout when no top-level folder holds images directly and each holds folders.
  split_layout = all(_subdirs(os.path.join(root, d)) and not _images(os.path.join(root, d)) for d in top)
  if split_layout:
    for split in top:
      if not re.fullmatch(r'[A-Za-z0-9_]+', split):
        raise ImageFolderError(f'{PREFIX}{root}: split folder {split!r} is not a valid split name '
                               '(letters, digits, _)')
      for cls in _subdirs(os.path.join(root, split)):
        collect(split, os.path.join(root, split, cls), f'{split}/{cls}')
    class_sets = {s: set(c) for s, c in files.items()}
    all_classes = set().union(*class_sets.values())
    lacking = {s: sorted(all_classes - c) for s, c in class_sets.items() if c != all_classes}
    if lacking:
      detail = '; '.join(f'split {s!r} lacks {", ".join(map(repr, m))}' for s, m in lacking.items())
      raise ImageFolderError(f'{PREFIX}{root}: splits have different classes ({detail}); every split '
                             'needs the same class folders')
    class_names = tuple(sorted(all_classes))
    splits = {s: [(p, class_names.index(c)) for c in class_names for p in by_cls[c]]
              for s, by_cls in files.items()}
  else:
    for cls in top:
      collect('all', os.path.join(root, cls), cls)
    class_names = tuple(sorted(files['all']))
    splits = {'train': [], 'test': []}
    for label, cls in enumerate(class_names):
      paths = files['all'][cls]
      n = len(paths)
      n_test = round(options.test * n)
      if n >= 2 and options.test > 0:
        n_test = min(max(n_test, 1), n - 1)
      order = np.random.default_rng([options.seed, label]).permutation(n)
      test_ids = set(order[:n_test].tolist())
      for i, p in enumerate(paths):
        splits['test' if i in test_ids else 'train'].append((p, label))
    splits = {s: v for s, v in splits.items() if v}
  return Listing(root=root, layout='split' if split_layout else 'class', class_names=class_names,
                 splits=splits, digest=h.hexdigest()[:16])


def _upright(img: Image.Image) -> Image.Image:
  """Applies the EXIF Orientation tag (a no-op without one)."""
  return ImageOps.exif_transpose(img)


def _convert(img: Image.Image, channels: int) -> Image.Image:
  if channels == 1:
    if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):  # high bit depth → 8 bit by the image's range
      arr = np.asarray(img, dtype=np.float64)
      hi = arr.max() or 1.0
      return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), 'L')
    return img.convert('L')
  if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
    img = _convert(img, 1)
  return img.convert('RGB')


def load_image(path: str, size: tuple[int, int], channels: int, policy: str) -> np.ndarray:
  """uint8 (H, W, C): EXIF-upright, converted, resized. Raises OSError/ValueError on a bad file."""
  with Image.open(path) as img:
    img.load()  # decodes fully: a truncated file raises here
    out = preprocess.resize_pil(_convert(_upright(img), channels), size, policy)
  arr = np.asarray(out, dtype=np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def _header(path: str) -> tuple[tuple[int, int], bool] | None:
  """((H, W) after EXIF rotation, is grayscale) from the header only; None if unreadable."""
  try:
    with Image.open(path) as img:
      w, h = img.size
      orientation = img.getexif().get(0x0112, 1)
      gray = img.mode in _GRAY_MODES or (img.mode == 'P' and _palette_is_gray(img))
  except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
    return None
  return ((w, h) if orientation in (5, 6, 7, 8) else (h, w)), gray


def _palette_is_gray(img: Image.Image) -> bool:
  pal = img.getpalette() or []
  rgb = np.asarray(pal[:len(pal) // 3 * 3]).reshape(-1, 3)
  return bool(len(rgb)) and bool(np.all(rgb == rgb[:, :1]))


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything preparation needs, fixed before the first example is written."""
  size: tuple[int, int]
  channels: int
  resize: str


def plan(listing: Listing, options: Options) -> Plan:
  """The stored image size and channels: from the options, else from the images' headers."""
  size, channels = options.size, options.channels
  if size is None or channels is None:
    headers = [_header(os.path.join(listing.root, p)) for ex in listing.splits.values() for p, _ in ex]
    headers = [x for x in headers if x is not None]
    if size is None:
      sizes = {s for s, _ in headers}
      size = sizes.pop() if len(sizes) == 1 else (DEFAULT_SIZE, DEFAULT_SIZE)
      if sizes:
        log.info('%s%s: images have different sizes; storing %dx%d (resize=%s)', PREFIX, listing.root,
                 *size, options.resize)
    if channels is None:
      channels = 1 if headers and all(g for _, g in headers) else 3
  return Plan(size=tuple(size), channels=channels, resize=options.resize)


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  root: str = ''
  listing: Listing | None = dataclasses.field(default=None, repr=False)
  plan: Plan | None = None


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """Images from a local folder, one class per subfolder."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    h, w = cfg.plan.size
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Images from {cfg.root} ({cfg.listing.layout} layout).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(h, w, cfg.plan.channels), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=list(cfg.listing.class_names)),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # example i of a split is the i-th file in (class, name) order
        metadata=tfds.core.MetadataDict(root=cfg.root, layout=cfg.listing.layout, resize=cfg.plan.resize,
                                        skipped={}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, examples)
            for split, examples in self.builder_config.listing.splits.items()}

  def _generate_examples(self, split: str, examples: list[tuple[str, int]]) -> Iterator[tuple[int, dict]]:
    cfg = self.builder_config
    skipped: list[tuple[str, str]] = []
    t0 = last = time.time()
    for i, (rel, label) in enumerate(examples):
      path = os.path.join(cfg.root, rel)
      try:
        arr = load_image(path, cfg.plan.size, cfg.plan.channels, cfg.plan.resize)
      except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        skipped.append((rel, f'{type(e).__name__}: {e}'))
        continue
      buf = io.BytesIO()
      Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, 'PNG', compress_level=1)
      yield i, {'image': buf.getvalue(), 'label': label}
      now = time.time()
      if now - last >= PROGRESS_EVERY_S:
        last = now
        log.info('imagefolder %s [%s]: %d/%d images (%.0f/s)', os.path.basename(cfg.root), split, i + 1,
                 len(examples), (i + 1) / (now - t0))
    self.info.metadata['skipped'][split] = skipped
    log.info('imagefolder %s [%s]: %d images prepared in %.1f s', os.path.basename(cfg.root), split,
             len(examples) - len(skipped), time.time() - t0)
    if skipped:
      first = '; '.join(f'{p} ({why})' for p, why in skipped[:REPORT_FIRST])
      more = f' and {len(skipped) - REPORT_FIRST} more' if len(skipped) > REPORT_FIRST else ''
      log.warning('imagefolder %s [%s]: skipped %d of %d files that could not be read: %s%s', cfg.root, split,
                  len(skipped), len(examples), first, more)


def _slug(root: str) -> str:
  return re.sub(r'[^a-z0-9_]+', '_', os.path.basename(root.rstrip('/')).lower()).strip('_') or 'images'


def config_for(spec: str, plan_cache_dir: str | None = None) -> ImageFolderConfig:
  """The builder config of 'imagefolder:<dir>[?…]' in the folder's current state.

  The header scan that decides size/channels (when not given) runs once per folder state: its result
  is cached as JSON in `plan_cache_dir` under the config name.
  """
  root, options = parse(spec)
  listing = scan(root, options)
  name = f'{_slug(root)}_{listing.digest}'
  cache = os.path.join(plan_cache_dir, f'{name}.plan.json') if plan_cache_dir else None
  if cache and os.path.isfile(cache):
    with open(cache) as f:
      p = json.load(f)
    the_plan = Plan(size=tuple(p['size']), channels=p['channels'], resize=p['resize'])
  else:
    the_plan = plan(listing, options)
    if cache:
      os.makedirs(plan_cache_dir, exist_ok=True)
      tmp = f'{cache}.{os.getpid()}.tmp'
      with open(tmp, 'w') as f:
        json.dump(dataclasses.asdict(the_plan), f)
      os.replace(tmp, cache)
  return ImageFolderConfig(name=name, root=root, listing=listing, plan=the_plan,
                           description=f'{root} ({sum(map(len, listing.splits.values()))} files)')


def builder(spec: str, data_dir: str) -> ImageFolder:
  """The (maybe not yet prepared) builder for 'imagefolder:<dir>[?…]' under `data_dir`."""
  cache_dir = os.path.join(data_dir, ImageFolder.name, 'plans')
  return ImageFolder(config=config_for(spec, cache_dir), data_dir=data_dir)


def stale_configs(b: ImageFolder) -> list[str]:
  """Dirs of datasets prepared from earlier states of the same folder (same name, other digest)."""
  base = os.path.join(os.fspath(b.data_dir_root), b.name)
  stem = b.builder_config.name.rsplit('_', 1)[0]
  if not os.path.isdir(base):
    return []
  return [os.path.join(base, d) for d in os.listdir(base)
          if d != b.builder_config.name and d.rsplit('_', 1)[0] == stem
          and re.fullmatch(r'[0-9a-f]{16}', d.rsplit('_', 1)[-1])
          and _root_of(os.path.join(base, d)) == b.builder_config.root]


def _root_of(config_dir: str) -> str | None:
  """The folder a prepared config dir came from (from its metadata.json), None if unknown."""
  for version in os.listdir(config_dir) if os.path.isdir(config_dir) else ():
    meta = os.path.join(config_dir, version, 'metadata.json')
    if os.path.isfile(meta):
      try:
        with open(meta) as f:
          return json.load(f).get('root')
      except (OSError, ValueError):
        return None
  return None


def skipped_files(b: tfds.core.DatasetBuilder) -> dict[str, list[tuple[str, str]]]:
  """{split: [(relative path, reason)]} of the files a prepared image-folder dataset skipped."""
  return {s: [tuple(x) for x in v] for s, v in dict(b.info.metadata.get('skipped', {})).items()}
