"""Tests for the masked multi-task losses and label validation (issue #3)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtransfer import losses
from jaxtransfer.losses import Task


def _bce(logit: float, label: int) -> float:
  p = 1.0 / (1.0 + math.exp(-logit))
  return -math.log(p) if label == 1 else -math.log(1.0 - p)


def test_masked_multilabel_loss_matches_hand_computation():
  logits = np.array([[2.0, -1.0, 0.5], [-0.5, 0.3, 1.5], [1.0, 0.0, -2.0]], np.float32)
  labels = np.array([[1, -1, 0], [0, 1, -1], [-1, 0, 1]])
  task0 = (_bce(2.0, 1) + _bce(-0.5, 0)) / 2
  task1 = (_bce(0.3, 1) + _bce(0.0, 0)) / 2
  task2 = (_bce(0.5, 0) + _bce(-2.0, 1)) / 2
  total, per_task = losses.masked_multilabel_loss(logits, labels)
  np.testing.assert_allclose(per_task, [task0, task1, task2], rtol=1e-6)
  np.testing.assert_allclose(total, task0 + task1 + task2, rtol=1e-6)
  # With every label known the total is the seed notes' "mean over examples of the sum over tasks".
  full = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 1]])
  total_full, _ = losses.masked_multilabel_loss(logits, full)
  literal = np.mean([sum(_bce(float(logits[i, t]), full[i, t]) for t in range(3)) for i in range(3)])
  np.testing.assert_allclose(total_full, literal, rtol=1e-6)


def test_example_weights_drop_padding():
  logits = jnp.array([[1.0, -1.0], [3.0, 3.0]])
  labels = jnp.array([[1, 0], [0, 0]])
  _, per_task = losses.masked_multilabel_loss(logits, labels, jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(per_task, [_bce(1.0, 1), _bce(-1.0, 0)], rtol=1e-6)


def test_task_without_known_labels_is_zero_with_exactly_zero_head_gradient():
  x = jnp.array([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.3]])
  labels = jnp.array([[1, -1], [0, -1], [-1, -1]])  # task 1 has no known label in the batch
  params = {'backbone': jnp.array([[0.3, -0.2], [0.1, 0.4]]),
            'head': {'a': jnp.array([0.5, -0.7]), 'b': jnp.array([1e3, -1e3])}}

  def loss_fn(p):
    h = jnp.tanh(x @ p['backbone'])
    logits = jnp.stack([h @ p['head']['a'], h @ p['head']['b']], axis=1)
    return losses.masked_multilabel_loss(logits, labels)

  (total, per_task), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert np.isfinite(total) and per_task[1] == 0.0
  np.testing.assert_array_equal(grads['head']['b'], np.zeros(2))
  assert np.all(np.isfinite(grads['backbone'])) and np.any(grads['head']['a'] != 0)
  # the backbone gradient is exactly that of task 0 alone
  only_a = jax.grad(lambda p: loss_fn(p)[1][0])(params)
  np.testing.assert_allclose(grads['backbone'], only_a['backbone'], rtol=1e-6)


TASKS = {
    'smiling': Task('binary'),
    'attrs': Task('multilabel', 2),
    'digit': Task('classification', 3),
    'age': Task('regression'),
}


def _batch():
  outputs = {
      'smiling': jnp.array([0.4, -1.2, 2.0]),
      'attrs': jnp.array([[0.1, -0.3], [1.0, 0.2], [-0.4, 0.8]]),
      'digit': jnp.array([[1.0, 0.0, -1.0], [0.2, 0.3, 0.1], [0.0, 2.0, 0.5]]),
      'age': jnp.array([30.0, 41.0, 25.0]),
  }
  labels = {
      'smiling': np.array([1, -1, 0]),
      'attrs': np.array([[0, -1], [1, 1], [-1, 0]]),
      'digit': np.array([2, -1, 1]),
      'age': np.array([32.0, np.nan, 20.0]),
  }
  return outputs, labels


def _log_softmax(row, k):
  return row[k] - math.log(sum(math.exp(v) for v in row))


def test_multitask_loss_heterogeneous_hand_computation():
  outputs, labels = _batch()
  losses.validate_multitask_labels(labels, TASKS)
  expected = {
      'smiling': (_bce(0.4, 1) + _bce(2.0, 0)) / 2,
      'attrs': (_bce(0.1, 0) + _bce(1.0, 1)) / 2 + (_bce(0.2, 1) + _bce(0.8, 0)) / 2,
      'digit': -(_log_softmax([1.0, 0.0, -1.0], 2) + _log_softmax([0.0, 2.0, 0.5], 1)) / 2,
      'age': ((30.0 - 32.0) ** 2 + (25.0 - 20.0) ** 2) / 2,
  }
  weights = {'smiling': 2.0, 'age': 0.01}
  total, per_task = jax.jit(lambda o, l: losses.multitask_loss(o, l, TASKS, weights))(outputs, labels)
  for name, value in expected.items():
    np.testing.assert_allclose(per_task[name], value, rtol=1e-5, err_msg=name)
  want = sum(weights.get(n, 1.0) * v for n, v in expected.items())
  np.testing.assert_allclose(total, want, rtol=1e-5)


def test_multitask_loss_absent_tasks_are_zero_without_nan_gradients():
  outputs, _ = _batch()
  labels = {
      'smiling': np.array([-1, -1, -1]),
      'attrs': np.array([[-1, -1], [1, -1], [-1, -1]]),  # second column absent
      'digit': np.array([-1, -1, -1]),
      'age': np.array([np.nan, np.nan, np.nan]),
  }
  (total, per_task), grads = jax.jit(jax.value_and_grad(
      lambda o: losses.multitask_loss(o, labels, TASKS), has_aux=True))(outputs)
  for name in ('smiling', 'digit', 'age'):
    assert per_task[name] == 0.0
    np.testing.assert_array_equal(grads[name], np.zeros_like(grads[name]))
  np.testing.assert_allclose(total, _bce(1.0, 1), rtol=1e-6)
  np.testing.assert_array_equal(grads['attrs'][:, 1], np.zeros(3))
  present = losses.present_tasks(labels, TASKS)
  assert {n: bool(v) for n, v in present.items()} == {'smiling': False, 'attrs': True, 'digit': False, 'age': False}


@pytest.mark.parametrize('labels, tasks, message', [
    (np.array([[1, 0], [2, -1]]), ['smiling', 'glasses'], r"task 'smiling': label 2 at index \(1,\)"),
    (np.array([[1, 0], [0, 0.5]]), None, r"task 'task 1': label 0.5"),
    ({'digit': np.array([0, 3])}, {'digit': Task('classification', 3)}, r"task 'digit': class index 3 .* out of range \[0, 3\)"),
    ({'digit': np.array([0, -2])}, {'digit': Task('classification', 3)}, r"task 'digit': class index -2"),
    ({'digit': np.array([0.0, 1.5])}, {'digit': Task('classification', 3)}, r"task 'digit': class labels must be integers"),
    ({'smiling': np.array([1, -1, 3])}, {'smiling': 'binary'}, r"task 'smiling': label 3 at index \(2,\)"),
    ({'attrs': np.array([[1, 0, 0]])}, {'attrs': Task('multilabel', 2)}, r"task 'attrs': 3 label columns, expected 2"),
    ({'age': np.array([1.0, np.inf])}, {'age': 'regression'}, r"task 'age': label inf"),
    ({}, {'age': 'regression'}, r"task 'age': no labels"),
    ({'age': np.array([1.0]), 'extra': np.array([1])}, {'age': 'regression'}, r"task 'extra'"),
])
def test_invalid_labels_raise_naming_the_task(labels, tasks, message):
  with pytest.raises(ValueError, match=message) as info:
    losses.validate_multitask_labels(labels, tasks)
  assert '\n' not in str(info.value)


def test_valid_labels_pass_and_unknown_kind_raises():
  losses.validate_multitask_labels(np.array([[1, 0, -1]]))
  losses.validate_multitask_labels(_batch()[1], TASKS)
  with pytest.raises(ValueError, match='unknown task kind'):
    losses.as_task('ranking')
