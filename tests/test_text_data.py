"""Text datasets: wikitext2 and sentiment_sentences from ../shared/data, and the user's own `textfile:`."""

import logging
import os

import numpy as np
import pytest

from jaxtransfer import errors
from jaxtransfer.data import catalog
from jaxtransfer.data.builders import text

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared', 'data')
SHARED = os.environ.get('JAXTRANSFER_SHARED_DATA', os.path.normpath(SHARED))


def _need(sub: str) -> None:
  if not os.path.isdir(os.path.join(SHARED, sub)):
    pytest.skip(f'../shared/data/{sub} not found ({SHARED}; set JAXTRANSFER_SHARED_DATA)')


def test_wikitext2_splits_and_text(data_dir):
  _need(text.WIKITEXT_DIR)
  info = catalog.info('wikitext2', data_dir, manual_dir=SHARED)
  assert info.num_classes == 0 and info.image_shape == ()
  # One example per non-empty line of each raw file.
  for split, fname in text.WIKITEXT_FILES.items():
    with open(os.path.join(SHARED, text.WIKITEXT_DIR, fname), encoding='utf-8') as f:
      assert info.splits[split] == sum(1 for line in f if line.strip())
  assert info.splits['train'] > 20000
  src = catalog.load('wikitext2', 'validation[:3]', data_dir=data_dir, manual_dir=SHARED)
  first = src[0]['text']
  assert isinstance(first, bytes) and first.decode('utf-8').startswith('=') and first == first.strip()
  with pytest.raises(errors.DataError, match='no label'):
    catalog.labels('wikitext2', 'test', data_dir)


def test_wikitext2_sentences_cut_paragraphs_at_full_stops(data_dir):
  _need(text.WIKITEXT_DIR)
  path = os.path.join(SHARED, text.WIKITEXT_DIR, text.WIKITEXT_FILES['validation'])
  info = catalog.info('wikitext2/sentences', data_dir, manual_dir=SHARED)
  paragraphs = [p for p in text.wikitext_paragraphs(path) if not p.startswith('=')]
  assert info.splits['validation'] == len(text.wikitext_sentences(path)) > 2 * len(paragraphs)
  src = catalog.load('wikitext2/sentences', 'validation', data_dir=data_dir, manual_dir=SHARED)
  sentences = [src[i]['text'].decode() for i in range(50)]
  assert all(not s.startswith('=') for s in sentences)
  assert sum(s.endswith(' .') for s in sentences) >= 45          # each ends where a sentence ends
  assert ' '.join(sentences[:3]) in ' '.join(paragraphs[:3])     # in order, nothing dropped


def test_passages_are_word_spans_that_never_cross_a_heading(tmp_path):
  raw = tmp_path / 'wiki.raw'
  raw.write_text(' \n = A = \n \n one two three . four five . \n six . \n = = B = = \n seven eight nine . \n',
                 encoding='utf-8')
  assert text.wikitext_passages(str(raw), max_words=3) == [
      'one two three', '. four five', '. six .',      # section A: its words in order, across paragraphs
      'seven eight nine', '.']                        # section B starts a span of its own
  assert text.wikitext_sentences(str(raw)) == ['one two three .', 'four five .', 'six .', 'seven eight nine .']


def test_wikitext2_passages_hold_every_word_in_spans_of_passage_words(data_dir):
  _need(text.WIKITEXT_DIR)
  path = os.path.join(SHARED, text.WIKITEXT_DIR, text.WIKITEXT_FILES['validation'])
  spans = text.wikitext_passages(path)
  info = catalog.info('wikitext2/passages', data_dir, manual_dir=SHARED)
  assert info.splits['validation'] == len(spans)
  src = catalog.load('wikitext2/passages', 'validation', data_dir=data_dir, manual_dir=SHARED)
  assert [src[i]['text'].decode() for i in range(50)] == spans[:50]
  lengths = np.array([len(s.split()) for s in spans])
  assert lengths.max() == text.PASSAGE_WORDS and lengths.mean() > 0.9 * text.PASSAGE_WORDS
  assert ' '.join(spans).split() == ' '.join(text.wikitext_sentences(path)).split()   # nothing dropped


@pytest.mark.parametrize('config,n_test', [('amazon', 200), ('both', 400)])
def test_sentiment_sentences_split(data_dir, config, n_test):
  _need(text.SENTIMENT_DIR)
  name = f'sentiment_sentences/{config}'
  info = catalog.info(name, data_dir, manual_dir=SHARED)
  assert info.class_names == ('negative', 'positive')
  assert info.splits == {'train': 1000 * (n_test // 200) - n_test, 'test': n_test}
  y_test = catalog.labels(name, 'test', data_dir)
  y_train = catalog.labels(name, 'train', data_dir)
  assert set(np.unique(y_train)) == {0, 1} and np.bincount(y_test).tolist() == [n_test // 2] * 2
  src = catalog.load(name, 'test', data_dir=data_dir, manual_dir=SHARED)
  rows = [src[i] for i in range(len(src))]
  assert [r['label'] for r in rows] == y_test.tolist()
  assert np.bincount([r['domain'] for r in rows]).tolist() == ([200] if config == 'amazon' else [200, 200])
  # Train and test together are exactly the file(s)' lines (the files repeat a few sentences, so compare counts).
  train = catalog.load(name, 'train', data_dir=data_dir, manual_dir=SHARED)
  stored = sorted([r['text'].decode() for r in rows] + [train[i]['text'].decode() for i in range(len(train))])
  domains = ['amazon'] if config == 'amazon' else ['amazon', 'yelp']
  read = sorted(t for d in domains
                for t in text.read_sentiment(os.path.join(SHARED, text.SENTIMENT_DIR, text.SENTIMENT_FILES[d]))[0])
  assert stored == read


def test_sentiment_split_is_deterministic():
  _need(text.SENTIMENT_DIR)
  _, y = text.read_sentiment(os.path.join(SHARED, text.SENTIMENT_DIR, text.SENTIMENT_FILES['yelp']))
  a_train, a_test = text.sentiment_split(y, 0)
  b_train, b_test = text.sentiment_split(y, 0)
  np.testing.assert_array_equal(a_test, b_test)
  np.testing.assert_array_equal(a_train, b_train)
  assert len(a_test) == 200 and not set(a_test) & set(a_train) and len(a_train) + len(a_test) == len(y)
  assert not np.array_equal(np.sort(text.sentiment_split(y, 1)[1]), np.sort(a_test))


@pytest.mark.parametrize('name', ['wikitext2', 'sentiment_sentences/yelp'])
def test_missing_manual_dir_is_a_one_line_data_error(tmp_path, name):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(errors.DataError) as e:
    catalog.info(name, str(tmp_path / 'tfds'), manual_dir=str(empty))
  msg = str(e.value)
  assert '\n' not in msg and str(empty) in msg and 'manual_dir' in msg
  # Without manual_dir TFDS looks in <data_dir>/downloads/manual: the error names that directory.
  with pytest.raises(errors.DataError, match='downloads/manual'):
    catalog.info(name, str(tmp_path / 'tfds'))


def _write(path, lines: list[str], raw: bytes = b'') -> str:
  with open(path, 'wb') as f:
    f.write(''.join(line + '\n' for line in lines).encode('utf-8') + raw)
  return str(path)


def test_textfile_tsv_bad_lines_counted_reported_and_skipped(tmp_path, caplog):
  good = [f'sentence number {i}\t{"cat" if i % 2 else "dog"}' for i in range(20)]
  path = _write(tmp_path / 'mine.tsv', good + ['no label here', '\tdog', 'label empty\t', '   \tcat'],
                raw=b'bad \xff bytes\tcat\n')
  tmp = str(tmp_path / 'tfds')
  with caplog.at_level(logging.WARNING, logger=text.__name__):
    info = catalog.info(f'textfile:{path}', tmp)
  assert info.class_names == ('cat', 'dog') and info.splits == {'train': 16, 'test': 4}
  b = catalog.prepare(f'textfile:{path}', data_dir=tmp)
  bad = text.bad_lines(b)['all']
  assert [w for w, _ in bad] == ['mine.tsv:21', 'mine.tsv:22', 'mine.tsv:23', 'mine.tsv:24', 'mine.tsv:25']
  assert [why for _, why in bad] == ['no label', 'empty text', 'no label', 'empty text', 'not utf-8']
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == text.__name__]
  assert not any('custom data configuration' in r.getMessage() for r in caplog.records)
  assert len(warnings) == 1 and 'skipped 5 bad lines' in warnings[0] and 'mine.tsv:21' in warnings[0]
  y = catalog.labels(f'textfile:{path}', 'test', tmp)
  assert np.bincount(y).tolist() == [2, 2]
  src = catalog.load(f'textfile:{path}', 'train', data_dir=tmp)
  texts = {src[i]['text'].decode() for i in range(len(src))}
  assert len(texts) == 16 and all(t.startswith('sentence number') for t in texts)


def test_textfile_csv_with_header(tmp_path):
  path = tmp_path / 'reviews.csv'
  path.write_text('label,text\npos,"good, really"\nneg,"bad\nand long"\npos,fine\nneg,meh\n,no label\n',
                  encoding='utf-8')
  listing = text.parse_textfile(f'textfile:{path}')
  assert listing.class_names == ('neg', 'pos')
  assert sorted(t for rows in listing.splits.values() for t, _ in rows) == ['bad\nand long', 'fine',
                                                                              'good, really', 'meh']
  assert listing.bad == {'all': [('reviews.csv:7', 'no label')]}
  (tmp_path / 'nohead.csv').write_text('a,b\nx,y\n')
  with pytest.raises(errors.DataError, match='header'):
    text.parse_textfile(f'textfile:{tmp_path / "nohead.csv"}')


def test_textfile_reprepared_when_the_file_changes(tmp_path):
  tmp = str(tmp_path / 'tfds')
  path = _write(tmp_path / 'data.tsv', [f'text {i}\t{"a" if i % 2 else "b"}' for i in range(10)])
  first = catalog.prepare(f'textfile:{path}', data_dir=tmp)
  assert catalog.prepare(f'textfile:{path}', data_dir=tmp).data_dir == first.data_dir  # reused
  _write(tmp_path / 'data.tsv', [f'text {i}\t{"abc"[i % 3]}' for i in range(30)])
  os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
  info = catalog.info(f'textfile:{path}', tmp)
  assert info.class_names == ('a', 'b', 'c') and sum(info.splits.values()) == 30
  second = catalog.prepare(f'textfile:{path}', data_dir=tmp)
  assert second.data_dir != first.data_dir
  assert not os.path.exists(os.path.dirname(os.fspath(first.data_dir)))  # the stale dataset is removed


def test_textfile_directory_label_missing_from_a_split(tmp_path):
  d = tmp_path / 'ds'
  d.mkdir()
  _write(d / 'train.tsv', ['good\tpos', 'bad\tneg', 'ok\tneutral'])
  _write(d / 'test.tsv', ['great\tpos', 'awful\tneg'])
  with pytest.raises(errors.DataError, match="'neutral' is in train but not in test") as e:
    catalog.info(f'textfile:{d}', str(tmp_path / 'tfds'))
  assert '\n' not in str(e.value)
  _write(d / 'test.tsv', ['great\tpos', 'awful\tneg', 'fine\tneutral'])
  info = catalog.info(f'textfile:{d}', str(tmp_path / 'tfds'))
  assert info.splits == {'train': 3, 'test': 3} and info.class_names == ('neg', 'neutral', 'pos')


def test_textfile_missing_path(tmp_path):
  with pytest.raises(errors.DataError, match='no such file'):
    catalog.info(f'textfile:{tmp_path / "nope.tsv"}', str(tmp_path))
