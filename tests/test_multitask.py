"""Multi-task learning through THE training loop (issue #3): a dict of heads over one backbone, the
multi-task objective on partially labelled scenes, per-head freezing, loss weighting in the loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtransfer import checkpoint, config as config_lib, objectives, rules, train
from jaxtransfer.data.builders import scenes
from jaxtransfer.models import model as model_lib

TINY_CNN = {'name': 'cnn', 'stages': [4], 'dense': [8]}
TASKS = scenes.task_config(6, count='classification')


def tiny_config(data_dir, **overrides):
  c = config_lib.base()
  c.data, c.input.data_dir = 'scenes/small', data_dir
  c.model.backbone, c.objective, c.tasks = TINY_CNN, 'multitask', TASKS
  c.train.steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = 4, 16, 2, 2
  c.train.eval_batch_size = 64
  c.optim.lr = 1e-2
  for k, v in overrides.items():
    node, *path = k.split('.')
    target = c
    for p in [node, *path][:-1]:
      target = target[p]
    target[[node, *path][-1]] = v
  return c


def test_multitask_head_is_a_dict_of_heads_under_head_task():
  model = model_lib.build({'backbone': TINY_CNN, 'head': {'name': 'multitask', 'outputs': {'a': 1, 'b': 5},
                                                          'hidden': [3]}})
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  paths = [p for p in rules.flatten(variables['params']) if p.startswith('head/')]
  assert paths == ['head/a/layer_0/bias', 'head/a/layer_0/kernel', 'head/a/out/bias', 'head/a/out/kernel',
                   'head/b/layer_0/bias', 'head/b/layer_0/kernel', 'head/b/out/bias', 'head/b/out/kernel']
  out = model.apply(variables, jnp.zeros((2, 16, 16, 1)))
  assert {k: v.shape for k, v in out.items()} == {'a': (2, 1), 'b': (2, 5)}


def _batch():
  labels = np.array([[1, -1, 0, -1, 1, 0], [-1, -1, 1, 0, -1, -1]], np.int32)
  return {'labels': labels, 'true_labels': np.abs(labels), 'count': np.array([2, 3], np.int32)}


def test_unknown_labels_do_not_contribute():
  objective = objectives.multitask(TASKS)
  batch = _batch()
  outputs = {n: jnp.full((2, 1), 0.3) for n in TASKS if n != 'count'} | {'count': jnp.zeros((2, 5))}
  grads = jax.grad(lambda o: objective.loss(o, batch)[0])(outputs)
  for t in range(6):  # exactly zero gradient where the label is unknown ('has_1' has none at all)
    unknown = batch['labels'][:, t] < 0
    g = np.asarray(grads[f'has_{t}'])[:, 0]
    assert (g[unknown] == 0).all() and (g[~unknown] != 0).all()
  total, metrics = objective.loss(outputs, batch)
  assert float(metrics['loss/has_1']) == 0.0 and np.isfinite(float(total))
  # Any value in an unknown slot gives the same loss; 'negative' instead counts unknowns as 0.
  flipped = {**batch, 'labels': np.where(batch['labels'] < 0, -1, batch['labels'])}
  assert float(objective.loss(outputs, flipped)[0]) == pytest.approx(float(total))
  negative = objectives.multitask(TASKS, unknown_policy='negative')
  g_neg = jax.grad(lambda o: negative.loss(o, batch)[0])(outputs)
  assert (np.asarray(g_neg['has_1']) != 0).all()
  # Evaluation scores every example on the true labels.
  per_example = objective.per_example(outputs, batch)
  np.testing.assert_array_equal(per_example['label/has_1'], batch['true_labels'][:, 1])


def test_bad_labels_fail_before_training(data_dir, tmp_path):
  bad = {**TASKS, 'count': {'kind': 'classification', 'num_classes': 3, 'key': 'count'}}  # counts go to 4
  with pytest.raises(ValueError, match="task 'count': class index"):
    train.train(tiny_config(data_dir, tasks=bad), str(tmp_path))


def test_drop_policy_trains_only_fully_labelled_examples(data_dir):
  c = tiny_config(data_dir, **{'mtl.unknown_policy': 'drop'})
  indices = objectives.from_config(c).train_examples(c, 0)
  from jaxtransfer.data import catalog
  labels = catalog.label_arrays('scenes/small', 'train', ['labels'], data_dir)['labels']
  assert 0 < len(indices) < 256
  np.testing.assert_array_equal(indices, np.flatnonzero((labels >= 0).all(1)))


def _params_at(workdir, step):
  mngr, _ = checkpoint.open_for_reading(workdir)
  try:
    return rules.flatten(checkpoint.restore_subtree(mngr, step, 'params', None))
  finally:
    mngr.close()


def test_end_to_end_with_one_head_frozen(data_dir, tmp_path):
  """A few multi-task steps through train.train; head/has_5 frozen by a path rule, everything else trains."""
  c = tiny_config(data_dir, trainable=r'backbone/.*|head/(?!has_5/).*')
  out = train.train(c, str(tmp_path))
  assert out.step == 4 and out.init == 'scratch'
  assert {'mean_ap', 'loss', 'count/accuracy', 'has_0/ap', 'has_5/auc'} <= set(out.metrics)
  assert out.metrics['count'] == 128 and 0 < out.metrics['mean_ap'] <= 1
  before, after = _params_at(str(tmp_path), 2), rules.flatten(out.params)
  for path in after:
    assert np.array_equal(before[path], after[path]) == path.startswith('head/has_5/'), path


@pytest.mark.parametrize('task_gradients', ['features', 'params'])
def test_weighting_method_runs_in_the_loop_and_is_checkpointed(data_dir, tmp_path, task_gradients):
  c = tiny_config(data_dir, **{'mtl.weighting': 'gradnorm', 'mtl.task_gradients': task_gradients, 'train.steps': 3,
                               'train.checkpoint_every': 3})
  out = train.train(c, str(tmp_path))
  state = out.opt_state['weighting']
  assert set(out.opt_state) == {'tx', 'weighting'}
  assert not np.allclose(np.asarray(state.weights), 1.0)        # GradNorm moved its task weights
  assert float(np.sum(state.weights)) == pytest.approx(len(TASKS), rel=1e-4)
  mngr, _ = checkpoint.open_for_reading(str(tmp_path))
  try:
    saved = checkpoint.restore_subtree(mngr, 3, 'opt_state', None)
  finally:
    mngr.close()
  saved_w = [np.asarray(x) for x in jax.tree.leaves(saved['weighting'])]
  assert any(np.array_equal(w, np.asarray(state.weights)) for w in saved_w)
  assert np.isfinite(out.metrics['mean_ap'])


def test_per_head_learning_rates_by_path_rules(data_dir, tmp_path):
  """optim.lr_mult over head paths: has_1's head moves 0×, has_2's 10× as far as at the base lr (SGD)."""
  moved = {}
  for name, mult in (('base', ()), ('mult', (('head/has_1/.*', 0.0), ('head/has_2/.*', 10.0))),
                     ('start', (('.*', 0.0),))):     # every lr × 0: the initial parameters
    c = tiny_config(data_dir, **{'optim.name': 'sgd', 'optim.momentum': 0.0, 'optim.schedule': 'constant',
                                 'optim.lr': 1e-3, 'optim.lr_mult': mult, 'train.steps': 1})
    moved[name] = rules.flatten(train.train(c, str(tmp_path / name)).params)
  start = moved['start']
  for path in start:
    d_base = np.abs(moved['base'][path] - start[path]).max()
    d_mult = np.abs(moved['mult'][path] - start[path]).max()
    if path.startswith('head/has_1/'):
      assert d_mult == 0.0 and d_base > 0, path
    elif path.startswith('head/has_2/'):
      np.testing.assert_allclose(d_mult, 10 * d_base, rtol=1e-3, err_msg=path)
    else:
      np.testing.assert_allclose(d_mult, d_base, rtol=1e-5, err_msg=path)


def test_evaluate_checkpoint_scores_a_multitask_run_on_true_labels(data_dir, tmp_path):
  from jaxtransfer import evaluation
  out = train.train(tiny_config(data_dir), str(tmp_path))
  again = evaluation.evaluate_checkpoint(str(tmp_path))
  assert again['mean_ap'] == pytest.approx(out.metrics['mean_ap'], abs=1e-6)
  assert again['has_3/auc'] == pytest.approx(out.metrics['has_3/auc'], abs=1e-6)
  assert again['count'] == 128 and again['split'] == 'test'


def test_pseudo_labels_fill_only_unknowns_and_respect_the_threshold():
  from jaxtransfer import losses
  from jaxtransfer.objectives.multitask import pseudo_labels
  binary = losses.Task('binary')
  labels = jnp.array([1, 0, -1, -1, -1, -1], jnp.int8)
  logits = jnp.array([-9.0, 9.0, 3.0, -3.0, 0.5, -0.5])     # sigmoid: .95 / .05 for ±3, ~.6/.4 for ±0.5
  out = np.asarray(pseudo_labels(binary, labels, logits, 0.9))
  assert out.tolist() == [1, 0, 1, 0, -1, -1]                 # known labels kept even against the teacher
  assert np.asarray(pseudo_labels(binary, labels, logits, 0.99)).tolist() == [1, 0, -1, -1, -1, -1]
  cls = losses.Task('classification', 3)
  c_labels = jnp.array([2, -1, -1], jnp.int32)
  c_logits = jnp.array([[9.0, 0, 0], [9.0, 0, 0], [1.0, 1.0, 0.9]])
  assert np.asarray(pseudo_labels(cls, c_labels, c_logits, 0.9)).tolist() == [2, 0, -1]
  reg = losses.Task('regression')
  r = jnp.array([jnp.nan, 1.0])
  assert np.array_equal(np.asarray(pseudo_labels(reg, r, jnp.zeros(2), 0.9)), np.asarray(r), equal_nan=True)


def test_pseudo_policy_trains_with_an_ema_teacher_in_its_state(data_dir, tmp_path):
  c = tiny_config(data_dir, **{'mtl.unknown_policy': 'pseudo', 'mtl.pseudo_start': 2,
                               'mtl.pseudo_threshold': 0.6, 'mtl.ema_decay': 0.5, 'train.steps': 4,
                               'train.log_every': 1, 'train.checkpoint_every': 4})
  out = train.train(c, str(tmp_path))
  assert set(out.opt_state) == {'tx', 'teacher', 'pseudo_step'} and int(out.opt_state['pseudo_step']) == 4
  # teacher = EMA of the weights: a full parameter tree, finite, lagging behind the trained weights
  t, p = rules.flatten(out.opt_state['teacher']), rules.flatten(out.params)
  assert set(t) == set(p) and all(np.isfinite(np.asarray(v)).all() for v in t.values())
  assert any(not np.allclose(t[k], p[k]) for k in p) and 'head/has_0/out/kernel' in t
  lines = [__import__('json').loads(x) for x in open(tmp_path / 'metrics.jsonl')]
  filled = [x['train/pseudo_labelled'] for x in lines if 'train/pseudo_labelled' in x]
  assert filled[0] == 0.0 and max(filled) > 0.0                # nothing before pseudo_start, then some
  assert 0 < out.metrics['mean_ap'] <= 1


def test_shuffled_tasks_permute_only_their_own_training_labels(data_dir):
  """The unrelated-tasks control: a shuffled task's training labels are a seeded permutation of its own
  (same values, other examples'), every other label and the image are the example's own."""
  from jaxtransfer.data import catalog
  source = catalog.load('scenes/small', 'train', data_dir=data_dir)
  n = len(source)
  c = tiny_config(data_dir, **{'mtl.shuffled_tasks': ('has_1', 'count')})
  objective = objectives.from_config(c)
  assert objective.train_source(tiny_config(data_dir), source) is source    # no control: untouched
  shuffled = objective.train_source(c, source)
  ids = list(range(n))
  orig, new = shuffled._source.__getitems__(ids), shuffled.__getitems__(ids)
  y, y2 = np.stack([e['labels'] for e in orig]), np.stack([e['labels'] for e in new])
  cnt, cnt2 = np.array([e['count'] for e in orig]), np.array([e['count'] for e in new])
  np.testing.assert_array_equal(np.delete(y2, 1, axis=1), np.delete(y, 1, axis=1))
  np.testing.assert_array_equal(np.stack([e['image'] for e in new]), np.stack([e['image'] for e in orig]))
  assert sorted(y2[:, 1]) == sorted(y[:, 1]) and (y2[:, 1] != y[:, 1]).any()
  assert sorted(cnt2) == sorted(cnt) and (cnt2 != cnt).any()
  np.testing.assert_array_equal(shuffled[5]['labels'], y2[5])                  # one example = a batch's row
  again = objective.train_source(c, source).__getitems__(ids)
  np.testing.assert_array_equal(np.stack([e['labels'] for e in again]), y2)     # deterministic in the seed
  c.input.subset_seed = 1
  other = np.stack([e['labels'] for e in objective.train_source(c, source).__getitems__(ids)])
  assert (other[:, 1] != y2[:, 1]).any()


def test_unknown_shuffled_task_is_a_one_line_error_before_training(data_dir, tmp_path):
  from jaxtransfer import errors
  c = tiny_config(data_dir, **{'mtl.shuffled_tasks': ('has_1', 'has_9')})
  with pytest.raises(errors.ConfigError, match=r"mtl.shuffled_tasks: 'has_9' not among the tasks"):
    train.train(c, str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists() or not list((tmp_path / 'checkpoints').iterdir())
