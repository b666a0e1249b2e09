"""Path rules: first match wins, full coverage, no dead rules; freeze presets."""

import jax
import jax.numpy as jnp
import pytest

from jaxtransfer import rules
from jaxtransfer.models import model as model_lib

SPEC = {'backbone': {'name': 'cnn', 'stages': [4, 8], 'dense': [16]}, 'head': {'name': 'linear', 'num_outputs': 3}}


@pytest.fixture(scope='module')
def params():
  return model_lib.build(SPEC).init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)))['params']


def test_paths_are_slash_joined(params):
  paths = list(rules.flatten(params))
  assert 'backbone/block_0/conv_0/kernel' in paths
  assert 'head/out/bias' in paths
  assert len(paths) == 12


def test_first_match_wins(params):
  got = rules.flatten(rules.resolve([('backbone/block_0/.*', 'a'), ('backbone/.*', 'b'), ('.*', 'c')], params))
  assert got['backbone/block_0/conv_1/kernel'] == 'a'
  assert got['backbone/block_2/dense/bias'] == 'b'
  assert got['head/out/kernel'] == 'c'


def test_uncovered_parameter_is_an_error_naming_it(params):
  with pytest.raises(rules.RuleError, match='head/out/bias'):
    rules.resolve([('backbone/.*', 1), ('head/out/kernel', 2)], params)


def test_rule_matching_nothing_is_an_error(params):
  with pytest.raises(rules.RuleError, match="'backbone/blok_0/.*' matches no parameter"):
    rules.resolve([('backbone/blok_0/.*', 1), ('.*', 2)], params)


def test_rule_shadowed_by_earlier_rule_is_an_error(params):
  with pytest.raises(rules.RuleError, match="'head/.*' matches no parameter"):
    rules.resolve([('.*', 1), ('head/.*', 2)], params)


@pytest.mark.parametrize('trainable, trained_blocks', [
    ('all', {'block_0', 'block_1', 'block_2'}), ('head', set()), ('last:1', {'block_2'}),
    ('last:2', {'block_1', 'block_2'}), ('last:3', {'block_0', 'block_1', 'block_2'}),
    ('backbone/block_1/.*|head/.*', {'block_1'})])
def test_freeze_presets(params, trainable, trained_blocks):
  labels = rules.flatten(rules.freeze_labels(trainable, params))
  assert all(v == rules.TRAIN for p, v in labels.items() if p.startswith('head/'))
  for p, v in labels.items():
    if p.startswith('backbone/'):
      assert (v == rules.TRAIN) == (p.split('/')[1] in trained_blocks), p
  assert set(rules.frozen_blocks(rules.freeze_labels(trainable, params))) == {'block_0', 'block_1', 'block_2'} - trained_blocks


@pytest.mark.parametrize('bad, message', [('last:4', 'has 3 blocks'), ('last:x', 'integer'),
                                          ('backbone/nothing/.*', 'matches no parameter'), ('(', 'not a valid regex')])
def test_bad_freeze_spec_raises(params, bad, message):
  with pytest.raises(rules.RuleError, match=message):
    rules.freeze_labels(bad, params)


def test_default_fills_uncovered_leaves_and_rules_stay_strict(params):
  got = rules.flatten(rules.resolve([('head/.*', 'h')], params, default='d'))
  assert got['head/out/kernel'] == 'h' and got['backbone/block_0/conv_0/kernel'] == 'd'
  assert set(got.values()) == {'h', 'd'}
  everything = rules.flatten(rules.resolve([('.*', 'x')], params, default='d'))   # default left unused: fine
  assert set(everything.values()) == {'x'}
  with pytest.raises(rules.RuleError, match="'hed/.*' matches no parameter"):
    rules.resolve([('hed/.*', 'h')], params, default='d')


@pytest.mark.parametrize('name, index', [('block_0', 0), ('block_17', 17), ('block_', None), ('block_x', None),
                                         ('stem', None), ('block_1/conv', None), ('xblock_1', None)])
def test_block_index(name, index):
  assert rules.block_index(name) == index
