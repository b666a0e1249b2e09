"""`multilabel:<table>` / `multilabel:<dir>`: your own partially labelled images for multi-task runs, prepared
once into a TFDS array_record dataset (no TensorFlow) exactly like `imagefolder:` (same image reading, EXIF
rotation, resize policy, skipped-file report, fingerprint and re-preparation; see `builders/imagefolder.py`).

**A label table** (`multilabel:photos/labels.csv`): a CSV or TSV (`.csv` → comma, `.tsv`/`.tab` → tab, any
other extension: sniffed from the header among comma, tab and semicolon) whose header names an image column
(`image`, `path` or `file`, any case; paths relative to the table's directory, or absolute), an optional
`split` column (`train`, `test`, … per row) and one column per task:

    image,pedestrian,car,weather,speed:regression
    street/001.jpg,1,0,rain,12.5
    street/002.jpg,?,1,,?

  * presence (binary): `1` / `0`, unknown `?` or an empty cell;
  * single-label (classification): class names, unknown `?` or empty; the classes are the column's distinct
    names, sorted (numerically when they are all numbers);
  * regression: numbers, unknown empty or `?` (stored as NaN).
  A column's kind is inferred from its known values — only 0 and 1 → binary; all numbers → regression;
  anything else → classification — or declared in the header as `name:binary`, `name:class` (or
  `name:classification`) or `name:regression` (e.g. to make a 0/1 column a regression target, or digit
  names classes). A task's name is its header without the `:kind`, with every run of characters other than
  letters, digits and `_` replaced by `_` (`stop sign` → `stop_sign`).
  Rows are numbered as the file's lines, the header being row 1. A bad cell (`2` in a binary column, a word in a
  regression column), an unknown declared kind, a header without an image column, a row with more or fewer
  cells than the header, an empty image cell or an image listed twice is a one-line `errors.DataError` naming
  the row and the column. Without a `split` column the rows are split by a seeded permutation of the table
  (`test=0.2`, `seed=0`; at least one row each way when there are ≥ 2 rows and test > 0).

**Detection-style label folders** (`multilabel:datasets/street`, YOLO layout):

    street/data.yaml             names: [person, car]   (or names: {0: person, 1: car}; or a classes.txt:
    street/images/train/a.jpg                             one name per line, in street/ or street/labels/)
    street/labels/train/a.txt    one `class x y w h` line per object (class = index into the names; extra
                                 numbers after the class, as in YOLO segmentation labels, are ignored)
  The splits are the folders under `images/` (nested folders inside a split are walked); `images/` holding the
  images directly is split by `test=`/`seed=` like a table. Image `images/<split>/<p>.<ext>` has its objects in
  `labels/<split>/<p>.txt`. Each class becomes a presence task `has_<name>`: 1 when the image holds at least one
  object of that class, else 0. **An image without a label file has no objects** (every task 0), the YOLO
  convention for background images — as has an empty label file. A malformed label line or a class index
  outside the names is a one-line DataError naming the file and line.
  Folder-only options: `classes=person,car` keeps those classes (tasks in the names' order); `hide=0.5` hides
  that fraction of the (image, task) labels of every split as unknown (−1) for experiments, `hide_seed=0`.
  Hiding is exact and nested: every (image path, class name) pair gets a uniform score from
  (hide_seed, path) — independent of the other classes, the split and the fraction — and the round(hide × N)
  lowest-scored of a split's N labels are hidden, so a larger fraction hides a superset (same seed). N counts
  the listed images: an image later skipped as unreadable takes its hidden labels with it.

Features (uint8 image, like every image dataset here, plus the labels `objectives.multitask` reads):
  image        uint8 (H, W, C)
  path         the image path as written in the table (folders: relative to <dir>), UTF-8 bytes
  labels       int8 (T_binary,)  the presence tasks in column order, −1 = unknown (as `scenes`)
  true_labels  int8 (T_binary,)  folders only: the labels before hiding (evaluation scores on these)
  class_<task> int32 ()          one per classification task, −1 = unknown
  value_<task> float32 ()        one per regression task, NaN = unknown
The task list (names, kinds, columns, keys, class names) is in the prepared dataset's metadata
(`tasks(builder)`), and `task_config(name, data_dir=…)` turns it into `config.tasks`:

    from jaxtransfer.data.builders import multilabel
    c.objective, c.data = 'multitask', 'multilabel:photos/labels.csv?size=224'
    c.tasks = multilabel.task_config(c.data, data_dir=c.input.data_dir or None)

Options (after `?`, joined by `&`): size=H[xW], resize=crop|pad|stretch, channels=1|3 (defaults as
`imagefolder:`: the images' own size when they all share one, else 224; 1 channel when all are grayscale),
test, seed (the seeded split), and for folders classes, hide, hide_seed.

Prepared once, reused: the config name is `<name>_<digest>`, the digest covering the table's or folder's
absolute path, the options, the table's content (or the names file's and every label file's content) and
every image file's (path, size, mtime) — a missing image counts too, so it is prepared again once the
file appears. Any change gives a new digest; the next use prepares again and removes the dataset prepared
from the previous state (`catalog.prepare`). Unreadable or missing images are skipped and reported (a
warning per split with the count and the first few paths; the full list in the metadata,
`skipped_files(builder)`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

import tensorflow_datasets as tfds

from jaxtransfer import errors
from jaxtransfer.data.builders import imagefolder

log = logging.getLogger(__name__)

PREFIX = 'multilabel:'
IMAGE_HEADERS = ('image', 'path', 'file')
SPLIT_HEADER = 'split'
UNKNOWN = ('', '?')
DECLARED_KINDS = {'binary': 'binary', 'class': 'classification', 'classification': 'classification',
                  'regression': 'regression'}
NAMES_FILES = ('data.yaml', 'classes.txt', os.path.join('labels', 'classes.txt'))
REPORT_FIRST = imagefolder.REPORT_FIRST
PROGRESS_EVERY_S = 5.0
_SPLIT_NAME = re.compile(r'[A-Za-z0-9_]+')
_TABLE_OPTIONS = ('size', 'resize', 'channels', 'test', 'seed')
_FOLDER_OPTIONS = _TABLE_OPTIONS + ('classes', 'hide', 'hide_seed')


class MultiLabelError(errors.DataError):
  """The table or label folder cannot become a multi-task dataset (bad cell, header, label line, option)."""


class _QuietCustomConfig(logging.Filter):
  """Drops TFDS's 'Using custom data configuration' warning for our per-table configs (see imagefolder)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith('Using custom data configuration')
                and record.args and type(record.args[0]).__name__ == 'MultiLabelConfig')


logging.getLogger('absl').addFilter(_QuietCustomConfig())


@dataclasses.dataclass(frozen=True)
class Options(imagefolder.Options):
  """imagefolder's image options plus the label-folder ones."""
  classes: tuple[str, ...] | None = None
  hide: float = 0.0
  hide_seed: int = 0


def parse(spec: str) -> tuple[str, Options]:
  """('/abs/path', Options) from 'multilabel:<table or dir>[?key=value&…]' (or a bare '<path>[?…]'):
  imagefolder's image options plus classes=a,b, hide=f, hide_seed=s."""
  root, pairs = imagefolder.split_spec(spec, PREFIX, MultiLabelError)
  kw: dict[str, Any] = {}
  for key, value in pairs:
    if key not in _FOLDER_OPTIONS:
      raise MultiLabelError(f'{spec!r}: unknown option {key!r} (known: {", ".join(_FOLDER_OPTIONS)})')
    try:
      if key in imagefolder.IMAGE_OPTIONS:
        kw[key] = imagefolder.image_option(key, value)
      elif key == 'hide':
        kw['hide'] = float(value)
        if not 0.0 <= kw['hide'] <= 1.0:
          raise ValueError(value)
      elif key == 'classes':
        kw['classes'] = tuple(c.strip() for c in value.split(',') if c.strip())
        if not kw['classes']:
          raise ValueError(value)
      else:   # hide_seed
        kw[key] = int(value)
    except ValueError:
      raise MultiLabelError(f'{spec!r}: bad value {value!r} for {key} ({imagefolder.IMAGE_OPTIONS_HELP}, hide in '
                            '[0, 1], classes=a,b, hide_seed=int)') from None
  return root, Options(**kw)


@dataclasses.dataclass(frozen=True)
class Task:
  """One task: its name in `config.tasks`, kind (`losses.Task` kinds), where it came from (a header or a class
  name), the feature holding its labels (`key`, column `index` of it for binary tasks) and its class names."""
  name: str
  kind: str             # 'binary' | 'classification' | 'regression'
  column: str
  key: str
  index: int | None = None
  classes: tuple[str, ...] = ()

  def config(self) -> dict[str, Any]:
    """This task's entry of `config.tasks` (see `objectives.multitask.parse_tasks`)."""
    out: dict[str, Any] = {'kind': self.kind, 'key': self.key}
    if self.index is not None:
      out['index'] = self.index
    if self.kind == 'classification':
      out['num_classes'] = len(self.classes)
    return out


@dataclasses.dataclass(frozen=True)
class Example:
  """One image's labels: `labels` (binary tasks, −1 unknown), `true_labels` (folders: before hiding), and
  `values` {feature key: class index (−1) or number (NaN)} of the other tasks. `where`: row or file, for messages."""
  path: str
  where: str
  labels: tuple[int, ...]
  true_labels: tuple[int, ...] | None = None
  values: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class Listing:
  """What a table or label folder holds: tasks, {split: [Example]}, and the digest of its current state."""
  root: str          # the table file or the folder, absolute
  base: str          # the directory image paths are relative to
  source: str        # 'table' | 'folder'
  tasks: tuple[Task, ...]
  splits: dict[str, list[Example]]
  digest: str


def _task_name(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_]+', '_', text.strip()).strip('_')


def _number(text: str) -> float | None:
  """The finite number `text` spells, else None ('nan', 'inf' and '1_000' are not numbers here)."""
  if '_' in text:
    return None
  try:
    x = float(text)
  except ValueError:
    return None
  return x if math.isfinite(x) else None


def _split_of(n: int, test: float, seed: int) -> np.ndarray:
  """bool (n,): True for the rows that go to 'test' (a seeded permutation; ≥ 1 each way when n ≥ 2)."""
  n_test = round(test * n)
  if n >= 2 and test > 0:
    n_test = min(max(n_test, 1), n - 1)
  is_test = np.zeros(n, bool)
  is_test[np.random.default_rng([seed, 0x6D6C]).permutation(n)[:n_test]] = True
  return is_test


def _stat_line(path: str, rel: str) -> str:
  """A fingerprint line of an image file: (path, size, mtime) or 'missing'."""
  try:
    st = os.stat(path)
  except OSError:
    return f'{rel}\0missing\n'
  return f'{rel}\0{st.st_size}\0{st.st_mtime_ns}\n'


# --------------------------------------------------------------------------------------------- the table

def _delimiter(path: str, text: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext in ('.tsv', '.tab'):
    return '\t'
  if ext == '.csv':
    return ','
  header = text.split('\n', 1)[0]
  try:
    return csv.Sniffer().sniff(header, delimiters=',\t;').delimiter
  except csv.Error:
    raise MultiLabelError(f'{path}: cannot tell the delimiter of the header {header[:80]!r}; name the table '
                          '.csv (comma) or .tsv (tab)') from None


def _sorted_classes(values: set[str]) -> tuple[str, ...]:
  if all(_number(v) is not None for v in values):
    return tuple(sorted(values, key=lambda v: (_number(v), v)))
  return tuple(sorted(values))


def read_table(path: str, options: Options = Options()) -> Listing:
  """Parses the table (no image is opened) into tasks and examples; one-line errors name row and column."""
  if not os.path.isfile(path):
    raise MultiLabelError(f'{PREFIX}{path}: no such file or directory')
  if options.classes is not None or options.hide:
    raise MultiLabelError(f'{PREFIX}{path}: classes= and hide= apply to label folders, not to a table')
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise MultiLabelError(f'{path}: not UTF-8 text ({e})') from None
  reader = csv.reader(io.StringIO(text, newline=''), delimiter=_delimiter(path, text))
  records: list[tuple[int, list[str]]] = []
  try:
    for cells in reader:
      records.append((reader.line_num, [c.strip() for c in cells]))
  except csv.Error as e:
    raise MultiLabelError(f'{path}: row {reader.line_num}: {e}') from None
  records = [(r, c) for r, c in records if any(c)]     # blank lines
  if not records:
    raise MultiLabelError(f'{path}: empty table (expected a header: image,<task>,<task>…)')
  header_row, header = records[0]
  lowered = [h.lower() for h in header]
  image_col = next((i for i, h in enumerate(lowered) if h in IMAGE_HEADERS), None)
  if image_col is None:
    raise MultiLabelError(f'{path}: row {header_row}: no image column in the header ({", ".join(header)}); '
                          f'name the column of image paths {" or ".join(IMAGE_HEADERS)}')
  split_col = next((i for i, h in enumerate(lowered) if h == SPLIT_HEADER), None)
  columns: list[tuple[int, str, str | None]] = []      # (column, task name, declared kind)
  seen: dict[str, str] = {}
  for i, h in enumerate(header):
    if i in (image_col, split_col):
      continue
    if not h:
      raise MultiLabelError(f'{path}: row {header_row}, column {i + 1}: empty header (every task column needs a name)')
    base, sep, kind = h.rpartition(':')
    declared = None
    if sep:
      if kind.strip().lower() not in DECLARED_KINDS:
        raise MultiLabelError(f'{path}: row {header_row}, column {h!r}: unknown kind {kind.strip()!r} (declare '
                              'binary, class or regression: name:binary)')
      declared, h = DECLARED_KINDS[kind.strip().lower()], base
    name = _task_name(h)
    if not name:
      raise MultiLabelError(f'{path}: row {header_row}, column {header[i]!r}: the header has no letter or digit '
                            'to name the task')
    if name in seen:
      raise MultiLabelError(f'{path}: row {header_row}: columns {seen[name]!r} and {header[i]!r} both name '
                            f'task {name!r}')
    seen[name] = header[i]
    columns.append((i, name, declared))
  if not columns:
    raise MultiLabelError(f'{path}: row {header_row}: no task column besides {header[image_col]!r} '
                          f'(header: {", ".join(header)})')
  rows = records[1:]
  if not rows:
    raise MultiLabelError(f'{path}: no rows after the header')
  first_seen: dict[str, int] = {}
  for r, cells in rows:
    if len(cells) != len(header):
      raise MultiLabelError(f'{path}: row {r}: {len(cells)} cells, the header has {len(header)} '
                            f'({", ".join(header)})')
    p = cells[image_col]
    if not p:
      raise MultiLabelError(f'{path}: row {r}, column {header[image_col]!r}: empty image path')
    if p in first_seen:
      raise MultiLabelError(f'{path}: row {r}, column {header[image_col]!r}: {p!r} is already listed in row '
                            f'{first_seen[p]}')
    first_seen[p] = r
    if split_col is not None and not _SPLIT_NAME.fullmatch(cells[split_col]):
      raise MultiLabelError(f'{path}: row {r}, column {header[split_col]!r}: {cells[split_col]!r} is not a split '
                            'name (train, test, …: letters, digits, _)')

  tasks: list[Task] = []
  converted: dict[str, list[float]] = {}   # task name -> value per row
  n_binary = 0
  for i, name, declared in columns:
    col = header[i]
    known = {c[i] for _, c in rows if c[i] not in UNKNOWN}
    kind = declared
    if kind is None:
      if not known:
        raise MultiLabelError(f'{path}: column {col!r}: no known value in any row, so its kind cannot be '
                              f'inferred; declare it in the header ({col}:binary, :class or :regression)')
      numbers = [_number(v) for v in known]
      kind = ('binary' if all(x in (0.0, 1.0) for x in numbers)
              else 'regression' if all(x is not None for x in numbers) else 'classification')
    if kind == 'binary':
      task = Task(name, kind, col, 'labels', n_binary)
      n_binary += 1
    elif kind == 'classification':
      if not known:
        raise MultiLabelError(f'{path}: column {col!r}: a class column with no class name in any row')
      task = Task(name, kind, col, f'class_{name}', classes=_sorted_classes(known))
    else:
      task = Task(name, kind, col, f'value_{name}')
    values = []
    for r, cells in rows:
      v = cells[i]
      if v in UNKNOWN:
        values.append(float('nan') if kind == 'regression' else -1)
      elif kind == 'binary':
        x = _number(v)
        if x not in (0.0, 1.0):
          raise MultiLabelError(f'{path}: row {r}, column {col!r}: {v!r} is not 1, 0 or ? (a binary presence '
                                'column; an empty cell is ?)')
        values.append(int(x))
      elif kind == 'regression':
        x = _number(v)
        if x is None:
          raise MultiLabelError(f'{path}: row {r}, column {col!r}: {v!r} is not a number (a regression column; '
                                'empty or ? = unknown)')
        values.append(x)
      else:
        values.append(task.classes.index(v))
    tasks.append(task)
    converted[name] = values

  binary = [t for t in tasks if t.kind == 'binary']
  others = [t for t in tasks if t.kind != 'binary']
  split_names = ([rows[j][1][split_col] for j in range(len(rows))] if split_col is not None else
                 ['test' if t else 'train' for t in _split_of(len(rows), options.test, options.seed)])
  table_dir = os.path.dirname(path)
  h = hashlib.sha256(f'{path}\0{options}\0'.encode())
  h.update(raw)
  splits: dict[str, list[Example]] = {}
  for j, (r, cells) in enumerate(rows):
    p = cells[image_col]
    h.update(_stat_line(os.path.join(table_dir, p), p).encode())
    splits.setdefault(split_names[j], []).append(Example(
        path=p, where=f'row {r}', labels=tuple(int(converted[t.name][j]) for t in binary),
        values=tuple((t.key, converted[t.name][j]) for t in others)))
  return Listing(root=path, base=table_dir, source='table', tasks=tuple(tasks), splits=splits,
                 digest=h.hexdigest()[:16])


# ------------------------------------------------------------------------------------- the label folder

def class_names(root: str) -> tuple[tuple[str, ...], str]:
  """(class names by index, the file they came from) of a label folder: data.yaml's `names` (a list or an
  {index: name} mapping) or classes.txt (one name per line) in <dir> or <dir>/labels."""
  for rel in NAMES_FILES:
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
      continue
    if rel.endswith('.yaml'):
      import yaml  # PyYAML: installed with flax / ml_collections / orbax (pinned in constraints.txt)
      try:
        with open(path) as f:
          data = yaml.safe_load(f)
      except (OSError, yaml.YAMLError) as e:
        raise MultiLabelError(f'{path}: not readable YAML ({" ".join(str(e).split())})') from None
      names = data.get('names') if isinstance(data, dict) else None
      if isinstance(names, dict):
        try:
          by_index = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
          raise MultiLabelError(f'{path}: names: a mapping must go from class index to name, got keys '
                                f'{list(names)}') from None
        if sorted(by_index) != list(range(len(by_index))):
          raise MultiLabelError(f'{path}: names: indices {sorted(by_index)} are not 0…{len(by_index) - 1}')
        names = [by_index[k] for k in range(len(by_index))]
      if not isinstance(names, list) or not names:
        raise MultiLabelError(f'{path}: needs `names:` as a list ([person, car]) or a mapping ({{0: person}})')
      names = [str(n).strip() for n in names]
    else:
      with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
      if not names:
        raise MultiLabelError(f'{path}: no class name (one per line)')
    if any(not n for n in names) or len(set(names)) != len(names):
      raise MultiLabelError(f'{path}: class names must be non-empty and distinct, got {names}')
    return tuple(names), path
  raise MultiLabelError(f'{PREFIX}{root}: no class names: add data.yaml (names: [person, car]) or classes.txt '
                        '(one name per line)')


def _walk_images(top: str) -> list[str]:
  """Image files under `top`, relative to it, sorted (hidden files and folders skipped)."""
  out = []
  for d, dirs, files in os.walk(top):
    dirs[:] = sorted(x for x in dirs if not x.startswith('.'))
    out += [os.path.relpath(os.path.join(d, f), top) for f in files
            if f.lower().endswith(imagefolder.EXTENSIONS) and not f.startswith('.')]
  return sorted(out)


def _objects(label_path: str, num_classes: int, names_file: str) -> set[int]:
  """The class indices of the objects a YOLO label file lists (a missing file: none)."""
  if not os.path.isfile(label_path):
    return set()
  found = set()
  with open(label_path) as f:
    for n, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      numbers = [_number(p) for p in parts]
      if len(parts) < 5 or any(x is None for x in numbers) or numbers[0] != int(numbers[0]):
        raise MultiLabelError(f'{label_path}: line {n}: {line.strip()!r} is not "class x y w h"')
      k = int(numbers[0])
      if not 0 <= k < num_classes:
        raise MultiLabelError(f'{label_path}: line {n}: class {k} is not an index into the {num_classes} names of '
                              f'{names_file}')
      found.add(k)
  return found


def hide_scores(path: str, num_classes: int, seed: int) -> np.ndarray:
  """(num_classes,) uniform scores in [0, 1) of one image's labels, a pure function of (seed, path)."""
  digest = hashlib.sha256(f'{seed}\0{path}'.encode()).digest()
  return np.random.default_rng([int(x) for x in np.frombuffer(digest[:16], np.uint32)]).random(num_classes)


def hidden_mask(paths: Sequence[str], class_ids: Sequence[int], num_classes: int, fraction: float,
                seed: int) -> np.ndarray:
  """bool (len(paths), len(class_ids)): the round(fraction × N) lowest-scored labels (see the docstring)."""
  if not len(paths) or fraction <= 0:
    return np.zeros((len(paths), len(class_ids)), bool)
  scores = np.stack([hide_scores(p, num_classes, seed)[list(class_ids)] for p in paths])
  n_hide = round(fraction * scores.size)
  mask = np.zeros(scores.size, bool)
  mask[np.argsort(scores, axis=None, kind='stable')[:n_hide]] = True
  return mask.reshape(scores.shape)


def read_folder(root: str, options: Options = Options()) -> Listing:
  """Lists a YOLO-style label folder (label files are read, no image is opened) into presence tasks."""
  images_dir = os.path.join(root, 'images')
  if not os.path.isdir(images_dir):
    raise MultiLabelError(f'{PREFIX}{root}: a label folder needs images/<split>/… and labels/<split>/… (no images/ '
                          'folder); or give a table file (.csv, .tsv)')
  names, names_file = class_names(root)
  if options.classes is not None:
    unknown = [c for c in options.classes if c not in names]
    if unknown:
      raise MultiLabelError(f'{PREFIX}{root}: classes={",".join(options.classes)}: {unknown[0]!r} is not a class '
                            f'of {names_file} ({", ".join(names)})')
    class_ids = [k for k, n in enumerate(names) if n in options.classes]
  else:
    class_ids = list(range(len(names)))
  tasks = tuple(Task(f'has_{_task_name(names[k]) or k}', 'binary', names[k], 'labels', i)
                for i, k in enumerate(class_ids))
  if len({t.name for t in tasks}) != len(tasks):
    raise MultiLabelError(f'{names_file}: class names {names} give the same task name twice')
  h = hashlib.sha256(f'{root}\0{options}\0'.encode())
  with open(names_file, 'rb') as f:
    h.update(f.read())
  entries = sorted(e.name for e in os.scandir(images_dir) if not e.name.startswith('.'))
  split_dirs = [e for e in entries if os.path.isdir(os.path.join(images_dir, e))]
  if split_dirs and len(split_dirs) != len(entries):
    raise MultiLabelError(f'{images_dir}: holds both split folders ({", ".join(split_dirs)}) and files; put every '
                          'image in images/<split>/')
  listed: dict[str, list[str]] = {}    # split -> image paths relative to root
  if split_dirs:
    for split in split_dirs:
      if not _SPLIT_NAME.fullmatch(split):
        raise MultiLabelError(f'{images_dir}: split folder {split!r} is not a valid split name (letters, digits, _)')
      found = _walk_images(os.path.join(images_dir, split))
      if not found:
        raise MultiLabelError(f'{images_dir}/{split}: holds no image ({", ".join(imagefolder.EXTENSIONS)})')
      listed[split] = [os.path.join('images', split, p) for p in found]
  else:
    found = [os.path.join('images', p) for p in _walk_images(images_dir)]
    if not found:
      raise MultiLabelError(f'{images_dir}: holds no image ({", ".join(imagefolder.EXTENSIONS)})')
    is_test = _split_of(len(found), options.test, options.seed)
    listed = {s: [p for p, t in zip(found, is_test) if t == (s == 'test')] for s in ('train', 'test')}
    listed = {s: v for s, v in listed.items() if v}
  splits: dict[str, list[Example]] = {}
  for split, paths in listed.items():
    true = []
    for p in paths:
      label_rel = os.path.splitext(os.path.join('labels', os.path.relpath(p, 'images')))[0] + '.txt'
      label_path = os.path.join(root, label_rel)
      h.update(_stat_line(os.path.join(root, p), p).encode())
      if os.path.isfile(label_path):
        with open(label_path, 'rb') as f:
          h.update(f'{label_rel}\0'.encode() + hashlib.sha256(f.read()).digest())
      present = _objects(label_path, len(names), names_file)
      true.append([int(k in present) for k in class_ids])
    hidden = hidden_mask(paths, class_ids, len(names), options.hide, options.hide_seed)
    splits[split] = [Example(path=p, where=p, labels=tuple(-1 if hd else v for v, hd in zip(t, hid)),
                             true_labels=tuple(t)) for p, t, hid in zip(paths, true, hidden)]
  return Listing(root=root, base=root, source='folder', tasks=tasks, splits=splits, digest=h.hexdigest()[:16])


def scan(spec: str) -> Listing:
  """The listing of 'multilabel:<table or dir>[?…]' in its current state: a directory is a label folder,
  a file a table."""
  root, options = parse(spec)
  return read_folder(root, options) if os.path.isdir(root) else read_table(root, options)


# --------------------------------------------------------------------------------------------- the builder

@dataclasses.dataclass(eq=False)
class MultiLabelConfig(tfds.core.BuilderConfig):
  root: str = ''
  listing: Listing | None = dataclasses.field(default=None, repr=False)
  plan: imagefolder.Plan | None = None


class MultiLabel(tfds.core.GeneratorBasedBuilder):
  """Images with several (partly unknown) labels each, from a label table or a YOLO label folder."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    listing = cfg.listing
    h, w = cfg.plan.size
    features: dict[str, Any] = {
        'image': tfds.features.Image(shape=(h, w, cfg.plan.channels), encoding_format='png'),
        'path': tfds.features.Text()}
    n_binary = sum(t.kind == 'binary' for t in listing.tasks)
    if n_binary:
      features['labels'] = tfds.features.Tensor(shape=(n_binary,), dtype=np.int8)
      if listing.source == 'folder':
        features['true_labels'] = tfds.features.Tensor(shape=(n_binary,), dtype=np.int8)
    for t in listing.tasks:
      if t.kind == 'classification':
        features[t.key] = tfds.features.Tensor(shape=(), dtype=np.int32)
      elif t.kind == 'regression':
        features[t.key] = tfds.features.Tensor(shape=(), dtype=np.float32)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Multi-task labels from {cfg.root} ({listing.source}).',
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,   # example i of a split is its i-th row / file
        metadata=tfds.core.MetadataDict(
            root=cfg.root, source=listing.source, resize=cfg.plan.resize,
            tasks=[t.name for t in listing.tasks],            # catalog.info: the class_names of a multi-label set
            task_specs=[dataclasses.asdict(t) for t in listing.tasks], skipped={}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, examples)
            for split, examples in self.builder_config.listing.splits.items()}

  def _generate_examples(self, split: str, examples: list[Example]) -> Iterator[tuple[int, dict]]:
    cfg = self.builder_config
    listing, skipped = cfg.listing, []
    has_labels = any(t.kind == 'binary' for t in listing.tasks)
    t0 = last = time.time()
    for i, ex in enumerate(examples):
      try:
        arr = imagefolder.load_image(os.path.join(listing.base, ex.path), cfg.plan.size, cfg.plan.channels,
                                     cfg.plan.resize)
      except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        skipped.append((ex.path, f'{ex.where}: {type(e).__name__}: {e}'))
        continue
      buf = io.BytesIO()
      Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, 'PNG', compress_level=1)
      out: dict[str, Any] = {'image': buf.getvalue(), 'path': ex.path}
      if has_labels:
        out['labels'] = np.asarray(ex.labels, np.int8)
        if listing.source == 'folder':
          out['true_labels'] = np.asarray(ex.true_labels, np.int8)
      for key, value in ex.values:
        out[key] = np.float32(value) if key.startswith('value_') else np.int32(value)
      yield i, out
      now = time.time()
      if now - last >= PROGRESS_EVERY_S:
        last = now
        log.info('multilabel %s [%s]: %d/%d images (%.0f/s)', os.path.basename(cfg.root), split, i + 1,
                 len(examples), (i + 1) / (now - t0))
    self.info.metadata['skipped'][split] = skipped
    if skipped:
      first = '; '.join(f'{p} ({why})' for p, why in skipped[:REPORT_FIRST])
      more = f' and {len(skipped) - REPORT_FIRST} more' if len(skipped) > REPORT_FIRST else ''
      log.warning('multilabel %s [%s]: skipped %d of %d images that are missing or could not be read: %s%s',
                  cfg.root, split, len(skipped), len(examples), first, more)


def _slug(root: str, source: str) -> str:
  parts = [os.path.basename(os.path.dirname(root)), os.path.splitext(os.path.basename(root))[0]] \
      if source == 'table' else [os.path.basename(root.rstrip('/'))]
  return re.sub(r'[^a-z0-9_]+', '_', '_'.join(p for p in parts if p).lower()).strip('_') or 'multilabel'


def config_for(spec: str, plan_cache_dir: str | None = None) -> MultiLabelConfig:
  """The builder config of 'multilabel:<table or dir>[?…]' in its current state (the header scan that picks
  size/channels when not given runs once per state and is cached in `plan_cache_dir`, as imagefolder's)."""
  _, options = parse(spec)
  listing = scan(spec)
  name = f'{_slug(listing.root, listing.source)}_{listing.digest}'
  cache = os.path.join(plan_cache_dir, f'{name}.plan.json') if plan_cache_dir else None
  if cache and os.path.isfile(cache):
    with open(cache) as f:
      p = json.load(f)
    the_plan = imagefolder.Plan(size=tuple(p['size']), channels=p['channels'], resize=p['resize'])
  else:
    as_folder = imagefolder.Listing(root=listing.base, layout=listing.source, class_names=(), digest=listing.digest,
                                    splits={s: [(e.path, 0) for e in ex] for s, ex in listing.splits.items()})
    the_plan = imagefolder.plan(as_folder, imagefolder.Options(size=options.size, resize=options.resize,
                                                               channels=options.channels))
    if cache:
      os.makedirs(plan_cache_dir, exist_ok=True)
      tmp = f'{cache}.{os.getpid()}.tmp'
      with open(tmp, 'w') as f:
        json.dump(dataclasses.asdict(the_plan), f)
      os.replace(tmp, cache)
  return MultiLabelConfig(name=name, root=listing.root, listing=listing, plan=the_plan,
                          description=f'{listing.root} ({sum(map(len, listing.splits.values()))} images)')


def builder(spec: str, data_dir: str) -> MultiLabel:
  """The (maybe not yet prepared) builder for 'multilabel:<table or dir>[?…]' under `data_dir`."""
  return MultiLabel(config=config_for(spec, os.path.join(data_dir, MultiLabel.name, 'plans')), data_dir=data_dir)


def stale_configs(b: MultiLabel) -> list[str]:
  """Dirs of datasets prepared from earlier states of the same table or folder (imagefolder's rule)."""
  return imagefolder.stale_configs(b)


def skipped_files(b: tfds.core.DatasetBuilder) -> dict[str, list[tuple[str, str]]]:
  """{split: [(image path, reason)]} of the images a prepared multilabel dataset skipped."""
  return imagefolder.skipped_files(b)


def tasks(b: tfds.core.DatasetBuilder) -> tuple[Task, ...]:
  """The tasks of a prepared multilabel dataset, from its metadata."""
  specs = b.info.metadata.get('task_specs') if b.info.metadata else None
  if not specs:
    raise MultiLabelError(f'{b.name}/{b.builder_config.name}: no task list in its metadata (not a multilabel: set)')
  return tuple(Task(**{**dict(s), 'classes': tuple(s.get('classes', ()))}) for s in specs)


def tasks_config(task_list: Sequence[Task]) -> dict[str, dict[str, Any]]:
  """`config.tasks` for these tasks: {name: {'kind', 'key', 'index'?, 'num_classes'?}}."""
  return {t.name: t.config() for t in task_list}


def task_config(name: str, *, data_dir: str | None = None) -> dict[str, dict[str, Any]]:
  """`config.tasks` of the dataset 'multilabel:…' (prepared first if needed), rebuilt from its metadata: each
  presence task a column of 'labels', each classification task its 'class_<task>' feature with num_classes,
  each regression task its 'value_<task>'. Pass it to a multi-task run (`config.tasks = …`)."""
  if not name.startswith(PREFIX):
    raise MultiLabelError(f'{name!r}: task_config reads the tasks of a {PREFIX}<table or dir> dataset')
  from jaxtransfer.data import catalog   # catalog routes 'multilabel:' to this module (so: imported here)
  return tasks_config(tasks(catalog.prepare(name, data_dir=data_dir)))


def class_names_of(name: str, task: str, *, data_dir: str | None = None) -> tuple[str, ...]:
  """The class names of classification task `task` of 'multilabel:…' (index i = the i-th name)."""
  from jaxtransfer.data import catalog
  by_name = {t.name: t for t in tasks(catalog.prepare(name, data_dir=data_dir))}
  if task not in by_name:
    raise MultiLabelError(f'{name}: no task {task!r} (tasks: {", ".join(by_name)})')
  return by_name[task].classes

