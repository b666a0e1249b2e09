"""Tests for the masked per-task metrics; scikit-learn is the oracle for AUC and AP."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from jaxtransfer import metrics
from jaxtransfer.losses import Task


def _random_multitask(seed: int, n: int = 40, t: int = 4):
  rng = np.random.default_rng(seed)
  scores = np.round(rng.normal(size=(n, t)), 1)  # rounding creates ties
  labels = rng.integers(0, 2, size=(n, t))
  labels[rng.random((n, t)) < 0.3] = -1
  return scores, labels


@pytest.mark.parametrize('seed', range(5))
def test_auc_and_ap_match_sklearn_on_known_labels(seed):
  scores, labels = _random_multitask(seed)
  auc, ap = metrics.roc_auc(scores, labels), metrics.average_precision(scores, labels)
  for t in range(labels.shape[1]):
    known = labels[:, t] >= 0
    np.testing.assert_allclose(auc[t], roc_auc_score(labels[known, t], scores[known, t]), rtol=1e-12)
    np.testing.assert_allclose(ap[t], average_precision_score(labels[known, t], scores[known, t]), rtol=1e-12)
  np.testing.assert_allclose(metrics.mean_average_precision(scores, labels), ap.mean(), rtol=1e-12)


def test_unknown_labels_are_ignored():
  scores, labels = _random_multitask(7)
  changed = scores.copy()
  changed[labels == -1] = np.random.default_rng(1).normal(size=(labels == -1).sum()) * 100
  for fn in (metrics.roc_auc, metrics.average_precision, metrics.multilabel_accuracy):
    np.testing.assert_array_equal(fn(scores, labels), fn(changed, labels))


def test_accuracy_by_hand():
  scores = np.array([[2.0, -1.0], [-0.5, 0.3], [1.0, 0.2], [0.1, -3.0]])
  labels = np.array([[1, -1], [1, 1], [0, -1], [-1, -1]])
  # task 0: correct, wrong, wrong (3 known); task 1: correct (1 known)
  np.testing.assert_allclose(metrics.multilabel_accuracy(scores, labels), [1 / 3, 1.0])
  np.testing.assert_allclose(metrics.multilabel_accuracy(1 / (1 + np.exp(-scores)), labels, 0.5), [1 / 3, 1.0])
  assert metrics.multilabel_accuracy(scores[:, 0], labels[:, 0]) == pytest.approx(1 / 3)
  logits = np.array([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
  assert metrics.classification_accuracy(logits, np.array([1, 2, -1])) == 0.5
  assert np.isnan(metrics.classification_accuracy(logits, np.array([-1, -1, -1])))


def test_undefined_tasks_are_nan_and_left_out_of_mean_ap():
  scores = np.array([[0.9, 0.2, 0.5], [0.1, 0.8, 0.4], [0.4, 0.3, 0.6]])
  labels = np.array([[1, 0, -1], [0, 0, -1], [1, -1, -1]])
  auc = metrics.roc_auc(scores, labels)
  ap = metrics.average_precision(scores, labels)
  assert auc[0] == 1.0 and np.isnan(auc[1]) and np.isnan(auc[2])  # one class / no label
  assert ap[0] == 1.0 and np.isnan(ap[1]) and np.isnan(ap[2])     # no known positive
  assert np.isnan(metrics.multilabel_accuracy(scores, labels)[2])
  assert metrics.mean_average_precision(scores, labels) == 1.0


def test_multitask_metrics():
  tasks = {'smiling': Task('binary'), 'attrs': Task('multilabel', 2),
           'digit': Task('classification', 3), 'age': Task('regression')}
  outputs = {'smiling': np.array([1.0, -1.0, 0.5, 0.2]),
             'attrs': np.array([[1.0, 0.0], [-1.0, 2.0], [0.5, -1.0], [0.0, 0.0]]),
             'digit': np.eye(3)[[0, 1, 2, 0]], 'age': np.array([1.0, 2.0, 3.0, 4.0])}
  labels = {'smiling': np.array([1, 0, 0, -1]), 'attrs': np.array([[1, 0], [0, 1], [-1, -1], [0, -1]]),
            'digit': np.array([0, 2, -1, 0]), 'age': np.array([1.5, np.nan, 3.0, 2.0])}
  got = metrics.multitask_metrics(outputs, labels, tasks)
  assert got['smiling/accuracy'] == pytest.approx(2 / 3)
  assert got['smiling/auc'] == 1.0 and got['smiling/ap'] == 1.0
  assert got['attrs/auc'] == 1.0  # both columns are perfectly ranked on their known labels
  assert got['attrs/ap'] == 1.0   # both columns have a positive ranked first
  assert got['digit/accuracy'] == pytest.approx(2 / 3)
  assert got['age/mse'] == pytest.approx((0.25 + 0 + 4) / 3)
  assert got['mean_ap'] == 1.0
