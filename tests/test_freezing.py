"""Freezing through the optax mask: frozen weights bit-identical, no optimizer state for them."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtransfer import config as config_lib
from jaxtransfer import optim, rules, steps
from jaxtransfer.models import model as model_lib

SPECS = {
    'cnn': {'backbone': {'name': 'cnn', 'stages': [4, 8], 'dense': [16]}, 'head': {'name': 'mlp', 'num_outputs': 3, 'hidden': [8]}},
    'resnet': {'backbone': {'name': 'resnet', 'depth': [1, 1], 'width': 4}, 'head': {'name': 'linear', 'num_outputs': 3}},
}


def _batch(seed):
  rng = np.random.RandomState(seed)
  return {'image': jnp.asarray(rng.rand(8, 12, 12, 1), jnp.float32), 'label': jnp.asarray(rng.randint(0, 3, 8))}


def _leaf_bytes(tree):
  return sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))


# Freezes PART of blocks: block_1 keeps only its second conv trainable (cnn: conv_1's kernel and bias;
# resnet: conv_1's kernel), block_2 only its kernels (its biases / BatchNorm scales stay) — these blocks are
# not removed before the optimizer, so only the optax mask (multi_transform + set_to_zero) holds them still.
PARTIAL = 'head/.*|backbone/block_1/conv_1/.*|backbone/block_2/.*/kernel'


@pytest.mark.parametrize('arch', ['cnn', 'resnet'])
@pytest.mark.parametrize('trainable', ['head', 'last:1', 'last:2', 'all', PARTIAL])
def test_frozen_parameters_never_change_and_hold_no_optimizer_state(arch, trainable):
  model = model_lib.build(SPECS[arch])
  variables = model.init(jax.random.key(0), _batch(0)['image'])
  params, stats = variables['params'], variables.get('batch_stats', {})
  labels = rules.freeze_labels(trainable, params)
  cfg = config_lib.base().optim
  cfg.lr = 1e-2
  tx = optim.make(cfg, labels, total_steps=5)
  opt_state = tx.init(params)
  step = jax.jit(steps.make_train_step(model, tx, rules.frozen_blocks(labels)))
  p, s, o = params, stats, opt_state
  for i in range(5):
    p, s, o, _ = step(p, s, o, _batch(i), jax.random.key(i))

  flat_labels, before, after = rules.flatten(labels), rules.flatten(params), rules.flatten(p)
  if trainable == PARTIAL:   # the case is what it claims: frozen leaves inside blocks that still train
    partly = [b for b in rules.block_names(params) if b not in rules.frozen_blocks(labels)
              and rules.FREEZE in jax.tree_util.tree_leaves(labels['backbone'][b])]
    assert partly == ['block_1', 'block_2'], partly
  trainable_bytes = 0
  for path, label in flat_labels.items():
    if label == rules.FREEZE:
      np.testing.assert_array_equal(before[path], after[path], err_msg=path)
    else:
      trainable_bytes += before[path].nbytes
      assert not np.array_equal(before[path], after[path]), f'{path} did not train'
  # Adam holds mu and nu for trainable parameters only (plus two scalar step counts).
  assert _leaf_bytes(o) - 2 * 4 == 2 * trainable_bytes
  if stats:  # BatchNorm statistics of fully frozen blocks do not drift either.
    frozen = rules.frozen_blocks(labels)
    for name in stats['backbone']:
      same = jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, stats['backbone'][name], s['backbone'][name]))
      assert same == (name in frozen), name


def test_masked_alone_would_let_frozen_weights_move():
  """The pitfall the design avoids: optax.masked passes raw gradients of masked leaves through."""
  import optax
  params = {'a': jnp.ones(3), 'b': jnp.ones(3)}
  tx = optax.masked(optax.sgd(0.1), {'a': True, 'b': False})
  updates, _ = tx.update({'a': jnp.ones(3), 'b': jnp.ones(3)}, tx.init(params), params)
  assert np.all(np.asarray(updates['b']) != 0)
  labels = {'a': rules.TRAIN, 'b': rules.FREEZE}
  ours = optim.make(config_lib.base().optim, labels, 10)
  updates, _ = ours.update({'a': jnp.ones(3), 'b': jnp.ones(3)}, ours.init(params), params)
  assert np.all(np.asarray(updates['b']) == 0)


@pytest.mark.parametrize('trainable, convs', [('head', 3), ('last:2', 3 + 2 + 1), ('all', 3 + 4 + 3)])
def test_train_step_traces_no_backward_through_frozen_blocks(trainable, convs):
  """Convolutions in the step's jaxpr: 3 of the forward pass (the first layer, one input channel, runs as
  taps: models/conv.py), plus per trainable conv layer one for its kernel gradient and one for its input
  gradient — except the first layer, whose input needs none."""
  model = model_lib.build(SPECS['cnn'])
  batch = _batch(0)
  params = model.init(jax.random.key(0), batch['image'])['params']
  labels = rules.freeze_labels(trainable, params)
  tx = optim.make(config_lib.base().optim, labels, total_steps=5)
  step = steps.make_train_step(model, tx, rules.frozen_blocks(labels))
  jaxpr = jax.make_jaxpr(step)(params, {}, tx.init(params), batch, jax.random.key(1))

  def count(jx):
    n = 0
    for eqn in jx.eqns:
      n += eqn.primitive.name == 'conv_general_dilated'
      for p in eqn.params.values():        # nested jaxprs (pjit, custom_vjp, …)
        if hasattr(p, 'jaxpr') and hasattr(p.jaxpr, 'eqns'):
          n += count(p.jaxpr)
        elif hasattr(p, 'eqns'):
          n += count(p)
    return n
  assert count(jaxpr.jaxpr) == convs
