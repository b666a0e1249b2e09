"""Backbones and heads: tree layout, ordered blocks, surgery, BatchNorm under freezing."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtransfer.models import backbones
from jaxtransfer.models import model as model_lib

X = jnp.asarray(np.random.RandomState(0).rand(4, 28, 28, 1), jnp.float32)


def init(spec):
  return model_lib.build(spec).init(jax.random.key(0), X)


@pytest.mark.parametrize('backbone, n_blocks', [({'name': 'cnn', 'stages': [4, 8], 'dense': [16]}, 3),
                                                ({'name': 'resnet', 'depth': [1, 2], 'width': 4}, 4)])
def test_backbone_tree_does_not_depend_on_head(backbone, n_blocks):
  a = init({'backbone': backbone, 'head': {'name': 'linear', 'num_outputs': 10}})
  b = init({'backbone': backbone, 'head': {'name': 'mlp', 'num_outputs': 3, 'hidden': [7, 5]}})
  shapes = lambda t: jax.tree_util.tree_map(jnp.shape, t)
  assert shapes(a['params']['backbone']) == shapes(b['params']['backbone'])
  assert list(a['params']['backbone']) == [f'block_{i}' for i in range(n_blocks)]
  assert model_lib.num_blocks(backbone) == n_blocks
  assert set(b['params']['head']) == {'layer_0', 'layer_1', 'out'}
  assert b['params']['head']['layer_1']['kernel'].shape == (7, 5)


@pytest.mark.parametrize('backbone', [{'name': 'cnn', 'stages': [4, 8], 'dense': [16]},
                                      {'name': 'resnet', 'depth': [1, 1], 'width': 4}])
def test_drop_last_blocks_removes_exactly_the_last_ones(backbone):
  full = init({'backbone': backbone, 'head': {'name': 'linear', 'num_outputs': 2}})['params']['backbone']
  cut_spec = model_lib.drop_last_blocks(backbone, 1)
  cut = init({'backbone': cut_spec, 'head': {'name': 'linear', 'num_outputs': 2}})['params']['backbone']
  assert list(cut) == list(full)[:-1]
  for name in cut:
    assert jax.tree_util.tree_map(jnp.shape, cut[name]) == jax.tree_util.tree_map(jnp.shape, full[name])
  with pytest.raises(ValueError, match='cannot drop'):
    model_lib.drop_last_blocks(backbone, model_lib.num_blocks(backbone))


def test_features_have_the_backbone_output_width():
  m = model_lib.build({'backbone': {'name': 'resnet', 'depth': [1, 1], 'width': 4},
                       'head': {'name': 'linear', 'num_outputs': 2}})
  v = m.init(jax.random.key(0), X)
  assert m.apply(v, X, method=m.features).shape == (4, 8)
  assert m.apply(v, X).shape == (4, 2)


def test_frozen_blocks_keep_batchnorm_statistics():
  spec = {'backbone': {'name': 'resnet', 'depth': [1], 'width': 4}, 'head': {'name': 'linear', 'num_outputs': 2}}
  m = model_lib.build(spec)
  v = m.init(jax.random.key(0), X)
  _, mutated = m.apply(v, X, train=True, frozen=('block_0',), mutable=['batch_stats'])
  old, new = v['batch_stats']['backbone'], mutated['batch_stats']['backbone']
  np.testing.assert_array_equal(new['block_0']['norm']['mean'], old['block_0']['norm']['mean'])
  assert not np.allclose(new['block_1']['norm_0']['mean'], old['block_1']['norm_0']['mean'])


def test_unknown_backbone_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
    model_lib.build({'backbone': {'name': 'vgg'}, 'head': {'name': 'linear', 'num_outputs': 2}})


def test_cnn_global_pooling_is_translation_invariant_and_size_free():
  spec = lambda pool: {'backbone': {'name': 'cnn', 'stages': [4, 8], 'dense': [6], 'pool': pool},
                       'head': {'name': 'linear', 'num_outputs': 2}}
  flat, pooled = init(spec('flatten'))['params'], init(spec('max'))['params']
  assert flat['backbone']['block_2']['dense']['kernel'].shape == (7 * 7 * 8, 6)
  assert pooled['backbone']['block_2']['dense']['kernel'].shape == (8, 6)
  m = model_lib.build(spec('max'))
  # A blob moved by a multiple of the pooling stride (4 px) gives the same features; so does a larger canvas.
  img = np.zeros((1, 28, 28, 1), np.float32)
  img[0, 4:10, 4:10] = 1.0
  moved = np.roll(img, (8, 12), axis=(1, 2))
  big = np.zeros((1, 48, 48, 1), np.float32)
  big[0, 24:30, 20:26] = 1.0
  f = lambda x: np.asarray(m.apply({'params': pooled}, jnp.asarray(x), method=m.features))
  np.testing.assert_allclose(f(img), f(moved), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(f(img), f(big), rtol=1e-5, atol=1e-6)
  assert not np.allclose(f(img), f(np.zeros_like(img)))
  # Conv blocks only (dense dropped): pooled straight to the channels.
  cut = {'name': 'cnn', 'stages': [4, 8], 'dense': [], 'pool': 'mean'}
  assert m.apply({'params': pooled}, X, method=m.features).shape == (4, 6)
  mc = model_lib.build({'backbone': cut, 'head': {'name': 'linear', 'num_outputs': 2}})
  assert mc.apply(mc.init(jax.random.key(0), X), X, method=mc.features).shape == (4, 8)
  with pytest.raises(ValueError, match='pool'):
    init(spec('avg'))


@pytest.mark.parametrize('shape, window', [((2, 8, 8, 3), 2), ((2, 7, 9, 3), 2), ((2, 7, 9, 3), 3)])
def test_max_pool_matches_flax_values_and_derivatives(shape, window):
  # reshape + max with a custom JVP is the ConvBlock's pooling because its gradient is cheap on XLA:CPU;
  # it must compute exactly nn.max_pool's VALID result (sizes not divisible by the window drop the last
  # rows/columns) and the same derivatives as select-and-scatter, ties included (the first maximum in
  # row-major order wins).
  x = jax.random.normal(jax.random.key(0), shape)
  ties = jax.nn.relu(jnp.round(x))                       # post-ReLU zeros and repeated integers
  reference = lambda v: nn.max_pool(v, (window, window), strides=(window, window))
  ours = functools.partial(backbones.max_pool, window=window)
  cot = jax.random.normal(jax.random.key(1), reference(x).shape)
  tangent = jax.random.normal(jax.random.key(2), shape)
  grad = lambda f, v: jax.grad(lambda v_: jnp.sum(f(v_) * cot))(v)
  hvp = lambda f, v: jax.jvp(jax.grad(lambda v_: jnp.sum(f(v_) ** 2)), (v,), (tangent,))[1]  # fwd-over-rev
  for v in (x, ties):
    np.testing.assert_array_equal(ours(v), reference(v))
    np.testing.assert_array_equal(grad(ours, v), grad(reference, v))
    np.testing.assert_array_equal(jax.jvp(ours, (v,), (tangent,))[1], jax.jvp(reference, (v,), (tangent,))[1])
    np.testing.assert_array_equal(hvp(ours, v), hvp(reference, v))
    assert int(jnp.sum(grad(ours, v) != 0)) == cot.size   # one winner per window, the rest get nothing
  assert int(jnp.sum(ties[:, 0:6:2, 0:6:2] == ties[:, 1:7:2, 0:6:2])) > 0   # the tie case is exercised


def test_max_pool_gives_a_nan_window_nan_and_its_gradient_to_the_nan():
  x = jnp.array([1.0, jnp.nan, 3.0, 2.0]).reshape(1, 2, 2, 1)
  y, vjp = jax.vjp(lambda v: backbones.max_pool(v, 2), x)
  assert bool(jnp.isnan(y).all())
  np.testing.assert_array_equal(vjp(jnp.ones_like(y))[0].ravel(), [0.0, 1.0, 0.0, 0.0])


def test_init_without_a_random_backbone_gives_the_same_head_and_a_zero_backbone():
  """`steps.init_variables(random_backbone=False)` (used before `transfer.init_from` overwrites the backbone)
  must not change the head a run starts from."""
  from jaxtransfer import config as config_lib
  from jaxtransfer import sharding, steps
  spec = {'backbone': {'name': 'resnet', 'depth': [1], 'width': 4},
          'head': {'name': 'mlp', 'num_outputs': 3, 'hidden': [8]}}
  model = model_lib.build(spec)
  mesh_config = config_lib.base().mesh
  mesh = sharding.mesh_from_config(mesh_config)
  full, _ = steps.init_variables(model, jax.random.key(3), (16, 16, 1), mesh_config, mesh)
  part, _ = steps.init_variables(model, jax.random.key(3), (16, 16, 1), mesh_config, mesh, random_backbone=False)
  assert jax.tree_util.tree_structure(full) == jax.tree_util.tree_structure(part)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: bool(np.array_equal(a, b)), full['params']['head'], part['params']['head']))
  for tree in (part['params']['backbone'], part['batch_stats']['backbone']):
    assert all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree))
  assert any(np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(full['params']['backbone']))
