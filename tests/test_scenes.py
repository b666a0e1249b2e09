"""The `scenes` builder: deterministic multi-label canvases, hidden labels (random + blocks), catalog and pipeline."""

import numpy as np
import pytest

from jaxtransfer.data import catalog, pipeline
from jaxtransfer.data.builders import scenes

SMALL = next(c for c in scenes.Scenes.BUILDER_CONFIGS if c.name == 'small')


def test_examples_are_a_pure_function_of_seed_split_index():
  a, b = scenes.example(SMALL, 'train', 7), scenes.example(SMALL, 'train', 7)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a['image'], scenes.example(SMALL, 'test', 7)['image'])
  assert a['image'].shape == (32, 32, 1) and a['image'].dtype == np.uint8
  assert a['labels'].shape == a['true_labels'].shape == (6,)


def test_labels_follow_the_drawn_digits_and_hiding_only_hides():
  exs = [scenes.example(SMALL, 'train', i) for i in range(60)]
  counts = np.array([int(e['count']) for e in exs])
  true = np.stack([e['true_labels'] for e in exs])
  assert counts.min() == 0 and counts.max() <= scenes.MAX_OBJECTS
  assert (true.sum(1) <= counts).all()               # distinct tasks present ≤ objects drawn
  assert set(np.unique(true)) <= {0, 1} and 0.05 < true.mean() < 0.5
  for e in exs:
    shown = e['labels'] >= 0
    np.testing.assert_array_equal(e['labels'][shown], e['true_labels'][shown])
    assert set(np.unique(e['labels'])) <= {-1, 0, 1}


@pytest.mark.parametrize('unknown', [0.0, 0.3, 0.6, 0.9])
def test_hidden_fraction_and_blocks(unknown):
  rng = np.random.default_rng(0)
  true = rng.integers(0, 2, (4000, 6)).astype(np.int8)
  hidden = np.stack([scenes.hide(t, unknown, np.random.default_rng([1, i])) for i, t in enumerate(true)]) < 0
  assert abs(hidden.mean() - unknown) < 0.02
  if 0 < unknown <= 0.6:  # blocks: some examples are annotated for exactly one half of the tasks
    first, second = hidden[:, :3].all(1) & ~hidden[:, 3:].any(1), hidden[:, 3:].all(1) & ~hidden[:, :3].any(1)
    assert (first | second).mean() > 0.05 * unknown


def test_hidden_sets_are_nested_across_fractions():
  true = np.ones(6, np.int8)
  for i in range(200):
    masks = [scenes.hide(true, u, np.random.default_rng([2, i])) < 0 for u in (0.3, 0.6, 0.9)]
    assert all((lo <= hi).all() for lo, hi in zip(masks, masks[1:]))


def test_catalog_and_pipeline_carry_the_label_arrays(data_dir):
  info = catalog.info('scenes/small', data_dir)
  assert info.num_classes == 0 and info.class_names == scenes.task_names(6)
  assert info.image_shape == (32, 32, 1) and info.splits == {'train': 256, 'test': 128}
  arrays = catalog.label_arrays('scenes/small', 'train', ['labels', 'true_labels', 'count'], data_dir)
  assert arrays['labels'].shape == (256, 6) and abs((arrays['labels'] < 0).mean() - 0.5) < 0.08
  np.testing.assert_array_equal(arrays['true_labels'][5], scenes.example(SMALL, 'train', 5)['true_labels'])
  src = catalog.load('scenes/small', 'test', data_dir=data_dir)
  batches = list(pipeline.eval_batches(src, batch_size=100))
  assert [b['mask'].sum() for b in batches] == [100, 28]
  last = batches[-1]
  assert last['labels'].dtype == np.int32 and last['labels'].shape == (100, 6) and last['count'].shape == (100,)
  np.testing.assert_array_equal(last['true_labels'][:28], np.stack([src[i]['true_labels'] for i in range(100, 128)]))
  train = next(pipeline.train_batches(src, batch_size=16, seed=0))
  assert set(train) == {'image', 'labels', 'true_labels', 'count'} and train['image'].dtype == np.float32
