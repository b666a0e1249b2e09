"""Text datasets as TFDS array_record builders (no TensorFlow): `wikitext2`, `sentiment_sentences`, `textfile:`.

  * `wikitext2` (= `wikitext2/paragraphs`) — unlabelled WikiText-2 (raw) from
    `<manual_dir>/wikitext-2-raw/wiki.{train,valid,test}.raw`, splits `train`/`validation`/`test`. One
    example per non-empty line, stripped: in WikiText a line is already one paragraph (or a ` = Heading = `
    line), the unit the corpus was written in. Headings are kept (they are part of the corpus).
    `wikitext2/sentences` — the paragraphs cut into sentences, headings left out: WikiText's raw text
    puts spaces around punctuation, so a sentence ends at ' . ' (an abbreviation such as 'lit .' splits
    too, rarely). 76,699 training sentences, median 24 words (90th percentile 43): sentence-length
    sequences for masked-LM pretraining that a 64-token window holds whole (a paragraph, median ~100
    words, would be cut off after its first sentences), and the unit of sentence classification.
    `wikitext2/passages` — each section's text (a heading ends one) cut into consecutive spans of
    PASSAGE_WORDS words, the last one shorter: BERT's pretraining "sentences" are such arbitrary spans of
    contiguous text. A 40-word span is ~51 SentencePiece-8k tokens (5 % are cut at 64) where a sentence
    is ~35 (whole sentences packed greedily fill only ~32 words: two median sentences do not fit), so
    masked-LM pretraining with 64-token windows sees ~1.45× the real tokens and masked predictions per
    step at the same step cost. 52,888 training spans. Measured: 10,000 MLM steps on spans learned
    masked prediction worse than on sentences and transferred no better (BUILD_NOTES): pretrain_mlm_wikitext
    keeps sentences.
  * `sentiment_sentences/{amazon,yelp,both}` — the UCI review sentences from
    `<manual_dir>/sentiment-sentences/{amazon_cells,yelp}_labelled.txt` (`sentence<TAB>0|1`). Per domain a
    fixed seeded `test` split of TEST_PER_DOMAIN sentences (half of each label), the rest `train`; `both`
    holds both domains' splits. Stored in a seeded random order, so slices (`train[:100]`) mix labels.
  * `textfile:<path>` — your own labelled text (see `parse_textfile`), prepared once per file state.

Features: `text` (tfds.features.Text: str in, utf-8 bytes out — it encodes without TensorFlow),
`label` (ClassLabel) and, for sentiment_sentences, `domain` (ClassLabel 'amazon', 'yelp').
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

import tensorflow_datasets as tfds

from jaxtransfer import errors

log = logging.getLogger(__name__)

WIKITEXT_DIR = 'wikitext-2-raw'
WIKITEXT_FILES = {'train': 'wiki.train.raw', 'validation': 'wiki.valid.raw', 'test': 'wiki.test.raw'}
SENTIMENT_DIR = 'sentiment-sentences'
SENTIMENT_FILES = {'amazon': 'amazon_cells_labelled.txt', 'yelp': 'yelp_labelled.txt'}
SENTIMENT_LABELS = ('negative', 'positive')
TEST_PER_DOMAIN = 200
TEXTFILE_PREFIX = 'textfile:'
TEXTFILE_TEST = 0.2
REPORT_FIRST = 5   # bad lines named in a warning


def _manual_file(dl_manager: Any, dataset: str, rel: str, instructions: str) -> str:
  """The path of `rel` inside the TFDS manual_dir; a one-line DataError naming the directory if absent."""
  manual_dir = os.fspath(dl_manager._manual_dir or '')  # pylint: disable=protected-access
  path = os.path.join(manual_dir, rel)
  if not manual_dir or not os.path.isfile(path):
    raise errors.DataError(f'{dataset}: missing {rel} in manual_dir {manual_dir or "(not given)"!r} '
                           f'(set input.manual_dir, e.g. ../shared/data). {instructions}')
  return path


def _text_label_info(builder: tfds.core.DatasetBuilder, description: str, label_names: Sequence[str] | None,
                     extra: dict[str, tfds.features.FeatureConnector] | None = None,
                     metadata: dict[str, Any] | None = None) -> tfds.core.DatasetInfo:
  features = {'text': tfds.features.Text()}
  if label_names is not None:
    features['label'] = tfds.features.ClassLabel(names=list(label_names))
  features.update(extra or {})
  return tfds.core.DatasetInfo(
      builder=builder, description=description, features=tfds.features.FeaturesDict(features),
      supervised_keys=('text', 'label') if label_names is not None else None,
      disable_shuffling=True,  # example i is the i-th generated one (keys are positions)
      metadata=tfds.core.MetadataDict(**(metadata or {})) if metadata is not None else None)


# ----------------------------------------------------------------------------------------------- wikitext2

def wikitext_paragraphs(path: str) -> list[str]:
  """The non-empty lines of a WikiText raw file, stripped (one paragraph or heading each)."""
  with open(path, encoding='utf-8') as f:
    return [s for s in (line.strip() for line in f) if s]


_SENTENCE_END = re.compile(r'(?<= \.) ')
PASSAGE_WORDS = 40   # wikitext2/passages: ~51 SentencePiece-8k tokens, a 64-token window (module docstring)


def _sections(path: str) -> list[list[str]]:
  """The sentences of a WikiText raw file, grouped by section (a heading line starts a new group)."""
  sections: list[list[str]] = [[]]
  for p in wikitext_paragraphs(path):
    if p.startswith('='):
      sections.append([])
    else:
      sections[-1] += [s.strip() for s in _SENTENCE_END.split(p) if s.strip()]
  return [s for s in sections if s]


def wikitext_sentences(path: str) -> list[str]:
  """The sentences of a WikiText raw file's paragraphs (headings left out; module docstring)."""
  return [s for section in _sections(path) for s in section]


def word_spans(sentences: Sequence[str], max_words: int) -> list[str]:
  """The words of consecutive `sentences` cut into spans of `max_words` (the last one shorter): every word
  kept, in order; a span may start or end inside a sentence."""
  words = ' '.join(sentences).split()
  return [' '.join(words[i:i + max_words]) for i in range(0, len(words), max_words)]


def wikitext_passages(path: str, max_words: int = PASSAGE_WORDS) -> list[str]:
  """Each section of a WikiText raw file cut into spans of `max_words` words (module docstring)."""
  return [p for section in _sections(path) for p in word_spans(section, max_words)]


class Wikitext2(tfds.core.GeneratorBasedBuilder):
  """WikiText-2 (raw): unlabelled Wikipedia paragraphs (or sentences), one example each."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='paragraphs', description='one example per non-empty line'),
                     tfds.core.BuilderConfig(name='sentences', description='paragraphs cut at " . ", no headings'),
                     tfds.core.BuilderConfig(name='passages', description=f'each section cut into spans of '
                                             f'{PASSAGE_WORDS} words')]
  DEFAULT_CONFIG_NAME = 'paragraphs'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Put {WIKITEXT_DIR}/{{{",".join(WIKITEXT_FILES.values())}}} (WikiText-2 raw) in a directory and '
      'pass it as manual_dir.')

  def _info(self) -> tfds.core.DatasetInfo:
    return _text_label_info(self, 'WikiText-2 raw (Merity et al. 2016), one paragraph per example.', None)

  def _split_generators(self, dl_manager):
    paths = {s: _manual_file(dl_manager, 'wikitext2', os.path.join(WIKITEXT_DIR, f),
                             self.MANUAL_DOWNLOAD_INSTRUCTIONS) for s, f in WIKITEXT_FILES.items()}
    return {s: self._generate_examples(p) for s, p in paths.items()}

  def _generate_examples(self, path: str) -> Iterator[tuple[int, dict]]:
    read = {'sentences': wikitext_sentences, 'passages': wikitext_passages}.get(self.builder_config.name,
                                                                                 wikitext_paragraphs)
    for key, text in enumerate(read(path)):
      yield key, {'text': text}


# ----------------------------------------------------------------------------------- sentiment_sentences

def read_sentiment(path: str) -> tuple[list[str], np.ndarray]:
  """(sentences, labels int64) of a `sentence<TAB>0|1` file; any malformed line is a DataError."""
  texts, labels = [], []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      text, sep, label = line.rstrip('\r\n').rpartition('\t')
      if not sep or label.strip() not in ('0', '1') or not text.strip():
        raise errors.DataError(f'{path}:{n}: expected sentence<TAB>0|1, got {line.strip()[:60]!r}')
      texts.append(text.strip())
      labels.append(int(label))
  return texts, np.asarray(labels, np.int64)


def sentiment_split(labels: np.ndarray, seed: int, n_test: int = TEST_PER_DOMAIN) -> tuple[np.ndarray, np.ndarray]:
  """(train_idx, test_idx) in the order of a seeded permutation: test = the first n_test/2 of each label."""
  perm = np.random.default_rng(seed).permutation(len(labels))
  test = np.concatenate([perm[labels[perm] == c][:n_test // 2] for c in (0, 1)])
  in_test = np.zeros(len(labels), bool)
  in_test[test] = True
  return perm[~in_test[perm]], perm[in_test[perm]]


@dataclasses.dataclass(eq=False)
class SentimentConfig(tfds.core.BuilderConfig):
  domains: tuple[str, ...] = ()
  seed: int = 0


class SentimentSentences(tfds.core.GeneratorBasedBuilder):
  """Review sentences labelled negative/positive (Kotzias et al. 2015), per domain or both."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SentimentConfig(name='amazon', domains=('amazon',), description='Amazon cell-phone reviews: 800 / 200.'),
      SentimentConfig(name='yelp', domains=('yelp',), description='Yelp restaurant reviews: 800 / 200.'),
      SentimentConfig(name='both', domains=('amazon', 'yelp'), description='Both domains: 1600 / 400.'),
  ]
  DEFAULT_CONFIG_NAME = 'both'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Put {SENTIMENT_DIR}/{{{",".join(SENTIMENT_FILES.values())}}} (UCI Sentiment Labelled Sentences) in a '
      'directory and pass it as manual_dir.')

  def _info(self) -> tfds.core.DatasetInfo:
    return _text_label_info(self, 'Review sentences labelled negative (0) / positive (1).', SENTIMENT_LABELS,
                            {'domain': tfds.features.ClassLabel(names=list(SENTIMENT_FILES))})

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    parts: dict[str, list[tuple[str, int, int]]] = {'train': [], 'test': []}
    for domain in cfg.domains:
      path = _manual_file(dl_manager, f'sentiment_sentences/{cfg.name}',
                          os.path.join(SENTIMENT_DIR, SENTIMENT_FILES[domain]), self.MANUAL_DOWNLOAD_INSTRUCTIONS)
      texts, labels = read_sentiment(path)
      train, test = sentiment_split(labels, [cfg.seed, list(SENTIMENT_FILES).index(domain)])
      for split, idx in (('train', train), ('test', test)):
        parts[split] += [(texts[i], int(labels[i]), list(SENTIMENT_FILES).index(domain)) for i in idx]
    if len(cfg.domains) > 1:  # interleave the domains in a seeded order
      for split in parts:
        order = np.random.default_rng([cfg.seed, 99]).permutation(len(parts[split]))
        parts[split] = [parts[split][i] for i in order]
    return {s: self._generate_examples(v) for s, v in parts.items()}

  def _generate_examples(self, rows: list[tuple[str, int, int]]) -> Iterator[tuple[int, dict]]:
    for key, (text, label, domain) in enumerate(rows):
      yield key, {'text': text, 'label': label, 'domain': domain}


# ---------------------------------------------------------------------------------------------- textfile

@dataclasses.dataclass(frozen=True)
class TextListing:
  """A parsed `textfile:` source: {split: [(text, label)]}, sorted label names, bad lines, digest."""
  root: str
  class_names: tuple[str, ...]
  splits: dict[str, list[tuple[str, int]]]
  bad: dict[str, list[tuple[str, str]]]   # split/file -> [(where 'file:line', why)]
  digest: str


def _file_digest(h: Any, path: str) -> None:
  st = os.stat(path)
  h.update(f'{path}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())


def read_labelled(path: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """([(text, label name)], [(where, why)]) of a TSV (`text<TAB>label`) or, for *.csv, a CSV with a header
  naming the columns `text` and `label`. Lines with no label, empty text or non-utf-8 bytes are bad."""
  with open(path, 'rb') as f:
    data = f.read().decode('utf-8', errors='surrogateescape')  # undecodable bytes -> lone surrogates
  good, bad = [], []
  name = os.path.basename(path)

  def add(n: int, text: str | None, label: str | None) -> None:
    where = f'{name}:{n}'
    if any('\udc80' <= ch <= '\udcff' for ch in (text or '') + (label or '')):
      bad.append((where, 'not utf-8'))
    elif label is None or not label.strip():
      bad.append((where, 'no label'))
    elif text is None or not text.strip():
      bad.append((where, 'empty text'))
    else:
      good.append((text.strip(), label.strip()))

  if path.lower().endswith('.csv'):
    reader = csv.reader(io.StringIO(data, newline=''))
    header = [c.strip().lower() for c in next(reader, [])]
    if 'text' not in header or 'label' not in header:
      raise errors.DataError(f'{path}: CSV header must name the columns text and label, got {header}')
    ti, li = header.index('text'), header.index('label')
    line = reader.line_num
    for row in reader:
      start, line = line + 1, reader.line_num
      if not any(c.strip() for c in row):
        continue
      add(start, row[ti] if ti < len(row) else None, row[li] if li < len(row) else None)
  else:
    for n, line in enumerate(data.split('\n'), 1):
      line = line.rstrip('\r')
      if not line.strip() or (n == 1 and line.strip().lower() == 'text\tlabel'):
        continue
      text, sep, label = line.rpartition('\t')
      add(n, text if sep else line, label if sep else None)
  return good, bad


def _split_file(rows: list[tuple[str, str]], seed: int, test: float) -> dict[str, list[tuple[str, str]]]:
  """Per label name (sorted), a seeded `test` fraction (at least one each way when a label has ≥ 2)."""
  out: dict[str, list[tuple[str, str]]] = {'train': [], 'test': []}
  for k, name in enumerate(sorted({lab for _, lab in rows})):
    mine = [r for r in rows if r[1] == name]
    n_test = round(test * len(mine))
    if len(mine) >= 2:
      n_test = min(max(n_test, 1), len(mine) - 1)
    order = np.random.default_rng([seed, k]).permutation(len(mine))
    out['test'] += [mine[i] for i in order[:n_test]]
    out['train'] += [mine[i] for i in order[n_test:]]
  return out


def parse_textfile(spec: str, seed: int = 0) -> TextListing:
  """Reads 'textfile:<path>': a file (TSV, or CSV by extension) split train/test 80/20 per label by a fixed
  seed, or a directory with `train.{tsv,csv}` and `test.{tsv,csv}` (every label must be in both)."""
  path = spec[len(TEXTFILE_PREFIX):] if spec.startswith(TEXTFILE_PREFIX) else spec
  if not path:
    raise errors.DataError(f'{TEXTFILE_PREFIX}<path>: no path given in {spec!r}')
  root = os.path.abspath(os.path.expanduser(path))
  h = hashlib.sha256(f'{root}\0{seed}\0{TEXTFILE_TEST}'.encode())
  bad: dict[str, list[tuple[str, str]]] = {}
  if os.path.isdir(root):
    named: dict[str, list[tuple[str, str]]] = {}
    for split in ('train', 'test'):
      found = [os.path.join(root, f'{split}{ext}') for ext in ('.tsv', '.csv')]
      found = [p for p in found if os.path.isfile(p)]
      if len(found) != 1:
        raise errors.DataError(f'{TEXTFILE_PREFIX}{root}: expected one of {split}.tsv, {split}.csv in the '
                               f'directory, found {len(found) or "none"}')
      _file_digest(h, found[0])
      named[split], bad[split] = read_labelled(found[0])
    sets = {s: {lab for _, lab in rows} for s, rows in named.items()}
    for s, other in (('train', 'test'), ('test', 'train')):
      only = sorted(sets[s] - sets[other])
      if only:
        raise errors.DataError(f'{TEXTFILE_PREFIX}{root}: label {only[0]!r} is in {s} but not in {other} '
                               '(every label needs examples in both splits)')
  elif os.path.isfile(root):
    _file_digest(h, root)
    rows, bad['all'] = read_labelled(root)
    named = _split_file(rows, seed, TEXTFILE_TEST)
  else:
    raise errors.DataError(f'{TEXTFILE_PREFIX}{root}: no such file or directory')
  class_names = tuple(sorted({lab for rows in named.values() for _, lab in rows}))
  if not class_names:
    raise errors.DataError(f'{TEXTFILE_PREFIX}{root}: no valid text<TAB>label line')
  index = {c: i for i, c in enumerate(class_names)}
  splits = {}
  for s, rows in named.items():  # stored in a seeded order, so slices mix labels
    order = np.random.default_rng([seed, 7]).permutation(len(rows))
    splits[s] = [(rows[i][0], index[rows[i][1]]) for i in order]
  return TextListing(root=root, class_names=class_names, splits={s: v for s, v in splits.items() if v},
                     bad={k: v for k, v in bad.items() if v}, digest=h.hexdigest()[:16])


@dataclasses.dataclass(eq=False)
class TextFileConfig(tfds.core.BuilderConfig):
  root: str = ''
  listing: TextListing | None = dataclasses.field(default=None, repr=False)


class _QuietCustomConfig(logging.Filter):
  """Drops TFDS's 'Using custom data configuration' warning for our per-file configs (every call makes one:
  the config is derived from the file, so it is never among BUILDER_CONFIGS)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith('Using custom data configuration')
                and record.args and isinstance(record.args[0], TextFileConfig))


logging.getLogger('absl').addFilter(_QuietCustomConfig())


class TextFile(tfds.core.GeneratorBasedBuilder):
  """Labelled text from a local TSV/CSV file or a directory with train/test files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    bad = {k: [list(x) for x in v] for k, v in cfg.listing.bad.items()}
    return _text_label_info(self, f'Labelled text from {cfg.root}.', cfg.listing.class_names,
                            metadata={'root': cfg.root, 'bad_lines': bad})

  def _split_generators(self, dl_manager):
    del dl_manager
    listing = self.builder_config.listing
    for where, rows in listing.bad.items():  # reported once, when the dataset is prepared
      first = '; '.join(f'{w} ({why})' for w, why in rows[:REPORT_FIRST])
      more = f' and {len(rows) - REPORT_FIRST} more' if len(rows) > REPORT_FIRST else ''
      log.warning('textfile %s [%s]: skipped %d bad lines: %s%s', listing.root, where, len(rows), first, more)
    return {s: self._generate_examples(v) for s, v in listing.splits.items()}

  def _generate_examples(self, rows: list[tuple[str, int]]) -> Iterator[tuple[int, dict]]:
    for key, (text, label) in enumerate(rows):
      yield key, {'text': text, 'label': label}


def _slug(root: str) -> str:
  stem = os.path.splitext(os.path.basename(root.rstrip('/')))[0]
  return re.sub(r'[^a-z0-9_]+', '_', stem.lower()).strip('_') or 'text'


def textfile_builder(spec: str, data_dir: str) -> TextFile:
  """The (maybe not yet prepared) builder for 'textfile:<path>' in the file's current state."""
  listing = parse_textfile(spec)
  cfg = TextFileConfig(name=f'{_slug(listing.root)}_{listing.digest}', root=listing.root, listing=listing,
                       description=f'{listing.root} ({sum(map(len, listing.splits.values()))} examples)')
  return TextFile(config=cfg, data_dir=data_dir)


def stale_configs(b: TextFile) -> list[str]:
  """Dirs of datasets prepared from earlier states of the same file (same root, another digest)."""
  base = os.path.join(os.fspath(b.data_dir_root), b.name)
  if not os.path.isdir(base):
    return []
  stem = b.builder_config.name.rsplit('_', 1)[0]
  out = []
  for d in os.listdir(base):
    if d == b.builder_config.name or d.rsplit('_', 1)[0] != stem or not re.fullmatch(r'[0-9a-f]{16}', d.rsplit('_', 1)[-1]):
      continue
    config_dir = os.path.join(base, d)
    for version in os.listdir(config_dir) if os.path.isdir(config_dir) else ():
      meta = os.path.join(config_dir, version, 'metadata.json')
      try:
        with open(meta) as f:
          if json.load(f).get('root') == b.builder_config.root:
            out.append(config_dir)
            break
      except (OSError, ValueError):
        continue
  return out


def bad_lines(b: tfds.core.DatasetBuilder) -> dict[str, list[tuple[str, str]]]:
  """{file or split: [(file:line, reason)]} of the lines a prepared textfile dataset skipped."""
  return {s: [tuple(x) for x in v] for s, v in dict(b.info.metadata.get('bad_lines', {})).items()}
