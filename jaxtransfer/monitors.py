"""Monitors of a pretraining run's features, measured at every evaluation: is what it learns any use for a task?

A self-supervised loss going down says little about the features (MAE's reconstruction error keeps falling
long after its features stop improving). `config.monitor.knn_data` names a small labelled dataset; at every
evaluation the run's backbone, in inference mode, embeds `knn_train_split` and `knn_eval_split` of it and a
weighted k-NN classifier (`knn_accuracy`) scores the second from the first — metric `knn_accuracy` in
metrics.jsonl and TensorBoard, next to the objective's own. No training, no gradient, no effect on the run.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from jaxtransfer import errors, features
from jaxtransfer.data import catalog


def knn_accuracy(train: features.Features, test: features.Features, k: int = 20, temperature: float = 0.07) -> float:
  """Weighted k-NN accuracy (Wu et al. 2018, as DINO reports it): cosine similarity, the k most similar
  training examples vote for their labels with weight exp(similarity / temperature)."""
  if len(train.x) == 0 or len(test.x) == 0:
    raise errors.DataError('k-NN monitor: an empty split')
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  a, b = unit(train.x.astype(np.float64)), unit(test.x.astype(np.float64))
  k = min(k, len(a))
  classes = int(max(train.y.max(), test.y.max())) + 1
  correct = 0
  for lo in range(0, len(b), 1024):
    sim = b[lo:lo + 1024] @ a.T
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    weight = np.exp(np.take_along_axis(sim, top, 1) / temperature)
    votes = np.zeros((len(sim), classes))
    np.add.at(votes, (np.arange(len(sim))[:, None], train.y[top]), weight)
    correct += int(np.sum(np.argmax(votes, 1) == test.y[lo:lo + 1024]))
  return correct / len(b)


class KnnMonitor:
  """`config.monitor`'s k-NN probe for one run: the labelled splits are opened once, embedded at every call."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, ...]):
    m = config.monitor
    data_dir, manual_dir = config.input.data_dir or None, config.input.manual_dir or None
    shape = catalog.info(m.knn_data, data_dir, manual_dir=manual_dir).image_shape
    if tuple(shape) != tuple(image_shape):
      raise errors.ConfigError(f'monitor.knn_data={m.knn_data!r} has images {tuple(shape)} but the run\'s have '
                               f'{tuple(image_shape)}')
    self.k = int(m.knn_k)
    self.train = catalog.load(m.knn_data, m.knn_train_split, data_dir=data_dir, manual_dir=manual_dir)
    self.eval = catalog.load(m.knn_data, m.knn_eval_split, data_dir=data_dir, manual_dir=manual_dir)

  def __call__(self, spec: dict[str, Any], params: Any, batch_stats: Any) -> dict[str, float]:
    backbone = features.Backbone(spec['backbone'], params['backbone'], (batch_stats or {}).get('backbone', {}),
                                 'monitor')
    return {'knn_accuracy': knn_accuracy(features.extract(backbone, self.train), features.extract(backbone, self.eval),
                                         self.k)}


def from_config(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> KnnMonitor | None:
  """The run's monitor, or None when `monitor.knn_data` is empty."""
  m = config.get('monitor')
  if m is None or not m.get('knn_data'):
    return None
  return KnnMonitor(config, image_shape)
