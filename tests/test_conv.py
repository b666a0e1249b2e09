"""models/conv.py: few-input-channel convolutions as taps — same function, same gradients, same params."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtransfer.models import conv


def _pair(features, kernel, **kw):
  return nn.Conv(features, kernel, **kw), nn.Conv(features, kernel, conv_general_dilated=conv.conv_general_dilated, **kw)


@pytest.mark.parametrize('shape,kernel,padding', [
    ((2, 9, 7, 1), (3, 3), 'SAME'),
    ((2, 9, 7, 3), (3, 3), 'VALID'),
    ((2, 8, 8, 3), (3, 3), ((2, 0), (1, 1))),
    ((3, 6, 5, 2), (1, 1), 'SAME'),
    ((2, 10, 10, 1), (5, 5), 'SAME'),
])
def test_taps_match_lax_values_and_gradients(shape, kernel, padding):
  reference, ours = _pair(5, kernel, padding=padding)
  x = jax.random.normal(jax.random.key(0), shape)
  variables = reference.init(jax.random.key(1), x)
  assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(variables)
  assert 'conv_general_dilated' not in str(jax.make_jaxpr(ours.apply)(variables, x))   # the taps path ran
  y_ref, y = reference.apply(variables, x), ours.apply(variables, x)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  cot = jax.random.normal(jax.random.key(2), y.shape)
  grads = lambda m: jax.grad(lambda v, x: jnp.sum(m.apply(v, x) * cot), argnums=(0, 1))(variables, x)
  for g, g_ref in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(reference))):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('shape,kw', [
    ((2, 8, 8, 4), {}),                              # 3·3·4 = 36 taps > MAX_TAPS
    ((2, 8, 8, 1), {'strides': (2, 2)}),
    ((2, 8, 8, 1), {'kernel_dilation': (2, 2)}),
    ((2, 8, 8, 2), {'feature_group_count': 2}),
    ((2, 8, 8, 1), {'padding': ((-1, 1), (1, 1))}),   # negative padding crops
])
def test_other_convolutions_go_to_lax_unchanged(shape, kw):
  reference, ours = _pair(4, (3, 3), **kw)
  x = jax.random.normal(jax.random.key(0), shape)
  variables = reference.init(jax.random.key(1), x)
  assert 'conv_general_dilated' in str(jax.make_jaxpr(ours.apply)(variables, x))
  np.testing.assert_array_equal(ours.apply(variables, x), reference.apply(variables, x))


@pytest.mark.parametrize('argnum', [0, 1])
def test_backward_computes_only_the_gradient_asked_for(argnum):
  # The first layer's image is never differentiated: its input gradient must not reach XLA at all, and
  # a gradient for the input alone needs no kernel gradient — one transposed convolution either way.
  reference, ours = _pair(4, (3, 3), padding='SAME')
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 1))
  variables = reference.init(jax.random.key(1), x)
  loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
  grad = lambda m: jax.grad(loss(m), argnums=argnum)
  assert str(jax.make_jaxpr(grad(ours))(variables, x)).count('conv_general_dilated') == 1
  for g, g_ref in zip(jax.tree.leaves(grad(ours)(variables, x)), jax.tree.leaves(grad(reference)(variables, x))):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)
