"""The `multilabel:` builder on generated tables and YOLO label folders: unknowns, kinds, one-line errors, skipped
images, re-preparation, presence from objects, hidden labels, `task_config`, and a multi-task run through it."""

from __future__ import annotations

import importlib
import logging
import os
import re

import numpy as np
import pytest
from PIL import Image

from jaxtransfer import errors
from jaxtransfer.data import catalog
from jaxtransfer.data.builders import multilabel


def _png(path, value: int, shape=(8, 8, 3)) -> None:
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  Image.fromarray(np.full(shape, value, np.uint8).squeeze()).save(str(path))


def _table(root, lines: list[str], name='labels.csv', images=True) -> str:
  """Writes root/<name> from `lines` (header first) and, with `images`, a PNG for every path of the first
  column (pixel value = 10 × its row among the data rows)."""
  os.makedirs(str(root), exist_ok=True)
  if images:
    for i, line in enumerate(lines[1:]):
      _png(os.path.join(str(root), re.split('[,\t;]', line)[0]), 10 * i)
  path = os.path.join(str(root), name)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


@pytest.fixture
def tfds_dir(tmp_path) -> str:
  return str(tmp_path / 'tfds')


def _all(name: str, split: str, data_dir: str) -> list[dict]:
  src = catalog.load(name, split, data_dir=data_dir)
  return [src[i] for i in range(len(src))]


# ------------------------------------------------------------------------------------------------ tables

def test_table_unknowns_kinds_and_features(tmp_path, tfds_dir):
  table = _table(tmp_path / 'photos', [
      'image,pedestrian,car,weather,speed,digit:class,flag:regression,split',
      'a/0.png,1,0,rain,1.5,3,1,train',
      'a/1.png,?,1,sun,,10,0,train',
      'a/2.png,,?,,2,?,,train',
      'b/3.png,0,1,?,?,3,?,test',
  ])
  name = f'{multilabel.PREFIX}{table}'
  info = catalog.info(name, data_dir=tfds_dir)
  assert info.class_names == ('pedestrian', 'car', 'weather', 'speed', 'digit', 'flag')
  assert info.splits == {'train': 3, 'test': 1} and info.image_shape == (8, 8, 3)
  kinds = {t.name: (t.kind, t.key, t.index, t.classes) for t in multilabel.scan(name).tasks}
  assert kinds == {'pedestrian': ('binary', 'labels', 0, ()), 'car': ('binary', 'labels', 1, ()),
                   'weather': ('classification', 'class_weather', None, ('rain', 'sun')),
                   'speed': ('regression', 'value_speed', None, ()),
                   'digit': ('classification', 'class_digit', None, ('3', '10')),   # numeric order, declared
                   'flag': ('regression', 'value_flag', None, ())}                  # 0/1 but declared
  train = _all(name, 'train', tfds_dir)
  assert [ex['path'] for ex in train] == [b'a/0.png', b'a/1.png', b'a/2.png']
  assert [int(ex['image'][0, 0, 0]) for ex in train] == [0, 10, 20]       # row order kept
  np.testing.assert_array_equal(np.stack([ex['labels'] for ex in train]), [[1, 0], [-1, 1], [-1, -1]])
  assert train[0]['labels'].dtype == np.int8
  assert [int(ex['class_weather']) for ex in train] == [0, 1, -1]
  assert [int(ex['class_digit']) for ex in train] == [0, 1, -1]
  speed = [float(ex['value_speed']) for ex in train]
  assert speed[0] == 1.5 and np.isnan(speed[1]) and speed[2] == 2.0
  assert [float(ex['value_flag']) for ex in train][:2] == [1.0, 0.0] and np.isnan(train[2]['value_flag'])
  test = _all(name, 'test', tfds_dir)
  assert test[0]['labels'].tolist() == [0, 1] and int(test[0]['class_weather']) == -1
  assert 'true_labels' not in test[0]    # a table's unknowns are truly unknown


def test_tsv_and_sniffed_delimiter(tmp_path):
  tsv = _table(tmp_path / 't', ['path\tstop sign\tcar', 'x.png\t1\t0', 'y.png\t0\t?'], name='l.tsv')
  assert [t.name for t in multilabel.scan(f'multilabel:{tsv}').tasks] == ['stop_sign', 'car']
  semi = _table(tmp_path / 's', ['file;a;b', 'x.png;1;0', 'y.png;0;?'], name='l.txt')
  listing = multilabel.scan(f'multilabel:{semi}?test=0.5')
  assert sorted(e.path for ex in listing.splits.values() for e in ex) == ['x.png', 'y.png']


@pytest.mark.parametrize('values, kind', [
    (['1', '0', '?', ''], 'binary'),
    (['1', '1.0', '0'], 'binary'),
    (['1', '0', '2'], 'regression'),
    (['0.5', '-3', ''], 'regression'),
    (['1', '0', 'cat'], 'classification'),
    (['nan', '1'], 'classification'),         # 'nan' is not a number here
])
def test_kind_inference(tmp_path, values, kind):
  table = _table(tmp_path, ['image,t'] + [f'{i}.png,{v}' for i, v in enumerate(values)], images=False)
  (task,) = multilabel.read_table(table).tasks
  assert task.kind == kind


@pytest.mark.parametrize('lines, match', [
    (['image,a:binary', 'x.png,1', 'y.png,2'], r"row 3, column 'a:binary': '2' is not 1, 0 or \?"),
    (['image,a,b:regression', 'x.png,1,3', 'y.png,0,fast'], r"row 3, column 'b:regression': 'fast' is not a number"),
    (['image,a:bool', 'x.png,1'], r"row 1, column 'a:bool': unknown kind 'bool'"),
    (['picture,a,b', 'x.png,1,0'], r'row 1: no image column in the header \(picture, a, b\)'),
    (['image,a', 'x.png,1,0'], r'row 2: 3 cells, the header has 2'),
    (['image,a', 'x.png,1', ',0'], r"row 3, column 'image': empty image path"),
    (['image,a', 'x.png,1', 'x.png,0'], r"row 3, column 'image': 'x.png' is already listed in row 2"),
    (['image,a,split', 'x.png,1,train', 'y.png,0,'], r"row 3, column 'split': '' is not a split name"),
    (['image,a', 'x.png,?', 'y.png,'], r"column 'a': no known value in any row"),
    (['image', 'x.png'], r'no task column'),
])
def test_bad_table_is_a_one_line_error_naming_row_and_column(tmp_path, tfds_dir, lines, match):
  table = _table(tmp_path, lines, images=False)
  with pytest.raises(errors.DataError, match=match) as e:
    catalog.info(f'multilabel:{table}', data_dir=tfds_dir)
  assert '\n' not in str(e.value)


def test_declared_binary_column_may_be_all_unknown_and_missing_table_errors(tmp_path):
  table = _table(tmp_path, ['image,a:binary,b', 'x.png,?,1', 'y.png,,0'], images=False)
  assert [t.kind for t in multilabel.read_table(table).tasks] == ['binary', 'binary']
  with pytest.raises(errors.DataError, match='no such file or directory'):
    multilabel.scan(f'multilabel:{tmp_path}/nope.csv')
  with pytest.raises(errors.DataError, match="unknown option 'colour'"):
    multilabel.parse(f'multilabel:{table}?colour=red')
  with pytest.raises(errors.DataError, match='apply to label folders'):
    multilabel.scan(f'multilabel:{table}?hide=0.5')


def test_seeded_split_without_split_column(tmp_path):
  table = _table(tmp_path, ['image,a'] + [f'{i}.png,{i % 2}' for i in range(10)], images=False)

  def test_paths(query):
    return [e.path for e in multilabel.scan(f'multilabel:{table}?{query}').splits['test']]

  assert len(test_paths('test=0.3&seed=1')) == 3
  assert test_paths('test=0.3&seed=1') == test_paths('test=0.3&seed=1')          # deterministic
  assert test_paths('test=0.3&seed=1') != test_paths('test=0.3&seed=2')
  assert len(multilabel.scan(f'multilabel:{table}').splits['train']) == 8      # default 80/20


def test_missing_and_unreadable_images_are_counted_reported_and_skipped(tmp_path, tfds_dir, caplog):
  table = _table(tmp_path, ['image,a,split', 'ok0.png,1,train', 'gone.png,0,train', 'bad.png,1,train',
                            'ok1.png,0,train', 'ok2.png,?,test'], images=False)
  for p, v in (('ok0.png', 0), ('ok1.png', 1), ('ok2.png', 2)):
    _png(tmp_path / p, v)
  (tmp_path / 'bad.png').write_bytes(b'not a png at all')
  name = f'multilabel:{table}'
  with caplog.at_level(logging.WARNING):
    info = catalog.info(name, data_dir=tfds_dir)
  assert info.splits == {'train': 2, 'test': 1}
  warnings = [r.getMessage() for r in caplog.records if 'skipped 2 of 4' in r.getMessage()]
  assert len(warnings) == 1 and 'gone.png (row 3' in warnings[0] and 'bad.png (row 4' in warnings[0]
  skipped = multilabel.skipped_files(catalog.prepare(name, data_dir=tfds_dir))
  assert [p for p, _ in skipped['train']] == ['gone.png', 'bad.png'] and skipped['test'] == []
  assert [ex['labels'].tolist() for ex in _all(name, 'train', tfds_dir)] == [[1], [0]]   # labels stay aligned


def test_prepared_once_and_again_when_the_table_or_an_image_changes(tmp_path, tfds_dir, caplog):
  table = _table(tmp_path / 'live', ['image,a', 'x.png,1', 'y.png,0', 'z.png,?'])
  name = f'multilabel:{table}?test=0'

  def prepared_count():
    return sum('Prepared multilabel' in r.getMessage() for r in caplog.records)

  with caplog.at_level(logging.INFO):
    first = catalog.prepare(name, data_dir=tfds_dir)
    catalog.prepare(name, data_dir=tfds_dir)
    os.utime(table)                                     # touched, same content: still the same dataset
    again = catalog.prepare(name, data_dir=tfds_dir)
    assert prepared_count() == 1 and os.fspath(again.data_dir) == os.fspath(first.data_dir)

    _table(tmp_path / 'live', ['image,a', 'x.png,1', 'y.png,1', 'z.png,?'], images=False)   # a label changed
    changed = catalog.prepare(name, data_dir=tfds_dir)
    assert prepared_count() == 2 and os.fspath(changed.data_dir) != os.fspath(first.data_dir)
    assert not os.path.exists(os.fspath(first.data_dir))          # the stale dataset is gone
    assert [ex['labels'].tolist() for ex in _all(name, 'train', tfds_dir)] == [[1], [1], [-1]]

    _png(tmp_path / 'live' / 'y.png', 200, shape=(8, 8, 3))        # an image changed (size/mtime)
    st = os.stat(tmp_path / 'live' / 'y.png')
    os.utime(tmp_path / 'live' / 'y.png', ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = catalog.prepare(name, data_dir=tfds_dir)
    assert prepared_count() == 3 and os.fspath(third.data_dir) != os.fspath(changed.data_dir)
    assert int(_all(name, 'train', tfds_dir)[1]['image'][0, 0, 0]) == 200


# ------------------------------------------------------------------------------------------ label folders

def _yolo(root, names_yaml='names: {0: person, 1: car, 2: stop sign}\n') -> str:
  """A YOLO folder: train/a (person ×2 + stop sign), b (empty label file), c (no label file), sub/d (car);
  val/e (car)."""
  root = str(root)
  if names_yaml is not None:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, 'data.yaml'), 'w') as f:
      f.write('path: .\ntrain: images/train\nval: images/val\n' + names_yaml)
  labels = {'train/a': '0 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.1 0.1\n2 0.3 0.3 0.1 0.1\n', 'train/b': '',
            'train/sub/d': '1 0.5 0.5 0.9 0.9\n', 'val/e': '1 0.5 0.5 0.4 0.4\n'}
  for i, p in enumerate(('train/a', 'train/b', 'train/c', 'train/sub/d', 'val/e')):
    _png(os.path.join(root, 'images', p + '.png'), 10 * i)
    if p in labels:
      os.makedirs(os.path.dirname(os.path.join(root, 'labels', p)), exist_ok=True)
      with open(os.path.join(root, 'labels', p + '.txt'), 'w') as f:
        f.write(labels[p])
  return root


def test_label_folder_objects_become_presence_tasks(tmp_path, tfds_dir):
  root = _yolo(tmp_path / 'street')
  name = f'multilabel:{root}'
  info = catalog.info(name, data_dir=tfds_dir)
  assert info.class_names == ('has_person', 'has_car', 'has_stop_sign')
  assert info.splits == {'train': 4, 'val': 1}
  train = _all(name, 'train', tfds_dir)
  assert [ex['path'] for ex in train] == [b'images/train/a.png', b'images/train/b.png', b'images/train/c.png',
                                          b'images/train/sub/d.png']
  # a: two persons and a stop sign; b: empty label file; c: no label file; d (nested): a car.
  assert [ex['labels'].tolist() for ex in train] == [[1, 0, 1], [0, 0, 0], [0, 0, 0], [0, 1, 0]]
  assert all(ex['true_labels'].tolist() == ex['labels'].tolist() for ex in train)
  assert _all(name, 'val', tfds_dir)[0]['labels'].tolist() == [0, 1, 0]
  assert multilabel.task_config(name, data_dir=tfds_dir) == {
      'has_person': {'kind': 'binary', 'key': 'labels', 'index': 0},
      'has_car': {'kind': 'binary', 'key': 'labels', 'index': 1},
      'has_stop_sign': {'kind': 'binary', 'key': 'labels', 'index': 2}}


@pytest.mark.parametrize('names_file', ['yaml_list', 'yaml_block', 'classes_txt', 'labels_classes_txt'])
def test_class_names_from_yaml_list_or_classes_txt_and_a_class_subset(tmp_path, names_file):
  yaml_text = {'yaml_list': "names: ['person', 'car', 'stop sign']\n",
               'yaml_block': 'names:\n  - person\n  - car\n  - stop sign\n'}.get(names_file)
  root = _yolo(tmp_path / 'd', names_yaml=yaml_text)
  if yaml_text is None:
    where = 'classes.txt' if names_file == 'classes_txt' else os.path.join('labels', 'classes.txt')
    with open(os.path.join(root, where), 'w') as f:
      f.write('person\ncar\n\nstop sign\n')
  listing = multilabel.scan(f'multilabel:{root}?classes=stop sign,person')
  assert [(t.name, t.column, t.index) for t in listing.tasks] == [('has_person', 'person', 0),
                                                                  ('has_stop_sign', 'stop sign', 1)]
  assert [e.labels for e in listing.splits['train']] == [(1, 1), (0, 0), (0, 0), (0, 0)]


@pytest.mark.parametrize('line, match', [
    ('0 0.5 0.5', r"train/b\.txt: line 2: '0 0\.5 0\.5' is not \"class x y w h\""),
    ('3 0.5 0.5 0.1 0.1', r'train/b\.txt: line 2: class 3 is not an index into the 3 names'),
    ('car 0.5 0.5 0.1 0.1', r'line 2: .* is not "class x y w h"'),
])
def test_bad_label_line_is_a_one_line_error_naming_file_and_line(tmp_path, line, match):
  root = _yolo(tmp_path / 'd')
  with open(os.path.join(root, 'labels', 'train', 'b.txt'), 'w') as f:
    f.write(f'1 0.5 0.5 0.1 0.1\n{line}\n')
  with pytest.raises(errors.DataError, match=match) as e:
    multilabel.scan(f'multilabel:{root}')
  assert '\n' not in str(e.value)


def test_label_folder_errors(tmp_path):
  root = _yolo(tmp_path / 'd', names_yaml=None)
  with pytest.raises(errors.DataError, match='no class names: add data.yaml'):
    multilabel.scan(f'multilabel:{root}')
  with open(os.path.join(root, 'classes.txt'), 'w') as f:
    f.write('person\ncar\nstop sign\n')
  with pytest.raises(errors.DataError, match="'bus' is not a class of .*classes.txt"):
    multilabel.scan(f'multilabel:{root}?classes=bus')
  with pytest.raises(errors.DataError, match='needs images/<split>'):
    multilabel.scan(f'multilabel:{tmp_path}')


def test_flat_images_folder_is_split_by_seed(tmp_path):
  root = str(tmp_path / 'flat')
  for i in range(10):
    _png(os.path.join(root, 'images', f'{i}.png'), i)
  os.makedirs(os.path.join(root, 'labels'))
  with open(os.path.join(root, 'labels', '3.txt'), 'w') as f:
    f.write('0 0.5 0.5 0.5 0.5\n')
  with open(os.path.join(root, 'classes.txt'), 'w') as f:
    f.write('cat\n')
  listing = multilabel.scan(f'multilabel:{root}?test=0.3&seed=4')
  assert {s: len(v) for s, v in listing.splits.items()} == {'train': 7, 'test': 3}
  labels = {e.path: e.labels for ex in listing.splits.values() for e in ex}
  assert labels['images/3.png'] == (1,) and sum(v[0] for v in labels.values()) == 1


def _big_yolo(root, n=40) -> str:
  """n images in images/train, each with a random subset of 3 classes (label files only: nothing is prepared)."""
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, 'images', 'train'))
  os.makedirs(os.path.join(root, 'labels', 'train'))
  with open(os.path.join(root, 'classes.txt'), 'w') as f:
    f.write('a\nb\nc\n')
  for i in range(n):
    open(os.path.join(root, 'images', 'train', f'{i:03d}.png'), 'wb').close()
    with open(os.path.join(root, 'labels', 'train', f'{i:03d}.txt'), 'w') as f:
      f.writelines(f'{k} 0.5 0.5 0.1 0.1\n' for k in range(3) if rng.random() < 0.5)
  return root


def test_hidden_fraction_is_exact_deterministic_by_seed_and_nested(tmp_path):
  root = _big_yolo(str(tmp_path / 'big'))

  def hidden(query):
    ex = multilabel.scan(f'multilabel:{root}?{query}').splits['train']
    labels, true = np.array([e.labels for e in ex]), np.array([e.true_labels for e in ex])
    shown = labels >= 0
    np.testing.assert_array_equal(labels[shown], true[shown])        # hiding only hides
    return ~shown

  h25, h50 = hidden('hide=0.25&hide_seed=3'), hidden('hide=0.5&hide_seed=3')
  assert h25.sum() == 30 and h50.sum() == 60                           # round(f × 40 × 3)
  np.testing.assert_array_equal(h25, hidden('hide=0.25&hide_seed=3'))  # deterministic
  assert (h50 | h25 == h50).all()                                      # nested across fractions
  assert not np.array_equal(h25, hidden('hide=0.25&hide_seed=4'))      # another seed, another set
  assert hidden('hide=0').sum() == 0 and hidden('hide=1').all()
  # A class subset keeps each remaining label's score: hidden sets agree where they can.
  sub = hidden('hide=0.5&hide_seed=3&classes=a,c')
  assert sub.sum() == 40


def test_hidden_labels_reach_the_prepared_dataset_with_true_labels_kept(tmp_path, tfds_dir):
  root = _yolo(tmp_path / 'street')
  name = f'multilabel:{root}?hide=0.5&hide_seed=1'
  train = _all(name, 'train', tfds_dir)
  labels, true = np.stack([ex['labels'] for ex in train]), np.stack([ex['true_labels'] for ex in train])
  assert (labels < 0).sum() == 6                                        # round(0.5 × 4 × 3)
  assert true.tolist() == [[1, 0, 1], [0, 0, 0], [0, 0, 0], [0, 1, 0]]
  np.testing.assert_array_equal(labels[labels >= 0], true[labels >= 0])


# ----------------------------------------------------------------------------------- config.tasks and a run

def test_task_config_round_trips_through_the_metadata(tmp_path, tfds_dir):
  from jaxtransfer import objectives
  table = _table(tmp_path, ['image,ped,car,weather,speed', 'x.png,1,?,rain,2.5', 'y.png,0,1,snow,',
                            'z.png,?,0,,1'])
  name = f'multilabel:{table}?test=0'
  config = multilabel.task_config(name, data_dir=tfds_dir)
  assert config == {'ped': {'kind': 'binary', 'key': 'labels', 'index': 0},
                    'car': {'kind': 'binary', 'key': 'labels', 'index': 1},
                    'weather': {'kind': 'classification', 'key': 'class_weather', 'num_classes': 2},
                    'speed': {'kind': 'regression', 'key': 'value_speed'}}
  assert multilabel.tasks(catalog.prepare(name, data_dir=tfds_dir)) == multilabel.scan(name).tasks
  assert multilabel.class_names_of(name, 'weather', data_dir=tfds_dir) == ('rain', 'snow')
  defs = {d.name: (d.task.kind, d.key, d.index, d.outputs) for d in objectives.parse_tasks(config)}
  assert defs == {'ped': ('binary', 'labels', 0, 1), 'car': ('binary', 'labels', 1, 1),
                  'weather': ('classification', 'class_weather', None, 2),
                  'speed': ('regression', 'value_speed', None, 1)}
  with pytest.raises(errors.DataError, match='multilabel:<table or dir>'):
    multilabel.task_config('scenes/small')


def test_multitask_run_on_a_label_table_end_to_end(tmp_path, tfds_dir):
  """A few real multi-task steps through train.train on a `multilabel:` table (presence tasks with '?', a class
  task, a regression task), then `evaluate` on the checkpoint: per-task metrics and mean AP."""
  from jaxtransfer import config as config_lib, evaluation, train
  rng = np.random.default_rng(0)
  lines = ['image,bright,stripe,shade,level,split']
  for i in range(40):
    bright, stripe = i % 2, (i // 2) % 2
    img = np.full((16, 16), 200 if bright else 40, np.uint8)
    if stripe:
      img[6:10] = 255 - img[6:10]
    os.makedirs(tmp_path / 'imgs', exist_ok=True)
    Image.fromarray(img).save(str(tmp_path / 'imgs' / f'{i}.png'))
    cells = [str(bright) if rng.random() > 0.3 else '?', str(stripe) if rng.random() > 0.3 else '',
             ['dark', 'light'][bright] if i % 5 else '?', f'{img.mean() / 255:.3f}' if i % 7 else '',
             'test' if i >= 28 else 'train']
    lines.append(f'imgs/{i}.png,' + ','.join(cells))
  table = _table(tmp_path, lines, images=False)
  c = config_lib.base()
  c.data, c.input.data_dir, c.objective = f'multilabel:{table}', tfds_dir, 'multitask'
  c.tasks = multilabel.task_config(c.data, data_dir=tfds_dir)
  c.model.backbone = {'name': 'cnn', 'stages': [4], 'dense': [8]}
  c.train.steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = 4, 8, 2, 4
  c.train.eval_batch_size = 16
  c.optim.lr = 1e-2
  out = train.train(c, str(tmp_path / 'run'))
  assert out.step == 4 and out.metrics['count'] == 12
  assert {'mean_ap', 'bright/ap', 'bright/auc', 'stripe/ap', 'shade/accuracy', 'level/mse'} <= set(out.metrics)
  assert 0 < out.metrics['mean_ap'] <= 1 and np.isfinite(out.metrics['level/mse'])
  again = evaluation.evaluate_checkpoint(str(tmp_path / 'run'))
  assert again['mean_ap'] == pytest.approx(out.metrics['mean_ap'], abs=1e-6)
  assert again['stripe/ap'] == pytest.approx(out.metrics['stripe/ap'], abs=1e-6)


_MULTITASK = importlib.import_module('jaxtransfer.objectives.multitask')


@pytest.mark.skipif(not hasattr(_MULTITASK, 'tasks_of'),
                    reason='needs objectives/multitask.py tasks_of (empty config.tasks -> the multilabel header)')
def test_empty_config_tasks_come_from_the_multilabel_header(tmp_path, tfds_dir):
  from jaxtransfer import config as config_lib, objectives
  table = _table(tmp_path, ['image,ped,weather', 'x.png,1,rain', 'y.png,?,snow', 'z.png,0,'])
  c = config_lib.base()
  c.data, c.input.data_dir, c.objective = f'multilabel:{table}', tfds_dir, 'multitask'
  objective = objectives.from_config(c)
  assert objective.names == ['ped', 'weather']
  assert {t.name: (t.task.kind, t.key, t.outputs) for t in objective.tasks} == {
      'ped': ('binary', 'labels', 1), 'weather': ('classification', 'class_weather', 2)}
  c.tasks = {'ped': {'kind': 'binary', 'key': 'labels', 'index': 0}}      # given tasks win
  assert objectives.from_config(c).names == ['ped']
  c.tasks, c.data = {}, 'scenes/small'                                     # other data: still an error
  with pytest.raises(errors.ConfigError, match='needs config.tasks'):
    objectives.from_config(c)
