"""Freeze presets at their edges (mutation-testing gaps of test_rules.py): block order past block_9,
'bitfit', 'last:0', a malformed 'last:K'."""

import pytest

from jaxtransfer import rules

# Twelve blocks: 'block_10' sorts before 'block_2' as text, not in computation order.
PARAMS = {'backbone': {f'block_{i}': {'conv': {'kernel': 0, 'bias': 0}} for i in (3, 11, 0, 10, 2, 1, 9, 4, 5, 6, 7, 8)},
          'head': {'out': {'kernel': 0, 'bias': 0}}}


def test_block_names_in_computation_order_past_block_9():
  assert rules.block_names(PARAMS) == [f'block_{i}' for i in range(12)]
  labels = rules.flatten(rules.freeze_labels('last:3', PARAMS))
  assert {p.split('/')[1] for p, v in labels.items() if v == rules.TRAIN and p.startswith('backbone')} == {
      'block_9', 'block_10', 'block_11'}


def test_bitfit_trains_biases_and_head_and_freezes_every_kernel():
  labels = rules.flatten(rules.freeze_labels('bitfit', PARAMS))
  assert all(v == (rules.TRAIN if p.endswith('/bias') or p.startswith('head/') else rules.FREEZE)
             for p, v in labels.items()), labels
  assert labels['backbone/block_5/conv/kernel'] == rules.FREEZE and labels['head/out/kernel'] == rules.TRAIN


def test_last_zero_is_the_head_only_and_malformed_last_is_an_error():
  assert rules.freeze_labels('last:0', PARAMS) == rules.freeze_labels('head', PARAMS)
  for bad in ('last:1:2', 'last:13', 'last:-1'):
    with pytest.raises(rules.RuleError, match=f"trainable '{bad}'"):
      rules.freeze_labels(bad, PARAMS)
