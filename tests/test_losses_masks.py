"""Masks and example weights of every task kind, against numpy hand computations (mutation-testing gaps of
test_losses.py: weights, (B, 1) class labels, class 0, regression with (B, D) outputs, `present_tasks`)."""

import numpy as np
import pytest

from jaxtransfer import errors, losses

W = np.array([1.0, 0.5, 0.0, 2.0], np.float32)          # fractional and zero example weights


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _weighted_mean(values, weights):
  return float((values * weights).sum() / weights.sum())


def test_classification_with_unknowns_class_zero_weights_and_column_labels():
  logits = np.array([[2.0, 0.1, -1.0], [0.3, 0.2, 0.1], [1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]], np.float32)
  labels = np.array([0, -1, 2, 1])
  ce = -_log_softmax(logits)[np.arange(4), np.maximum(labels, 0)]
  want = _weighted_mean(ce, W * (labels >= 0))
  for lab in (labels, labels[:, None]):                # (B,) or (B, 1) labels
    total, per_task = losses.multitask_loss({'c': logits}, {'c': lab}, {'c': losses.Task('classification', 3)},
                                            example_weights=W)
    assert float(per_task['c']) == pytest.approx(want, rel=1e-5)
    assert float(total) == pytest.approx(want, rel=1e-5)


def test_softmax_cross_entropy_of_one_example_is_its_loss():
  logits = np.array([[0.5, -0.5]], np.float32)
  want = -_log_softmax(logits)[0, 1]
  assert float(losses.softmax_cross_entropy(logits, np.array([1]))) == pytest.approx(want, rel=1e-6)


def test_multilabel_weights_and_infinite_outputs_on_unknown_labels():
  logits = np.array([[0.5, np.inf], [-1.0, 0.2], [3.0, -np.inf], [0.0, 1.0]], np.float32)
  labels = np.array([[1, -1], [0, 1], [1, -1], [-1, 0]])
  p = 1 / (1 + np.exp(-np.nan_to_num(logits, posinf=0.0, neginf=0.0)))
  bce = -1.0 * (labels > 0) * np.log(p) - (labels == 0) * np.log(1 - p)
  mask = (labels >= 0) * W[:, None]
  want = sum(_weighted_mean(bce[:, t], mask[:, t]) for t in range(2))
  total, per_task = losses.multitask_loss({'m': logits}, {'m': labels}, {'m': losses.Task('multilabel', 2)},
                                          example_weights=W)
  assert np.isfinite(float(total))                     # an unknown label's output is never looked at
  assert float(per_task['m']) == pytest.approx(want, rel=1e-5)


def test_regression_with_nan_unknowns_and_weights_on_two_outputs():
  out = np.array([[1.0, 2.0], [0.0, -1.0], [5.0, 5.0], [0.5, 0.0]], np.float32)
  lab = np.array([[1.5, np.nan], [1.0, -2.0], [0.0, 0.0], [np.nan, 1.0]], np.float32)
  sq = np.nan_to_num((out - lab) ** 2)
  mask = ~np.isnan(lab) * W[:, None]
  want = float((sq * mask).sum() / mask.sum())
  _, per_task = losses.multitask_loss({'r': out}, {'r': lab}, {'r': 'regression'}, example_weights=W)
  assert float(per_task['r']) == pytest.approx(want, rel=1e-5)


def test_present_tasks_by_kind_and_example_weights():
  tasks = {'c': losses.Task('classification', 3), 'r': 'regression', 'm': 'multilabel'}
  labels = {'c': np.array([0, -1, -1, -1]), 'r': np.array([np.nan, -2.0, np.nan, np.nan]),
            'm': np.array([[-1, -1], [-1, -1], [-1, 1], [-1, -1]])}
  present = losses.present_tasks(labels, tasks)
  assert {k: bool(v) for k, v in present.items()} == {'c': True, 'r': True, 'm': True}
  # Weight 0 on the rows holding the only known labels: absent; a fractional weight still counts.
  present = losses.present_tasks(labels, tasks, example_weights=np.array([0.0, 0.5, 0.0, 1.0]))
  assert {k: bool(v) for k, v in present.items()} == {'c': False, 'r': True, 'm': False}
  assert not bool(losses.present_tasks({'r': np.full(4, np.nan)}, {'r': 'regression'})['r'])


def test_classification_labels_must_be_integral_numbers():
  task = {'c': losses.Task('classification', 3)}
  losses.validate_multitask_labels({'c': np.array([0.0, 2.0, -1.0])}, task)      # integral floats are fine
  with pytest.raises(errors.DataError, match=r"got 1\.5 at index \(1,\)"):
    losses.validate_multitask_labels({'c': np.array([0.0, 1.5])}, task)
  with pytest.raises(errors.DataError, match=r"got inf at index \(0,\)"):
    losses.validate_multitask_labels({'c': np.array([np.inf, 1.0])}, task)
  with pytest.raises(errors.DataError, match=r"got dtype\('<U1'\) at index \(\)"):
    losses.validate_multitask_labels({'c': np.array(['a', 'b'])}, task)
  with pytest.raises(ValueError, match='need a task spec'):
    losses.validate_multitask_labels({'c': np.array([0])}, ['c'])                  # names, not a spec
