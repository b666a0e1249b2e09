"""projection.dot_general: jax.lax.dot_general's values and gradients, whichever operand its kernel gradient
transposes; contractions that are not a dense projection pass through unchanged."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtransfer.models import projection


def _grads(dot, x, w, dims, g):
  y, vjp = jax.vjp(lambda a, b: dot(a, b, dims), x, w)
  return (y, *vjp(g))


@pytest.mark.parametrize('x_shape, w_shape', [
    ((4, 6, 8), (8, 32)),         # widening (mlp_in, the vocabulary projection): the kernel gradient as (gᵀx)ᵀ
    ((4, 6, 32), (32, 8)),        # narrowing (mlp_out): autodiff's orientation
    ((4, 6, 8), (8, 8)),          # square (q/k/v)
    ((4, 6, 2, 4), (2, 4, 8)),    # two input axes (attention out: heads × head_dim → width)
    ((4, 6, 8), (8, 2, 4)),       # two output axes (q/k/v: width → heads × head_dim)
    ((5, 8), (8, 40)),            # one row axis
])
def test_values_and_gradients_equal_lax_dot_general(x_shape, w_shape):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  n_in = next(n for n in range(1, len(w_shape)) if tuple(x_shape[len(x_shape) - n:]) == tuple(w_shape[:n]))
  dims = ((tuple(range(len(x_shape) - n_in, len(x_shape))), tuple(range(n_in))), ((), ()))
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
  g = jax.random.normal(kg, x_shape[:len(x_shape) - n_in] + w_shape[n_in:])
  want = jax.jit(lambda *a: _grads(jax.lax.dot_general, *a, dims, g))(x, w)
  got = jax.jit(lambda *a: _grads(projection.dot_general, *a, dims, g))(x, w)
  np.testing.assert_array_equal(got[0], want[0])                     # the forward is lax's own
  for a, b in zip(got[1:], want[1:]):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_other_contractions_pass_through():
  """Batch axes (attention's einsums) or a kernel contracted on another axis are not a dense projection."""
  q, k = jax.random.normal(jax.random.key(1), (2, 3, 5, 4)), jax.random.normal(jax.random.key(2), (2, 3, 5, 4))
  dims = (((3,), (3,)), ((0, 1), (0, 1)))
  np.testing.assert_array_equal(projection.dot_general(q, k, dims), jax.lax.dot_general(q, k, dims))
  x, w = jax.random.normal(jax.random.key(3), (3, 4)), jax.random.normal(jax.random.key(4), (6, 4))
  dims = (((1,), (1,)), ((), ()))
  np.testing.assert_array_equal(projection.dot_general(x, w, dims), jax.lax.dot_general(x, w, dims))


def test_a_dense_layer_with_it_trains_like_nn_dense():
  """nn.Dense(dot_general=projection.dot_general): the same parameters, outputs and gradients as nn.Dense."""
  x = jax.random.normal(jax.random.key(5), (3, 7, 16))
  plain, ours = nn.Dense(64), nn.Dense(64, dot_general=projection.dot_general)
  params = plain.init(jax.random.key(6), x)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ours.init(jax.random.key(6), x))
  loss = lambda m: lambda p: jnp.sum(jnp.tanh(m.apply(p, x)) ** 2)
  np.testing.assert_array_equal(ours.apply(params, x), plain.apply(params, x))
  for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss(ours))(params)),
                  jax.tree_util.tree_leaves(jax.grad(loss(plain))(params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
