"""Masked per-task evaluation metrics, in numpy on the host.

They run on gathered evaluation outputs, not inside the jitted step, so plain numpy is simplest
and exact. Conventions follow `jaxtransfer.losses`: sigmoid-task labels are in {-1, 0, 1} and -1
(unknown, or the padding of the last evaluation batch) is skipped; classification labels are
class indices with -1 skipped; regression labels use NaN for unknown.

Scores and labels are (N,) for one task or (N, T) for T tasks; per-task results are (T,) arrays.
A task where a metric is undefined — no known label (accuracy), only one class among the known
labels (AUC), no known positive (AP) — gets NaN rather than an error, and `mean_average_precision`
averages over the tasks that have at least one known positive. The AUC and AP definitions are
scikit-learn's (`roc_auc_score`, `average_precision_score`, ties included), which the tests use as
an oracle; scikit-learn is not a dependency of this module.
"""

from collections.abc import Mapping

import numpy as np

from jaxtransfer.losses import TaskSpec, as_task


def _columns(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
  if scores.shape != labels.shape:
    raise ValueError(f'scores {scores.shape} and labels {labels.shape} differ in shape')
  if scores.ndim == 1:
    scores, labels = scores[:, None], labels[:, None]
  return scores, labels


def _squeeze(values: list[float], one_task: bool) -> np.ndarray:
  return np.asarray(values[0] if one_task else values, np.float64)


def multilabel_accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.0) -> np.ndarray:
  """Per-task accuracy of `scores > threshold` on the known labels (NaN if none).

  The default threshold 0 is for logits; use 0.5 for probabilities.
  """
  one_task = np.ndim(labels) == 1
  scores, labels = _columns(scores, labels)
  known = labels >= 0
  correct = ((scores > threshold) == (labels == 1)) & known
  count = known.sum(0)
  with np.errstate(invalid='ignore', divide='ignore'):
    acc = np.where(count > 0, correct.sum(0) / count, np.nan)
  return acc[0] if one_task else acc


def classification_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 accuracy of (N, C) logits over the examples with a known (>= 0) label; NaN if none."""
  logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
  known = labels >= 0
  if not known.any():
    return float('nan')
  return float(np.mean(np.argmax(logits[known], axis=-1) == labels[known]))


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of `x`, ties sharing the mean of their ranks (scipy's 'average')."""
  order = np.argsort(x, kind='mergesort')
  _, inverse, counts = np.unique(x[order], return_inverse=True, return_counts=True)
  ends = np.cumsum(counts)  # 1-based last rank of each group of equal values
  mean_rank = ends - (counts - 1) / 2.0
  ranks = np.empty(len(x), np.float64)
  ranks[order] = mean_rank[inverse]
  return ranks


def _binary_auc(score: np.ndarray, positive: np.ndarray) -> float:
  n_pos = int(positive.sum())
  n_neg = len(positive) - n_pos
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  rank_sum = _average_ranks(score)[positive].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _binary_average_precision(score: np.ndarray, positive: np.ndarray) -> float:
  n_pos = int(positive.sum())
  if n_pos == 0:
    return float('nan')
  order = np.argsort(-score, kind='mergesort')
  score, positive = score[order], positive[order]
  last_of_tie = np.r_[np.diff(score) != 0, True]  # one threshold per distinct score
  tps = np.cumsum(positive)[last_of_tie]
  fps = np.cumsum(~positive)[last_of_tie]
  precision = tps / (tps + fps)
  recall = tps / n_pos
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Per-task ROC AUC over the known labels (NaN if they hold a single class)."""
  one_task = np.ndim(labels) == 1
  scores, labels = _columns(scores, labels)
  values = [_binary_auc(s[y >= 0], y[y >= 0] == 1) for s, y in zip(scores.T, labels.T)]
  return _squeeze(values, one_task)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Per-task average precision, Σ_n (R_n - R_{n-1}) P_n, over the known labels (NaN if no positive)."""
  one_task = np.ndim(labels) == 1
  scores, labels = _columns(scores, labels)
  values = [_binary_average_precision(s[y >= 0], y[y >= 0] == 1) for s, y in zip(scores.T, labels.T)]
  return _squeeze(values, one_task)


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """Mean of `average_precision` over the tasks with at least one known positive (NaN if none)."""
  ap = np.atleast_1d(average_precision(scores, labels))
  return float(np.mean(ap[~np.isnan(ap)])) if (~np.isnan(ap)).any() else float('nan')


def multitask_metrics(
    outputs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], tasks: TaskSpec
) -> dict[str, float]:
  """Flat dict of metrics for heterogeneous tasks, e.g. `{'smiling/auc': …, 'mean_ap': …}`.

  'binary': accuracy, auc, ap; 'multilabel': mean over its labels of accuracy / auc / ap (the
  known-defined ones); 'classification': accuracy; 'regression': mse over the non-NaN labels.
  `mean_ap` averages AP over every sigmoid label (binary tasks and multilabel columns) with a
  known positive; it is present only when there is a sigmoid task.
  """
  result, aps = {}, []
  for name, task in tasks.items():
    task = as_task(task)
    out, lab = np.asarray(outputs[name]), np.asarray(labels[name])
    if task.kind in ('binary', 'multilabel'):
      out, lab = out.reshape(len(out), -1), lab.reshape(len(lab), -1)
      ap = average_precision(out, lab)
      aps.extend(ap[~np.isnan(ap)])
      for metric, values in (('accuracy', multilabel_accuracy(out, lab)), ('auc', roc_auc(out, lab)), ('ap', ap)):
        result[f'{name}/{metric}'] = float(np.nanmean(values)) if (~np.isnan(values)).any() else float('nan')
    elif task.kind == 'classification':
      result[f'{name}/accuracy'] = classification_accuracy(out, lab)
    else:
      lab = lab.astype(np.float64).reshape(out.shape)
      known = ~np.isnan(lab)
      result[f'{name}/mse'] = float(np.mean((out[known] - lab[known]) ** 2)) if known.any() else float('nan')
  if any(as_task(t).kind in ('binary', 'multilabel') for t in tasks.values()):
    result['mean_ap'] = float(np.mean(aps)) if aps else float('nan')
  return result
