"""`tfds:` text datasets (tfds:imdb_reviews, tfds:glue/sst2) without TensorFlow and without any download:
with `tfds.testing.mock_data`, and from a tiny array_record dataset prepared here with the real builders'
own feature specs (mock_data hands back its generated examples without encoding them, so only a prepared
file exercises TFDS's real decoding of Text features)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxtransfer import errors
from jaxtransfer.data import catalog

N = 40  # examples per mocked split


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=N):
    yield


def test_tensorflow_is_not_installed():
  # What these tests show holds without TensorFlow: if it were installed, they would show nothing about that.
  assert importlib.util.find_spec('tensorflow') is None


@pytest.mark.parametrize('name, raw_name, raw_key', [
    ('tfds:imdb_reviews', 'imdb_reviews', 'text'),          # supervised keys ('text', 'label')
    ('tfds:glue/sst2', 'glue/sst2', 'sentence'),            # no supervised keys: the one Text feature
])
def test_mocked_text_dataset_reads_as_text_and_label(mock_tfds, name, raw_name, raw_key):
  info = catalog.info(name)
  assert (info.num_classes, info.class_names, info.image_shape) == (2, ('neg', 'pos') if 'imdb' in name
                                                                    else ('negative', 'positive'), ())
  src = catalog.load(name, 'train')
  raw = tfds.builder(raw_name).as_data_source('train')
  assert len(src) == N
  for i in (0, 7, N - 1):
    ex = src[i]
    assert set(ex) == {'text', 'label'} and isinstance(ex['text'], bytes) and isinstance(ex['label'], int)
    assert ex['text'] == raw[i][raw_key].encode('utf-8') and ex['label'] == int(raw[i]['label'])
  y = catalog.labels(name, 'train')
  assert y.tolist() == [src[i]['label'] for i in range(N)] and set(y.tolist()) <= {0, 1}
  head = catalog.load(name, 'train[:25%]')
  assert len(head) == N // 4 and [head[i]['text'] for i in range(3)] == [src[i]['text'] for i in range(3)]


def test_text_datasets_take_no_image_options(mock_tfds):
  with pytest.raises(errors.DataError, match='size/resize apply to images; imdb_reviews is a text dataset'):
    catalog.info('tfds:imdb_reviews?size=32')
  with pytest.raises(errors.DataError, match='text dataset'):
    catalog.load('tfds:glue:sst2?resize=pad', 'train')


def test_text_pairs_are_an_error(mock_tfds):
  with pytest.raises(errors.DataError, match=r'^tfds:glue/rte: no supervised keys and 2 text features '
                                             r'\(sentence1, sentence2\): text pairs are not supported$'):
    catalog.load('tfds:glue:rte', 'train')


# ------------------------------------------------- a real prepared array_record, read back without TF

TEXTS = ['a wonderful film ☺', 'terrible, boring — avoid', 'Ünïcödé and "quotes"', 'fine', 'meh.']


def prepare_tiny(name: str, data_dir: str, split_labels: dict[str, list[int]], key: str) -> None:
  """Prepare `tfds:<name>` in `data_dir` from TEXTS with the real builder's own info (features, version,
  config), generating the examples here instead of downloading them."""
  real = type(catalog.builder(name, data_dir=data_dir))
  parsed = catalog.parse_tfds_name(name)

  class Tiny(real, skip_registration=True):
    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(labels) for s, labels in split_labels.items()}

    def _generate_examples(self, labels):
      for i, label in enumerate(labels):
        ex = {key: TEXTS[i % len(TEXTS)], 'label': label}
        if 'idx' in self.info.features:
          ex['idx'] = i
        yield i, ex

  Tiny.name = real.name
  kwargs = {'config': parsed.config} if parsed.config else {}
  Tiny(data_dir=data_dir, **kwargs).download_and_prepare(file_format='array_record')


def test_prepared_imdb_reviews_decodes_text_without_tensorflow(tmp_path):
  labels = {'train': [0, 1, 1, 0, 1, 0, 0], 'test': [1, 0, 1]}
  prepare_tiny('tfds:imdb_reviews', str(tmp_path), labels, 'text')
  info = catalog.info('tfds:imdb_reviews', str(tmp_path))
  assert info.image_shape == () and info.splits == {'train': 7, 'test': 3} and info.num_classes == 2
  src = catalog.load('tfds:imdb_reviews', 'train', data_dir=str(tmp_path))
  got = [src[i] for i in range(len(src))]
  # (stored order is the builder's own: imdb_reviews shuffles by key hash, hence the sorted comparison)
  assert sorted((ex['text'], ex['label']) for ex in got) == sorted(
      (TEXTS[i % 5].encode('utf-8'), y) for i, y in enumerate(labels['train']))
  assert all(isinstance(ex['text'], bytes) for ex in got)
  assert catalog.labels('tfds:imdb_reviews', 'train', str(tmp_path)).tolist() == [ex['label'] for ex in got]


def test_prepared_glue_sst2_and_its_unlabelled_test_split(tmp_path):
  labels = {'train': [1, 0, 1, 1], 'validation': [0, 1], 'test': [-1, -1, -1]}
  prepare_tiny('tfds:glue:sst2', str(tmp_path), labels, 'sentence')
  src = catalog.load('tfds:glue:sst2', 'validation', data_dir=str(tmp_path))
  assert sorted((src[i]['text'], src[i]['label']) for i in range(2)) == [(TEXTS[0].encode(), 0),
                                                                         (TEXTS[1].encode(), 1)]
  test = catalog.load('tfds:glue:sst2', 'test', data_dir=str(tmp_path))
  with pytest.raises(errors.DataError, match=r'tfds:glue/sst2 split test: example 0 has no label \(-1\)'):
    test[0]
  with pytest.raises(errors.DataError, match='unlabelled'):
    catalog.labels('tfds:glue:sst2', 'test', str(tmp_path))
