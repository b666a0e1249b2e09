"""Unlabelled data for self-supervised pretraining (issue #17, item 4): pooled datasets, the USPS digits, and
the proof that no test image of any evaluation set enters the pretraining pool."""

import hashlib
import os

import numpy as np
import pytest

from jaxtransfer import errors
from jaxtransfer.data import catalog, pool

SHARED = os.environ.get('JAXTRANSFER_SHARED_DATA') or os.path.normpath(
    os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))
needs_usps = pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, 'usps.npz')),
                                reason=f'usps.npz not in {SHARED} (real data, not shipped; set JAXTRANSFER_SHARED_DATA)')
needs_mnist = pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, 'mnist-t10k-images-idx3-ubyte.gz')),
                                 reason=f'the MNIST test set is not in {SHARED}')


def test_a_pool_reads_its_members_one_after_the_other(data_dir):
  name = 'pool:glyphs/small+glyphs/small'
  one = catalog.load('glyphs/small', 'test', data_dir=data_dir)
  both = catalog.load(name, 'test', data_dir=data_dir)
  n = len(one)
  assert len(both) == 2 * n
  for i in (0, n - 1, n, 2 * n - 1):
    np.testing.assert_array_equal(both[i]['image'], one[i % n]['image'])
  got = both.__getitems__([2 * n - 1, 0, n])
  np.testing.assert_array_equal(got[0]['image'], one[n - 1]['image'])
  assert [g['label'] for g in got] == [one[n - 1]['label'], one[0]['label'], one[0]['label']]
  info = catalog.info(name, data_dir)
  assert info.splits['test'] == 2 * n and info.image_shape == (28, 28, 1)
  y = catalog.labels(name, 'test', data_dir)
  assert len(y) == 2 * n and y[n] == one[0]['label']
  assert len(catalog.load(name, 'test[:10]', data_dir=data_dir)) == 20     # a slice of each member
  with pytest.raises(IndexError):
    both[2 * n]


def test_bad_pools_are_one_line(data_dir):
  with pytest.raises(errors.DataError, match='two or more datasets'):
    pool.members('pool:glyphs')
  with pytest.raises(errors.DataError, match='cannot hold another pool'):
    pool.members('pool:glyphs+pool:a+b')
  with pytest.raises(errors.DataError, match='a pool needs one image shape'):
    catalog.info('pool:glyphs/small+scenes/small', data_dir)


@needs_usps
def test_usps_digits_fill_their_box(data_dir):
  raw = np.load(os.path.join(SHARED, 'usps.npz'))
  src = catalog.load('real_digits/usps', 'test', data_dir=data_dir, manual_dir=SHARED)
  assert len(src) == len(raw['y_test']) == 2007
  assert catalog.info('real_digits/usps', data_dir, manual_dir=SHARED).splits == {'train': 7291, 'test': 2007}
  x = np.stack([src[i]['image'] for i in range(200)])
  assert x.shape == (200, 28, 28, 1) and x.dtype == np.uint8
  assert [src[i]['label'] for i in range(5)] == raw['y_test'][:5].tolist()
  # Full-frame: USPS ink reaches the outer 4-pixel band that MNIST's 20×20-in-28×28 framing leaves empty.
  band = lambda imgs: np.concatenate([imgs[:, :4].ravel(), imgs[:, -4:].ravel()]).mean()
  mnist = catalog.load('real_digits', 'test', data_dir=data_dir)
  m = np.stack([mnist[i]['image'] for i in range(200)])
  assert band(x) > 5 * band(m)


def _hashes(name: str, split: str, data_dir: str) -> set[str]:
  src = catalog.load(name, split, data_dir=data_dir, manual_dir=SHARED)
  return {hashlib.sha1(np.asarray(e['image']).tobytes()).hexdigest() for e in src.__getitems__(range(len(src)))}


@needs_usps
@needs_mnist
def test_no_test_image_enters_the_pretraining_pool(data_dir):
  """The self-supervised digits pool (real_digits train + USPS train) holds no image of any test set the
  experiment evaluates on: real_digits test, USPS test, the MNIST test set — compared pixel for pixel."""
  pretrain = _hashes('pool:real_digits+real_digits/usps', 'train', data_dir)
  assert len(pretrain) > 11000
  for name in ('real_digits', 'real_digits/usps', 'real_digits/mnist_t10k'):
    overlap = pretrain & _hashes(name, 'test', data_dir)
    assert not overlap, f'{len(overlap)} test images of {name} are in the pretraining pool'
