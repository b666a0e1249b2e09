"""`tfds:<name>[:<config>]` catalog datasets, offline with `tfds.testing.mock_data` (nothing is downloaded),
and the config-driven preprocessing of the input pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxtransfer.data import catalog, fewshot, pipeline, preprocess

N = 60  # examples per mocked split


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=N):
    yield


@pytest.mark.parametrize('name, shape, classes', [
    ('tfds:mnist', (28, 28, 1), 10),
    ('tfds:cifar10', (32, 32, 3), 10),
    ('tfds:oxford_flowers102?size=40', (40, 40, 3), 102),
])
def test_catalog_dataset_reads_and_batches(mock_tfds, name, shape, classes):
  info = catalog.info(name)
  assert info.num_classes == classes and info.image_shape == shape
  src = catalog.load(name, 'train')
  assert len(src) == N
  ex = src[3]
  assert set(ex) == {'image', 'label'} and ex['image'].shape == shape and ex['image'].dtype == np.uint8
  assert 0 <= ex['label'] < classes
  y = catalog.labels(name, 'train')
  assert y.tolist() == [src[i]['label'] for i in range(len(src))]
  batch = next(pipeline.train_batches(src, batch_size=8, seed=0))
  assert batch['image'].shape == (8, *shape) and batch['image'].dtype == np.float32
  assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0


def test_variable_size_images_need_a_size(mock_tfds):
  with pytest.raises(ValueError, match=r'no fixed size.*\?size='):
    catalog.info('tfds:oxford_flowers102')


def test_config_name_and_unknown_dataset(mock_tfds):
  assert catalog.info('tfds:mnist').name == 'mnist'
  with pytest.raises(ValueError, match='not_a_dataset'):
    catalog.info('tfds:not_a_dataset')
  with pytest.raises(ValueError, match='unknown option'):
    catalog.info('tfds:mnist?colour=1')


def test_split_slicing(mock_tfds):
  full = catalog.load('tfds:cifar10', 'train')
  head = catalog.load('tfds:cifar10', 'train[:10%]')
  tail = catalog.load('tfds:cifar10', 'train[-5:]')
  both = catalog.load('tfds:cifar10', 'train[:10%]+test[10:12]')
  test = catalog.load('tfds:cifar10', 'test')
  assert (len(head), len(tail), len(both)) == (6, 5, 8)
  for i in range(6):
    np.testing.assert_array_equal(head[i]['image'], full[i]['image'])
  np.testing.assert_array_equal(tail[0]['image'], full[N - 5]['image'])
  np.testing.assert_array_equal(both[7]['image'], test[11]['image'])
  assert catalog.labels('tfds:cifar10', 'train[:10%]').tolist() == [full[i]['label'] for i in range(6)]


def test_k_per_class_subset(mock_tfds):
  y = catalog.labels('tfds:mnist', 'train')
  k = int(np.bincount(y, minlength=10).min())       # random mock labels: every class has at least k
  assert k >= 1
  idx = fewshot.k_per_class_indices(y, k, seed=0, num_classes=10)
  src = catalog.load('tfds:mnist', 'train')
  labels = np.array([src[int(i)]['label'] for i in idx])
  assert np.bincount(labels, minlength=10).tolist() == [k] * 10
  assert fewshot.k_per_class_indices(y, k, seed=0, num_classes=10).tolist() == idx.tolist()
  batch = next(pipeline.train_batches(src, batch_size=2 * k, seed=0, indices=idx))
  assert set(batch['label'].tolist()) <= set(labels.tolist())
  with pytest.raises(ValueError, match='fewer'):
    fewshot.k_per_class_indices(y, N, seed=0, num_classes=10)


# ---------------------------------------------------------------------------- preprocessing


def _source(n=12, shape=(10, 12, 3)):
  rng = np.random.default_rng(0)
  return [{'image': rng.integers(0, 256, shape, dtype=np.uint8), 'label': i} for i in range(n)]


def test_preprocess_shapes_and_normalisation():
  pre = preprocess.Preprocess(resize=(16, 16), crop=(12, 12), flip=True, normalize='imagenet')
  assert pre.output_shape((10, 12, 3)) == (12, 12, 3)
  batch = next(pipeline.eval_batches(_source(), batch_size=5, preprocess=pre))
  assert batch['image'].shape == (5, 12, 12, 3)
  raw = next(pipeline.eval_batches(_source(), batch_size=5,
                                   preprocess=preprocess.Preprocess(resize=(16, 16), crop=(12, 12))))
  mean, std = (np.asarray(s, np.float32) for s in preprocess.NORMALIZATIONS['imagenet'])
  np.testing.assert_allclose(batch['image'], (raw['image'] - mean) / std, rtol=1e-6)
  with pytest.raises(ValueError, match='larger than the images'):
    preprocess.Preprocess(crop=20).output_shape((10, 12, 3))
  with pytest.raises(ValueError, match='no fixed size'):
    preprocess.Preprocess().output_shape((None, None, 3))
  cfg = {'resize': '16x20', 'random_crop': 8, 'flip': True, 'normalize': 'inception'}
  assert preprocess.from_config(cfg) == preprocess.Preprocess(resize=(16, 20), crop=(8, 8), flip=True,
                                                               normalize='inception')


def test_augmentation_is_a_pure_function_of_seed_and_step():
  pre = preprocess.Preprocess(crop=(6, 6), flip=True)
  src = _source()
  run = lambda seed, start: [b['image'] for b, _ in zip(
      pipeline.train_batches(src, batch_size=4, seed=seed, start_step=start, preprocess=pre), range(4))]
  a, resumed, other = run(0, 0), run(0, 2), run(1, 0)
  np.testing.assert_array_equal(a[2], resumed[0])                 # resume at step 2: identical batches
  np.testing.assert_array_equal(a[3], resumed[1])
  np.testing.assert_array_equal(a[0], run(0, 0)[0])               # same seed: identical
  assert not np.array_equal(a[0], other[0])
  # The crop really varies: the same example appears with different windows across epochs.
  views = {b.tobytes() for b in np.concatenate(run(0, 0) + run(0, 4))}
  assert len(views) > len(src)


def test_eval_preprocessing_is_deterministic_centre_crop():
  src = _source(n=3)
  pre = preprocess.Preprocess(crop=(4, 6))
  batch = next(pipeline.eval_batches(src, batch_size=4, preprocess=pre))
  np.testing.assert_array_equal(batch['image'][0], src[0]['image'][3:7, 3:9].astype(np.float32) * np.float32(1 / 255))
  assert batch['mask'].tolist() == [1, 1, 1, 0]
