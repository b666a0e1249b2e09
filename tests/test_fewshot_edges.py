"""k per class at its edge (a mutation-testing gap of test_data.py): a class with exactly k examples is enough."""

import numpy as np

from jaxtransfer.data import fewshot


def test_k_equal_to_the_smallest_class_takes_all_of_it():
  labels = np.array([0, 1, 1, 2, 2, 2, 0, 1, 2])          # class 0 has exactly 2 examples
  idx = fewshot.k_per_class_indices(labels, 2, seed=0)
  assert sorted(labels[idx].tolist()) == [0, 0, 1, 1, 2, 2]
  assert set(np.flatnonzero(labels == 0)) <= set(idx.tolist())
