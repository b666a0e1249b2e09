"""The `imagefolder:<dir>` builder on generated folders: layouts, EXIF, bad files, errors, re-preparation."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from jaxtransfer.data import catalog, pipeline
from jaxtransfer.data.builders import imagefolder


def _save(path: str, array: np.ndarray, **kwargs) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def _folder(root, classes=('cat', 'dog'), n=5, shape=(12, 16, 3), split=None) -> str:
  """root/[split/]<class>/<i>.png; image i of class c has all pixels = 10 * c + i."""
  for c, name in enumerate(classes):
    for i in range(n):
      base = os.path.join(root, split, name) if split else os.path.join(root, name)
      _save(os.path.join(base, f'{i}.png'), np.full(shape, 10 * c + i, np.uint8).squeeze())
  return str(root)


@pytest.fixture
def tfds_dir(tmp_path) -> str:
  return str(tmp_path / 'tfds')


def test_class_layout_seeded_split_and_class_names(tmp_path, tfds_dir):
  root = _folder(tmp_path / 'pets', classes=('dog', 'cat', 'bird'), n=5)
  name = f'imagefolder:{root}?test=0.4&seed=3'
  info = catalog.info(name, data_dir=tfds_dir)
  assert info.class_names == ('bird', 'cat', 'dog')             # sorted folder names
  assert info.splits == {'train': 9, 'test': 6}                   # 2 of 5 per class in test
  assert info.image_shape == (12, 16, 3)                          # one size everywhere: kept
  train, test = (catalog.load(name, s, data_dir=tfds_dir) for s in ('train', 'test'))
  seen = set()
  for src in (train, test):
    for i in range(len(src)):
      ex = src[i]
      value = int(ex['image'][0, 0, 0])
      # Pixel value 10*c+i was written for folder name c in ('dog','cat','bird'); label is by sorted name.
      assert info.class_names[ex['label']] == ('dog', 'cat', 'bird')[value // 10]
      seen.add(value)
  assert len(seen) == 15                                          # every file once, no overlap
  y = catalog.labels(name, 'train', data_dir=tfds_dir)
  assert y.tolist() == [train[i]['label'] for i in range(len(train))]
  batch = next(pipeline.train_batches(train, batch_size=4, seed=0))
  assert batch['image'].shape == (4, 12, 16, 3) and batch['image'].dtype == np.float32


def test_corrupt_and_truncated_files_are_skipped_and_reported(tmp_path, tfds_dir, caplog):
  root = _folder(tmp_path / 'imgs', n=4, split='train')
  _folder(tmp_path / 'imgs', n=2, split='test')
  with open(os.path.join(root, 'train', 'cat', 'garbage.jpg'), 'wb') as f:
    f.write(b'this is not an image')
  good = os.path.join(root, 'train', 'dog', 'big.jpg')
  _save(good, np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8), quality=95)
  data = open(good, 'rb').read()
  with open(os.path.join(root, 'train', 'dog', 'truncated.jpg'), 'wb') as f:
    f.write(data[:len(data) // 2])
  with open(os.path.join(root, 'train', 'dog', 'notes.txt'), 'w') as f:  # not an image extension: ignored
    f.write('x')
  with caplog.at_level(logging.WARNING):
    info = catalog.info(f'imagefolder:{root}', data_dir=tfds_dir)
  assert info.splits == {'train': 9, 'test': 4}                  # 8 + big.jpg; the two bad ones skipped
  warning = [r.getMessage() for r in caplog.records if 'skipped 2 of 11' in r.getMessage()]
  assert warning and 'garbage.jpg' in warning[0] and 'truncated.jpg' in warning[0]
  skipped = imagefolder.skipped_files(catalog.prepare(f'imagefolder:{root}', data_dir=tfds_dir))
  assert sorted(p for p, _ in skipped['train']) == ['train/cat/garbage.jpg', 'train/dog/truncated.jpg']
  assert skipped['test'] == []


def test_exif_orientation_is_honoured(tmp_path, tfds_dir):
  # Stored 8 high × 16 wide, left half white; EXIF 6 = "rotate 90° clockwise to display" → 16 × 8, top white.
  stored = np.zeros((8, 16), np.uint8)
  stored[:, :8] = 255
  exif = Image.Exif()
  exif[0x0112] = 6
  for c in ('a', 'b'):
    for i in range(2):
      _save(os.path.join(tmp_path, 'rot', c, f'{i}.jpg'), stored, exif=exif.tobytes(), quality=100)
  name = f'imagefolder:{tmp_path}/rot?test=0'
  info = catalog.info(name, data_dir=tfds_dir)
  assert info.image_shape == (16, 8, 1)                           # upright size, grayscale kept
  img = catalog.load(name, 'train', data_dir=tfds_dir)[0]['image'][..., 0].astype(int)
  assert img[:8].mean() > 200 and img[8:].mean() < 50             # the white half is now on top


def test_mixed_sizes_resize_policy_and_channels(tmp_path, tfds_dir):
  _save(os.path.join(tmp_path, 'mix', 'x', 'wide.png'), np.full((10, 40, 3), 200, np.uint8))
  _save(os.path.join(tmp_path, 'mix', 'x', 'tall.png'), np.full((40, 10), 100, np.uint8))
  _save(os.path.join(tmp_path, 'mix', 'y', 'rgba.png'), np.full((20, 20, 4), 50, np.uint8))
  name = f'imagefolder:{tmp_path}/mix?size=8&resize=pad&test=0'
  info = catalog.info(name, data_dir=tfds_dir)
  assert info.image_shape == (8, 8, 3)                            # one RGB(A) image → all RGB
  src = catalog.load(name, 'train', data_dir=tfds_dir)
  wide = next(src[i]['image'] for i in range(len(src)) if src[i]['image'].max() == 200)
  assert wide[0].max() == 0 and wide[4].min() == 200              # padded with black above/below
  with pytest.raises(ValueError, match='unknown option'):
    catalog.info(f'imagefolder:{tmp_path}/mix?colour=1', data_dir=tfds_dir)


def test_empty_class_folder_is_an_error(tmp_path, tfds_dir):
  root = _folder(tmp_path / 'e', n=2)
  os.makedirs(os.path.join(root, 'empty_class'))
  with pytest.raises(ValueError, match="class folder 'empty_class' holds no image"):
    catalog.info(f'imagefolder:{root}', data_dir=tfds_dir)


def test_split_with_classes_the_other_lacks_is_an_error(tmp_path, tfds_dir):
  root = _folder(tmp_path / 's', classes=('a', 'b', 'c'), n=1, split='train')
  _folder(tmp_path / 's', classes=('a', 'b'), n=1, split='test')
  with pytest.raises(ValueError, match="split 'test' lacks 'c'"):
    catalog.info(f'imagefolder:{root}', data_dir=tfds_dir)


def test_prepared_once_and_again_when_files_change(tmp_path, tfds_dir, caplog):
  root = _folder(tmp_path / 'live', n=3)
  name = f'imagefolder:{root}?test=0'
  with caplog.at_level(logging.INFO):
    first = catalog.prepare(name, data_dir=tfds_dir)
    assert sum('Prepared imagefolder' in r.getMessage() for r in caplog.records) == 1
    again = catalog.prepare(name, data_dir=tfds_dir)                # unchanged: reused
    assert sum('Prepared imagefolder' in r.getMessage() for r in caplog.records) == 1
  assert os.fspath(again.data_dir) == os.fspath(first.data_dir)
  assert len(catalog.load(name, 'train', data_dir=tfds_dir)) == 6

  _save(os.path.join(root, 'cat', 'new.png'), np.zeros((12, 16, 3), np.uint8))   # add a file
  src = catalog.load(name, 'train', data_dir=tfds_dir)
  assert len(src) == 7
  changed = catalog.prepare(name, data_dir=tfds_dir)
  assert os.fspath(changed.data_dir) != os.fspath(first.data_dir)
  assert not os.path.exists(os.fspath(first.data_dir))             # the stale dataset is gone

  os.remove(os.path.join(root, 'dog', '0.png'))                     # remove one
  assert len(catalog.load(name, 'train', data_dir=tfds_dir)) == 6


def test_progress_line_while_preparing(tmp_path, tfds_dir, caplog, monkeypatch):
  monkeypatch.setattr(imagefolder, 'PROGRESS_EVERY_S', 0.0)
  root = _folder(tmp_path / 'p', n=3)
  with caplog.at_level(logging.INFO):
    catalog.prepare(f'imagefolder:{root}?test=0', data_dir=tfds_dir)
  lines = [r.getMessage() for r in caplog.records if 'images (' in r.getMessage()]
  assert lines and '/6 images' in lines[-1]


def test_not_a_folder_or_no_classes(tmp_path, tfds_dir):
  with pytest.raises(ValueError, match='not a directory'):
    catalog.info(f'imagefolder:{tmp_path}/nope', data_dir=tfds_dir)
  os.makedirs(tmp_path / 'flat')
  _save(str(tmp_path / 'flat' / 'x.png'), np.zeros((4, 4), np.uint8))
  with pytest.raises(ValueError, match='no class folders'):
    catalog.info(f'imagefolder:{tmp_path}/flat', data_dir=tfds_dir)
