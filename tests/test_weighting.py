"""Tests for the loss-weighting methods: mechanics, mask-awareness, and the shared interface."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtransfer import losses
from jaxtransfer import weighting as W


def _linear_losses(g: np.ndarray):
  """Per-task losses L_t(θ) = g_t · θ, whose gradients are exactly the rows of g."""
  g = jnp.asarray(g, jnp.float32)
  return lambda theta: (g @ theta, None)


def _update(method, g, present=None, state=None, losses_=None):
  g = np.asarray(g, np.float64)
  t = g.shape[0]
  present = jnp.ones(t, bool) if present is None else jnp.asarray(present)
  state = method.init(t, jax.random.key(0)) if state is None else state
  losses_ = jnp.ones(t) if losses_ is None else jnp.asarray(losses_, jnp.float32)
  return jax.jit(method.update)(losses_, present, state, jnp.asarray(g @ g.T, jnp.float32))


# --- PCGrad ---------------------------------------------------------------------------------


def test_pcgrad_removes_the_conflicting_component_hand_example():
  g = np.array([[1.0, 0.0], [-1.0, 1.0]])  # g1·g2 = -1 < 0
  # g1' = g1 - (-1/2) g2 = (0.5, 0.5); g2' = g2 - (-1/1) g1 = (0, 1); d = (0.5, 1.5)
  grads, _, info = jax.jit(lambda key: W.weighted_grads(
      W.pcgrad(), _linear_losses(g), jnp.zeros(2), key, jnp.ones(2, bool), shared=None))(jax.random.key(0))
  np.testing.assert_allclose(grads, [0.5, 1.5], atol=1e-6)
  np.testing.assert_allclose(info.weights.shared, [2.0, 1.5], atol=1e-6)  # d = 2 g1 + 1.5 g2
  np.testing.assert_allclose(info.weights.heads, [1.0, 1.0])
  g1p, g2p = np.array([0.5, 0.5]), np.array([0.0, 1.0])
  assert abs(g1p @ g[1]) < 1e-7 and abs(g2p @ g[0]) < 1e-7  # nothing left that conflicts


def test_pcgrad_leaves_agreeing_gradients_alone_and_ignores_absent_tasks():
  agree = np.array([[1.0, 0.2], [0.5, 1.0]])
  weights, _ = _update(W.pcgrad(), agree)
  np.testing.assert_allclose(weights.shared, [1.0, 1.0], atol=1e-6)
  # a third task that would conflict, absent (its gradient is zero, as the masked loss makes it)
  g = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]])
  weights, _ = _update(W.pcgrad(), g, present=[True, False, True])
  np.testing.assert_allclose(weights.shared, [2.0, 0.0, 1.5], atol=1e-6)
  np.testing.assert_allclose(weights.heads, [1.0, 0.0, 1.0])


# --- uncertainty weighting -----------------------------------------------------------------


def test_uncertainty_log_variances_are_trained_and_follow_the_loss_scale():
  method = W.uncertainty(optax.sgd(0.1))
  state = method.init(3, jax.random.key(0))
  loss_values = jnp.array([4.0, 0.25, 1.0])
  present = jnp.array([True, True, False])
  weights, new_state = method.update(loss_values, present, state, None)
  np.testing.assert_allclose(weights.shared, [1.0, 1.0, 0.0])  # exp(-0) for present tasks
  # one SGD step on Σ exp(-s) L + s: ds = 0.1 * (L - 1)
  np.testing.assert_allclose(new_state.log_var, [0.3, -0.075, 0.0], rtol=1e-6)
  assert new_state.log_var[2] == 0.0  # absent: no gradient from either term

  step = jax.jit(method.update)
  for _ in range(200):
    weights, state = step(loss_values, present, state, None)
  np.testing.assert_allclose(state.log_var[:2], np.log([4.0, 0.25]), atol=1e-3)  # optimum s = log L
  assert state.log_var[2] == 0.0
  np.testing.assert_allclose(weights.shared[:2], [0.25, 4.0], rtol=1e-2)  # large loss, small weight


# --- GradNorm -------------------------------------------------------------------------------


def test_gradnorm_moves_weights_toward_balanced_gradient_norms():
  g = np.array([[10.0, 0.0], [0.0, 1.0]])  # task 0's gradient is 10× larger
  method = W.gradnorm(alpha=1.5, optimizer=optax.sgd(0.01))
  state = method.init(2, jax.random.key(0))
  step = jax.jit(lambda s: _update(method, g, state=s))
  gaps = []
  for _ in range(60):
    weights, state = step(state)
    norms = np.asarray(weights.shared) * np.linalg.norm(g, axis=1)
    gaps.append(abs(norms[0] - norms[1]))
  assert gaps[-1] < 0.2 * gaps[0]
  np.testing.assert_allclose(state.weights.sum(), 2.0, rtol=1e-6)  # Σ w = T is kept
  assert state.weights[0] < state.weights[1]


def test_gradnorm_follows_training_rates():
  # equal gradient norms, but task 1 has trained less (higher L/L0): it gets the larger weight
  g = np.eye(2)
  method = W.gradnorm(alpha=1.5, optimizer=optax.sgd(0.01))
  _, state = _update(method, g, losses_=[1.0, 1.0])
  step = jax.jit(lambda s: _update(method, g, state=s, losses_=[0.5, 1.0]))
  for _ in range(20):
    _, state = step(state)
  assert state.weights[1] > 1.0 > state.weights[0]
  np.testing.assert_allclose(state.initial_losses, [1.0, 1.0])


# --- CAGrad ---------------------------------------------------------------------------------


def _cagrad_by_grid(g: np.ndarray, c: float) -> np.ndarray:
  g0 = g.sum(0)
  qs = np.linspace(0.0, 1.0, 20001)
  gw = qs[:, None] * g[0] + (1 - qs[:, None]) * g[1]
  objective = gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw, axis=1)
  best = gw[np.argmin(objective)]
  return (g0 + c * np.linalg.norm(g0) / np.linalg.norm(best) * best) / (1 + c**2)


def test_cagrad_on_a_conflicting_toy_problem():
  g = np.array([[1.0, 0.0], [-2.0, 0.2]])  # the plain sum d = (-1, 0.2) increases task 0's loss
  worst = []
  for c in (0.0, 0.4, 0.9):
    grads, _, _ = jax.jit(lambda: W.weighted_grads(
        W.cagrad(c=c), _linear_losses(g), jnp.zeros(2), (), jnp.ones(2, bool), shared=None))()
    d = np.asarray(grads, np.float64)
    if c == 0.0:
      np.testing.assert_allclose(d, g.sum(0), atol=1e-6)
    np.testing.assert_allclose(d, _cagrad_by_grid(g, c), atol=1e-3)
    worst.append(np.min(g @ d))  # first-order decrease of the worst task along -d
  assert worst[0] < worst[1] < worst[2]
  assert worst[0] == pytest.approx(-1.0) and worst[2] > -0.05


def test_cagrad_ignores_absent_tasks():
  g2 = np.array([[1.0, 0.0], [-2.0, 0.2]])
  g3 = np.array([[1.0, 0.0], [0.0, 0.0], [-2.0, 0.2]])
  w2, _ = _update(W.cagrad(c=0.4), g2)
  w3, _ = _update(W.cagrad(c=0.4), g3, present=[True, False, True])
  np.testing.assert_allclose(np.asarray(w3.shared)[[0, 2]], w2.shared, rtol=1e-5)
  assert w3.shared[1] == 0.0 and w3.heads[1] == 0.0
  none, _ = _update(W.cagrad(), np.zeros((2, 2)), present=[False, False])
  np.testing.assert_array_equal(none.shared, [0.0, 0.0])


# --- DWA ------------------------------------------------------------------------------------


def _softmax(x):
  e = np.exp(np.asarray(x, np.float64) - np.max(x))
  return e / e.sum()


def test_dwa_weights_follow_the_ratio_of_each_tasks_last_two_losses():
  method = W.dwa(temperature=2.0)
  step = jax.jit(method.update)
  state = method.init(3, jax.random.key(0))
  all_present = jnp.ones(3, bool)
  w, state = step(jnp.array([1.0, 1.0, 1.0]), all_present, state, None)
  np.testing.assert_array_equal(w.shared, [1.0, 1.0, 1.0])  # no history yet: equal
  # task 2 absent: weight 0, its history untouched
  w, state = step(jnp.array([0.5, 1.0, 0.0]), jnp.array([True, True, False]), state, None)
  np.testing.assert_array_equal(w.shared, [1.0, 1.0, 0.0])  # one record each: still equal
  np.testing.assert_array_equal(state.last, [0.5, 1.0, 1.0])
  np.testing.assert_array_equal(state.count, [2, 2, 1])
  w, state = step(jnp.array([0.4, 1.2, 0.9]), all_present, state, None)
  # ratios: task 0 0.5/1 (improved: less weight), task 1 1/1, task 2 has one record: 1
  expected = 3 * _softmax(np.array([0.5, 1.0, 1.0]) / 2.0)
  np.testing.assert_allclose(w.shared, expected, rtol=1e-6)
  np.testing.assert_array_equal(w.shared, w.heads)
  assert w.shared[0] < w.shared[1] and float(np.sum(w.shared)) == pytest.approx(3.0)
  np.testing.assert_array_equal(state.last, np.float32([0.4, 1.2, 0.9]))
  np.testing.assert_array_equal(state.previous, [0.5, 1.0, 1.0])
  # two present tasks: weights over them sum to 2, ratios 0.4/0.5 and 0.9/1.0 (task 1 absent)
  w, _ = step(jnp.array([0.3, 0.0, 0.8]), jnp.array([True, False, True]), state, None)
  expected = np.zeros(3)
  expected[[0, 2]] = 2 * _softmax(np.array([0.4 / 0.5, 0.9 / 1.0]) / 2.0)
  np.testing.assert_allclose(w.shared, expected, rtol=1e-6)


# --- RLW ------------------------------------------------------------------------------------


def test_rlw_draws_softmax_normal_weights_from_the_state_and_ignores_absent_tasks():
  method = W.rlw()
  key = jax.random.PRNGKey(7)  # the loop's raw uint32 key
  state = method.init(4, key)
  step = jax.jit(method.update)
  losses_ = jnp.ones(4)
  w, new = step(losses_, jnp.ones(4, bool), state, None)
  z = jax.random.normal(jax.random.fold_in(key, 0), (4,))
  np.testing.assert_allclose(w.shared, 4 * _softmax(z), rtol=1e-5)
  assert int(new.step) == 1 and np.array_equal(new.key, key)
  again, _ = step(losses_, jnp.ones(4, bool), state, None)
  np.testing.assert_array_equal(again.shared, w.shared)  # a function of the state only
  present = jnp.array([True, False, True, True])
  w2, _ = step(losses_, present, new, None)
  assert w2.shared[1] == 0.0 and np.all(np.asarray(w2.shared)[[0, 2, 3]] > 0)
  assert float(np.sum(w2.shared)) == pytest.approx(3.0)
  assert not np.allclose(np.asarray(w2.shared)[[0, 2, 3]], np.asarray(w.shared)[[0, 2, 3]])  # a new draw
  draws = []
  for _ in range(1000):
    w, state = step(losses_, jnp.ones(4, bool), state, None)
    draws.append(np.asarray(w.shared))
  draws = np.stack(draws)
  np.testing.assert_allclose(draws.mean(0), 1.0, atol=0.06)  # E[λ_t] = 1, as equal weighting
  assert draws.std(0).min() > 0.3 and len(np.unique(draws[:, 0])) == 1000


# --- FAMO -----------------------------------------------------------------------------------


def test_famo_weights_and_one_logit_step_by_hand():
  method = W.famo(lr=0.025, weight_decay=0.01)
  step = jax.jit(method.update)
  state = method.init(3, jax.random.key(0))
  w, state = step(jnp.array([1.0, 2.0, 4.0]), jnp.ones(3, bool), state, None)
  # ξ = 0: z uniform, λ ∝ z / L, scaled to sum to 3
  np.testing.assert_allclose(w.shared, 3 * np.array([1.0, 0.5, 0.25]) / 1.75, rtol=1e-6)
  np.testing.assert_array_equal(state.logits, [0.0, 0.0, 0.0])  # nothing to learn from yet
  # task 0's log-loss fell by log 2, the others did not move: task 0 loses logit, the others gain;
  # Adam's first step is lr·sign(gradient) (ξ = 0: no decay term yet)
  w, state = step(jnp.array([0.5, 2.0, 4.0]), jnp.ones(3, bool), state, None)
  np.testing.assert_allclose(state.logits, [-0.025, 0.025, 0.025], rtol=1e-5)
  z = _softmax(np.array([-0.025, 0.025, 0.025]))
  inv = z / np.array([0.5, 2.0, 4.0])
  np.testing.assert_allclose(w.shared, 3 * inv / inv.sum(), rtol=1e-5)
  np.testing.assert_array_equal(w.shared, w.heads)
  # absent task: λ 0, its logit, previous loss and flag unchanged; the other two renormalised
  before = state
  w, state = step(jnp.array([0.4, 0.0, 4.0]), jnp.array([True, False, True]), state, None)
  assert w.shared[1] == 0.0 and float(np.sum(w.shared)) == pytest.approx(2.0)
  assert state.logits[1] == before.logits[1] and state.last[1] == 2.0 and state.logits[0] < before.logits[0]


def test_famo_shifts_weight_to_the_task_that_improves_slower_until_the_decay_balances():
  method = W.famo(lr=0.025, weight_decay=0.01)
  step = jax.jit(method.update)
  state = method.init(2, jax.random.key(0))
  gaps = []
  for i in range(300):
    # task 0's loss falls 5 % per step, task 1's 1 %: task 1 (slower) gains logit
    _, state = step(jnp.array([0.95**i, 0.99**i]), jnp.ones(2, bool), state, None)
    gaps.append(float(state.logits[1] - state.logits[0]))
  assert all(b > a for a, b in zip(gaps[:30], gaps[1:31]))
  # the logit gradient z0·z1·(δ0 − δ1) is then held by the L2 decay γ·ξ (Adam's fixed point)
  z = _softmax(np.asarray(state.logits))
  pull = z[0] * z[1] * (np.log(1 / 0.95) - np.log(1 / 0.99))
  np.testing.assert_allclose(0.01 * np.asarray(state.logits), [-pull, pull], rtol=0.05)


# --- Nash-MTL -------------------------------------------------------------------------------


def test_nash_mtl_solves_the_bargaining_condition():
  # orthogonal gradients: G/‖G‖_F diagonal, so α_i = 1/√(G'_ii) exactly
  g = np.diag([1.0, 2.0])
  w, _ = _update(W.nash_mtl(reg=0.0), g)
  np.testing.assert_allclose(w.shared, 17**0.25 / np.array([1.0, 2.0]), rtol=1e-5)
  np.testing.assert_array_equal(w.shared, w.heads)  # α weights the whole loss (the paper's code)
  rng = np.random.default_rng(0)
  for t, d in ((2, 3), (4, 6), (6, 9), (8, 8)):
    g = rng.normal(size=(t, d)) * rng.uniform(0.1, 10.0, size=(t, 1))
    g[0] -= 0.8 * g[1]  # some conflict
    w, _ = _update(W.nash_mtl(), g)
    alpha = np.asarray(w.shared, np.float64)
    gram = g @ g.T
    m = gram / np.linalg.norm(gram) + 1e-4 * np.eye(t)
    assert np.all(alpha > 0)
    np.testing.assert_allclose(m @ alpha, 1 / alpha, rtol=2e-4)  # (G α)_i = 1/α_i
    d = alpha @ g
    assert np.all(g @ d > 0)  # every task improves along d
    scaled, _ = _update(W.nash_mtl(), 1000.0 * g)  # G is normalised: α does not depend on its scale
    np.testing.assert_allclose(scaled.shared, alpha, rtol=1e-4)


def test_nash_mtl_leaves_absent_tasks_out():
  g2 = np.array([[1.0, 0.0, 0.5], [-0.5, 1.0, 0.0]])
  g3 = np.insert(g2, 1, 0.0, axis=0)
  w2, _ = _update(W.nash_mtl(), g2)
  w3, _ = _update(W.nash_mtl(), g3, present=[True, False, True])
  np.testing.assert_allclose(np.asarray(w3.shared)[[0, 2]], w2.shared, rtol=1e-5)
  assert w3.shared[1] == 0.0 and w3.heads[1] == 0.0
  none, _ = _update(W.nash_mtl(), np.zeros((2, 3)), present=[False, False])
  np.testing.assert_array_equal(none.shared, [0.0, 0.0])


# --- UPGrad ---------------------------------------------------------------------------------


def test_upgrad_hand_examples():
  # g1·g2 < 0: g1 projects onto the cone's edge (1, 1)/2 = g1 + g2/2, g2 onto (0, 1) = g1 + g2
  g = np.array([[1.0, 0.0], [-1.0, 1.0]])
  w, _ = _update(W.upgrad(reg=0.0), g)
  np.testing.assert_allclose(w.shared, [2.0, 1.5], atol=1e-6)
  np.testing.assert_array_equal(w.heads, [1.0, 1.0])
  w, _ = _update(W.upgrad(reg=0.0, average=True), g)
  np.testing.assert_allclose(w.shared, [1.0, 0.75], atol=1e-6)
  # torchjd's documented example: UPGrad()(J) = [0.2929, 1.9004, 1.9004] (mean, reg 1e-4)
  j = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
  w, _ = _update(W.upgrad(average=True), j)
  np.testing.assert_allclose(np.asarray(w.shared) @ j, [0.2929, 1.9004, 1.9004], atol=1e-4)


def test_upgrad_is_non_conflicting_and_equal_weighting_without_conflict():
  from scipy.optimize import nnls
  rng = np.random.default_rng(1)
  for t, d in ((3, 5), (5, 8), (8, 12)):
    agree = np.abs(rng.normal(size=(t, d)))  # all pairwise dot products > 0
    w, _ = _update(W.upgrad(), agree)
    np.testing.assert_array_equal(w.shared, np.ones(t))  # exactly the sum, as equal()
    w, _ = _update(W.upgrad(average=True), agree)
    np.testing.assert_allclose(w.shared, np.full(t, 1 / t), rtol=1e-6)  # torchjd's mean
    g = rng.normal(size=(t, d))
    g[0] -= 2 * g[1]
    gram = g @ g.T
    w, _ = _update(W.upgrad(reg=0.0), g)
    w = np.asarray(w.shared, np.float64)
    assert np.min(gram @ w) >= -1e-6 * np.trace(gram)  # g_j·d ≥ 0 for every task
    assert np.min(gram @ np.ones(t)) < -0.1  # the plain sum did conflict
    # oracle: projecting g_i = the non-negative least squares min_{s ≥ 0} ‖Gᵀ(e_i + s)‖ (scipy)
    ref = sum(np.eye(t)[i] + nnls(g.T, -g[i])[0] for i in range(t))
    np.testing.assert_allclose(w, ref, rtol=1e-4, atol=1e-5)
    w_reg, _ = _update(W.upgrad(), g)  # default reg 1e-4: non-conflicting up to reg·tr(G)·Σv
    assert np.min(gram @ np.asarray(w_reg.shared)) >= -2e-4 * np.trace(gram) * np.sum(w_reg.shared)


def test_upgrad_leaves_absent_tasks_out():
  g2 = np.array([[1.0, 0.0], [-1.0, 1.0]])
  g3 = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]])
  w2, _ = _update(W.upgrad(), g2)
  w3, _ = _update(W.upgrad(), g3, present=[True, False, True])
  np.testing.assert_allclose(np.asarray(w3.shared)[[0, 2]], w2.shared, rtol=1e-6)
  np.testing.assert_array_equal(w3.heads, [1.0, 0.0, 1.0])
  assert w3.shared[1] == 0.0
  none, _ = _update(W.upgrad(), np.zeros((2, 2)), present=[False, False])
  np.testing.assert_array_equal(none.shared, [0.0, 0.0])


# --- resumability and registration ----------------------------------------------------------


@pytest.mark.parametrize('name', ['dwa', 'rlw', 'famo', 'pcgrad'])
def test_stateful_methods_resume_bit_identically_from_a_saved_state(name):
  """Steps 0-5 straight vs steps 0-2, the state through host numpy (as a checkpoint), steps 3-5."""
  method = METHODS[name]
  rng = np.random.default_rng(3)
  losses_ = jnp.asarray(rng.uniform(0.2, 2.0, size=(6, 4)), jnp.float32)
  present = jnp.asarray(rng.uniform(size=(6, 4)) > 0.3)
  g = rng.normal(size=(4, 6))
  gram = jnp.asarray(g @ g.T, jnp.float32)
  step = jax.jit(method.update)

  def run(state, steps):
    out = []
    for s in steps:
      w, state = step(losses_[s], present[s], state, gram)
      out.append(np.asarray(w.shared))
    return out, state

  start = method.init(4, jax.random.PRNGKey(11))
  straight, end = run(start, range(6))
  first, mid = run(start, range(3))
  restored = jax.tree.map(jnp.asarray, jax.tree.map(np.asarray, mid))
  second, end2 = run(restored, range(3, 6))
  for a, b in zip(straight, first + second):
    np.testing.assert_array_equal(a, b)
  jax.tree.map(np.testing.assert_array_equal, end, end2)


def test_new_methods_are_registered_for_the_config():
  from jaxtransfer import config as config_lib
  multitask = importlib.import_module('jaxtransfer.objectives.multitask')
  names = config_lib.CHOICES['mtl.weighting']
  assert {'dwa', 'rlw', 'famo', 'nashmtl', 'upgrad'} <= set(names)
  for name in names:
    method = multitask.weighting_method(name)
    assert isinstance(method, W.Weighting)
  assert multitask.weighting_method('nashmtl').needs_gram and not multitask.weighting_method('famo').needs_gram


# --- the shared interface on a small multi-task model -------------------------------------

METHODS = {
    'equal': W.equal(),
    'uncertainty': W.uncertainty(),
    'gradnorm': W.gradnorm(),
    'pcgrad': W.pcgrad(),
    'cagrad': W.cagrad(c=0.4, steps=200),
    'dwa': W.dwa(),
    'rlw': W.rlw(),
    'famo': W.famo(),
    'nash_mtl': W.nash_mtl(),
    'upgrad': W.upgrad(),
}


def _model_and_batch():
  k1, k2, k3, k4 = jax.random.split(jax.random.key(1), 4)
  params = {'backbone': jax.random.normal(k1, (5, 4)),
            'head': {t: jax.random.normal(k, (4,)) for t, k in zip('abc', (k2, k3, k4))}}
  x = jax.random.normal(jax.random.key(2), (6, 5))
  labels = jnp.array([[1, -1, 0], [0, -1, 1], [1, -1, -1], [-1, -1, 0], [0, -1, 1], [1, -1, 1]])

  def loss_fn(p, x, labels):
    h = jnp.tanh(x @ p['backbone'])
    logits = jnp.stack([h @ p['head'][t] for t in 'abc'], axis=1)
    return losses.masked_multilabel_loss(logits, labels)[1], logits

  return params, x, labels, loss_fn


@pytest.mark.parametrize('name', list(METHODS))
def test_every_method_is_mask_aware_through_weighted_grads(name):
  method = METHODS[name]
  params, x, labels, loss_fn = _model_and_batch()
  present = jnp.any(labels >= 0, axis=0)  # task 'b' has no known label
  state = method.init(3, jax.random.key(0))
  step = jax.jit(lambda p, s: W.weighted_grads(method, loss_fn, p, s, present, x, labels))
  tx = optax.sgd(0.1)
  opt_state = tx.init(params)
  for _ in range(3):
    grads, new_state, info = step(params, state)
    for leaf in jax.tree.leaves((grads, new_state, info.weights, info.losses)):
      if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
        assert np.all(np.isfinite(leaf)), name
    np.testing.assert_array_equal(grads['head']['b'], np.zeros(4))
    assert info.losses[1] == 0.0 and info.weights.shared[1] == 0.0 and info.weights.heads[1] == 0.0
    assert np.any(grads['backbone'] != 0) and np.any(grads['head']['a'] != 0)
    updates, opt_state = tx.update(grads, opt_state)
    params, state = optax.apply_updates(params, updates), new_state
  if name == 'uncertainty':
    assert state.log_var[1] == 0.0 and state.log_var[0] != 0.0
  if name == 'gradnorm':
    assert state.weights[1] == 1.0 and state.initial_losses[1] == 0.0 and not state.seen[1]
  if name == 'dwa':
    assert state.count.tolist() == [2, 0, 2] and state.last[1] == 0.0 and state.last[0] > 0
  if name == 'famo':
    assert state.logits[1] == 0.0 and state.logits[0] != 0.0 and not state.seen[1]
  if name == 'rlw':
    assert state.step == 3


def test_gram_path_matches_a_plain_backward_pass():
  params, x, labels, loss_fn = _model_and_batch()
  present = jnp.any(labels >= 0, axis=0)
  expected = jax.grad(lambda p: jnp.sum(loss_fn(p, x, labels)[0]))(params)
  for method, vectorize in ((W.equal(), True), (W.gradnorm(), True), (W.gradnorm(), False)):
    state = method.init(3, jax.random.key(0))  # GradNorm's first step uses w = 1
    step = jax.jit(lambda p, s: W.weighted_grads(method, loss_fn, p, s, present, x, labels, vectorize=vectorize))
    grads, _, _ = step(params, state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, expected)
  _, jac, _ = jax.jit(lambda p: W.per_task_grads(loss_fn, p, x, labels))(params)
  assert jac['backbone'].shape == (3, 5, 4)
  g = np.asarray(jac['backbone']).reshape(3, -1)
  np.testing.assert_allclose(W.gram_matrix(jac['backbone']), g @ g.T, rtol=1e-5, atol=1e-8)
  with pytest.raises(ValueError, match="shared='trunk'"):
    W.weighted_grads(W.pcgrad(), loss_fn, params, jax.random.key(0), present, x, labels, shared='trunk')


@pytest.mark.parametrize('name', ['gradnorm', 'pcgrad', 'cagrad', 'nash_mtl', 'upgrad'])
def test_gradients_at_features_are_the_exact_combination_of_the_chosen_coefficients(name):
  """weighted_grads_at_features: Gram from ∂L_t/∂z, then backbone grads = Σ shared[t]·∇L_t and head grads
  = Σ heads[t]·∇L_t exactly (checked against the parameter Jacobian); an absent task stays out of it."""
  method = METHODS[name]
  params, x, labels, loss_fn = _model_and_batch()
  present = jnp.any(labels >= 0, axis=0)
  features_fn = lambda w: (jnp.tanh(x @ w), None)

  def heads_fn(head, z):
    logits = jnp.stack([z @ head[t] for t in 'abc'], axis=1)
    return losses.masked_multilabel_loss(logits, labels)[1], None

  state = method.init(3, jax.random.key(0))
  (g_backbone, g_head), _, info = jax.jit(lambda p, s: W.weighted_grads_at_features(
      method, features_fn, heads_fn, p['backbone'], p['head'], s, present))(params, state)
  np.testing.assert_allclose(info.losses, loss_fn(params, x, labels)[0], rtol=1e-6)
  _, jac, _ = W.per_task_grads(loss_fn, params, x, labels)
  np.testing.assert_allclose(g_backbone, np.tensordot(info.weights.shared, jac['backbone'], 1), rtol=1e-5, atol=1e-7)
  for t in 'abc':
    np.testing.assert_allclose(g_head[t], np.tensordot(info.weights.heads, jac['head'][t], 1), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(g_head['b'], np.zeros(4))
  assert info.weights.shared[1] == 0.0 and np.all(np.isfinite(g_backbone))
  # the coefficients come from the Gram matrix at z (here it differs from the one at the backbone weights)
  dz = jax.jacrev(lambda z: heads_fn(params['head'], z)[0])(jnp.tanh(x @ params['backbone'])).reshape(3, -1)
  ref, _ = method.update(info.losses, present, state, dz @ dz.T)
  np.testing.assert_allclose(info.weights.shared, ref.shared, rtol=1e-4, atol=1e-6)
