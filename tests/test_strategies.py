"""Fine-tuning mechanisms measured on the updates they produce, not on their configs (issue #5).

LLRD / lr multipliers / weight-decay masks: the effective per-parameter update of a real train step.
L2-SP: the gradient term points to the starting (pretrained) weights. Gradual unfreezing: the trainable
set changes at the right step and nothing frozen moves before (BatchNorm statistics included). LP-FT:
the second phase uses its own learning rate and starts from the probed head. Surgery: validated tree.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtransfer import config as config_lib
from jaxtransfer import errors, finetune, optim, rules, train
from jaxtransfer import steps as step_lib   # `steps` is a step count below
from jaxtransfer.models import model as model_lib

CNN = {'name': 'cnn', 'stages': [4, 8], 'dense': [16]}
RESNET = {'name': 'resnet', 'depth': [1, 1], 'width': 4}


def _setup(backbone, seed=0):
  model = model_lib.build({'backbone': backbone, 'head': {'name': 'linear', 'num_outputs': 5}})
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 12, 12, 1)))
  rng = np.random.default_rng(seed)
  batch = {'image': jnp.asarray(rng.random((8, 12, 12, 1)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 5, 8), jnp.int32)}
  return model, variables['params'], variables.get('batch_stats', {}), batch


def _optim(**kw):
  c = config_lib.base().optim
  c.schedule = 'constant'
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _run(model, params, stats, batch, cfg, trainable='all', steps=1, total=100, frozen=None):
  """Apply `steps` real train steps; returns the list of param trees (before, after step 1, …) and stats."""
  labels = rules.freeze_labels(trainable, params)
  tx = optim.make(cfg, labels, total)
  starts = optim.start_steps(cfg, labels)
  opt_state = tx.init(params)
  out, all_stats, compiled = [params], [stats], {}
  for s in range(steps):
    fz = optim.frozen_blocks_at(labels, starts, s) if frozen is None else frozen
    step = compiled.setdefault(fz, jax.jit(step_lib.make_train_step(model, tx, fz)))
    params, stats, opt_state, _ = step(params, stats, opt_state, batch, jax.random.key(s))
    out.append(params)
    all_stats.append(stats)
  return out, all_stats


def _grads(model, params, stats, batch):
  def loss(p):
    variables = {'params': p, 'batch_stats': stats} if stats else {'params': p}
    logits, _ = model.apply(variables, batch['image'], train=True, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
  return jax.grad(loss)(params)


@pytest.mark.parametrize('backbone', [CNN, RESNET], ids=['cnn', 'resnet'])
def test_llrd_effective_update_ratio_between_blocks_equals_the_decay(backbone):
  model, params, stats, batch = _setup(backbone)
  decay, lr = 0.5, 1e-2
  # SGD: the update of every parameter is exactly −lr·scale·g.
  # (lr 1: the updates are large next to the weights, so float32 cancellation does not blur the ratio.)
  (p0, p1), _ = _run(model, params, stats, batch, _optim(name='sgd', momentum=0.0, lr=1.0, llrd=decay))
  g = rules.flatten(_grads(model, params, stats, batch))
  before, after = rules.flatten(p0), rules.flatten(p1)
  n = len(rules.block_names(params))
  block_scale = {}
  for path, grad in g.items():
    grad = np.asarray(grad, np.float64)
    big = np.abs(grad) > 1e-3 * np.abs(grad).max()
    if not big.any():
      continue
    scale = (np.asarray(before[path], np.float64) - np.asarray(after[path], np.float64))[big] / grad[big]
    np.testing.assert_allclose(scale, np.median(scale), rtol=1e-2)   # one scale per parameter
    part = path.split('/')[1] if path.startswith('backbone/') else 'head'
    block_scale.setdefault(part, []).append(float(np.median(scale)))
  assert np.allclose(block_scale['head'], 1.0, rtol=1e-3)
  for i in range(n):
    assert np.allclose(block_scale[f'block_{i}'], decay ** (n - i), rtol=2e-3), (i, block_scale[f'block_{i}'])
  # Adam: the first step moves each weight by ≈ lr·scale; the ratio of consecutive blocks is the decay.
  (p0, p1), _ = _run(model, params, stats, batch, _optim(lr=lr, llrd=decay))
  moved = {}
  for path, d in rules.flatten(jax.tree_util.tree_map(lambda a, b: jnp.abs(a - b), p0, p1)).items():
    d = np.asarray(d)
    if path.endswith('kernel') and (d > 0).any():
      part = path.split('/')[1] if path.startswith('backbone/') else 'head'
      moved.setdefault(part, []).append(np.median(d[d > 0]))
  order = [f'block_{i}' for i in range(n)] + ['head']
  for lower, upper in zip(order, order[1:]):
    ratio = np.median(moved[lower]) / np.median(moved[upper])
    assert ratio == pytest.approx(decay, rel=0.05), (lower, upper, ratio)


def test_lr_multiplier_and_weight_decay_mask_act_on_the_update():
  model, params, stats, batch = _setup(CNN)
  zero = {**batch, 'image': batch['image']}
  cfg = _optim(name='sgd', momentum=0.0, lr=0.1, lr_mult=(('head/.*', 10.0), ('backbone/block_0/.*', 0.0)))
  (p0, p1), _ = _run(model, params, stats, zero, cfg)
  g = rules.flatten(_grads(model, params, stats, batch))
  b, a = rules.flatten(p0), rules.flatten(p1)
  np.testing.assert_allclose(b['head/out/kernel'] - a['head/out/kernel'], 1.0 * g['head/out/kernel'], rtol=1e-4, atol=1e-7)
  assert np.array_equal(b['backbone/block_0/conv_0/kernel'], a['backbone/block_0/conv_0/kernel'])
  np.testing.assert_allclose(b['backbone/block_1/conv_0/kernel'] - a['backbone/block_1/conv_0/kernel'],
                             0.1 * g['backbone/block_1/conv_0/kernel'], rtol=1e-4, atol=1e-7)
  # Decoupled weight decay with a mask: with zero gradients (lr_mult 0 on the data term is not it — use
  # the optimizer directly), decayed kernels shrink by lr·wd·w, masked biases do not move.
  cfg = _optim(lr=0.1, weight_decay=0.5, decay_rules=(('.*/bias', False),))
  labels = rules.freeze_labels('all', params)
  tx = optim.make(cfg, labels, 10)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  upd, _ = tx.update(zeros, tx.init(params), params)
  for path, u in rules.flatten(upd).items():
    w = rules.flatten(params)[path]
    if path.endswith('bias'):
      assert not np.any(np.asarray(u)), path
    else:
      np.testing.assert_allclose(u, -0.1 * 0.5 * w, rtol=1e-5, atol=1e-8)
  with pytest.raises(rules.RuleError, match='matches no parameter'):
    optim.make(_optim(lr_mult=(('head/typo/.*', 2.0),)), labels, 10)


def test_l2sp_gradient_pulls_toward_the_starting_weights_not_zero():
  _, params, _, _ = _setup(CNN)
  alpha, lr = 0.3, 0.1
  tx = optim.make(_optim(name='sgd', momentum=0.0, lr=lr, l2sp=alpha), rules.freeze_labels('all', params), 10)
  state = tx.init(params)                       # anchor = the starting (pretrained) weights
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  upd, _ = tx.update(zeros, state, params)      # at the anchor: no pull (L2 toward 0 would shrink them)
  assert all(not np.any(np.asarray(u)) for u in jax.tree_util.tree_leaves(upd))
  moved = jax.tree_util.tree_map(lambda w: w + 0.5 * jnp.sign(w) + 0.1, params)
  upd, _ = tx.update(zeros, state, moved)
  for path, u in rules.flatten(upd['backbone']).items():
    w, w0 = rules.flatten(moved['backbone'])[path], rules.flatten(params['backbone'])[path]
    np.testing.assert_allclose(u, -lr * alpha * (w - w0), rtol=1e-5, atol=1e-7)
    after = w + u
    assert np.all(np.abs(after - w0) < np.abs(w - w0))      # closer to the pretrained weights
  assert all(not np.any(np.asarray(u)) for u in jax.tree_util.tree_leaves(upd['head']))  # β = 0: head free


@pytest.mark.parametrize('backbone', [CNN, RESNET], ids=['cnn', 'resnet'])
def test_gradual_unfreezing_changes_the_trainable_set_at_the_right_step(backbone):
  model, params, stats, batch = _setup(backbone)
  every = 2
  cfg = _optim(lr=1e-2, unfreeze_every=every)
  n = len(rules.block_names(params))
  steps = every * n + 1
  trees, all_stats = _run(model, params, stats, batch, cfg, steps=steps)
  for i in range(n):
    first = every * (n - i)           # optimizer step at which block_i (top = n−1) starts
    for s in range(steps):
      moved = any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(trees[s]['backbone'][f'block_{i}']),
                                                           jax.tree_util.tree_leaves(trees[s + 1]['backbone'][f'block_{i}'])))
      assert moved == (s >= first), (f'block_{i}', s, first)
      if stats and f'block_{i}' in stats.get('backbone', {}):
        stats_moved = not all(np.array_equal(a, b) for a, b in zip(
            jax.tree_util.tree_leaves(all_stats[s]['backbone'][f'block_{i}']),
            jax.tree_util.tree_leaves(all_stats[s + 1]['backbone'][f'block_{i}'])))
        assert stats_moved == (s >= first), ('batch_stats', f'block_{i}', s)
  head_moved = [not np.array_equal(trees[s]['head']['out']['kernel'], trees[s + 1]['head']['out']['kernel'])
                for s in range(steps)]
  assert all(head_moved)
  labels = rules.freeze_labels('all', params)
  starts = optim.start_steps(cfg, labels)
  assert optim.schedule_changes(labels, starts) == [every * k for k in range(1, n + 1)]
  # A newly unfrozen block starts with fresh Adam state: its first step is ≈ lr per weight, not 3× lr.
  top = f'block_{n - 1}'
  d = np.abs(np.asarray(trees[every + 1]['backbone'][top][next(iter(trees[0]['backbone'][top]))]['kernel'])
             - np.asarray(trees[every]['backbone'][top][next(iter(trees[0]['backbone'][top]))]['kernel']))
  assert np.median(d[d > 0]) == pytest.approx(1e-2, rel=0.1)


def test_lp_ft_second_phase_uses_its_own_lr_and_starts_from_the_probed_head():
  model, params, stats, batch = _setup(CNN)
  lp, lp_lr, ft_lr, total = 3, 1e-2, 1e-4, 8
  cfg = _optim(lr=ft_lr, lp_steps=lp, lp_lr=lp_lr)
  trees, _ = _run(model, params, stats, batch, cfg, steps=lp + 2, total=total)
  # Phase 1: only the head moves, by ≈ lp_lr per weight on its first step.
  for s in range(lp):
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(trees[s]['backbone']),
                                                    jax.tree_util.tree_leaves(trees[s + 1]['backbone'])))
  d0 = np.abs(np.asarray(trees[1]['head']['out']['kernel'] - trees[0]['head']['out']['kernel']))
  assert np.median(d0[d0 > 0]) == pytest.approx(lp_lr, rel=0.1)
  # The probed head is what a separate head-only run (same lr, schedule over lp steps) reaches.
  probe_cfg = _optim(lr=lp_lr)
  probe, _ = _run(model, params, stats, batch, probe_cfg, trainable='head', steps=lp, total=lp)
  np.testing.assert_allclose(trees[lp]['head']['out']['kernel'], probe[lp]['head']['out']['kernel'], rtol=1e-6)
  # Phase 2 starts from it, with its own (fresh) optimizer at ft_lr: head and backbone move ≈ ft_lr.
  for part in (('head', 'out'), ('backbone', 'block_1', 'conv_0')):
    a, b = trees[lp], trees[lp + 1]
    for k in part:
      a, b = a[k], b[k]
    d = np.abs(np.asarray(b['kernel']) - np.asarray(a['kernel']))
    assert np.median(d[d > 0]) == pytest.approx(ft_lr, rel=0.1), part


def test_bitfit_trains_biases_and_head_only():
  _, params, _, _ = _setup(CNN)
  labels = rules.flatten(rules.freeze_labels('bitfit', params))
  for path, label in labels.items():
    want = rules.TRAIN if path.startswith('head/') or path.endswith('/bias') else rules.FREEZE
    assert label == want, path
  _, params, _, _ = _setup(RESNET)      # no conv biases; BatchNorm's bias (shift) trains
  labels = rules.flatten(rules.freeze_labels('bitfit', params))
  assert labels['backbone/block_0/norm/bias'] == rules.TRAIN and labels['backbone/block_0/norm/scale'] == rules.FREEZE


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory, data_dir):
  c = config_lib.pretrain()
  c.data, c.input.data_dir = 'glyphs/small', data_dir
  c.model.backbone = CNN
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 2, 16, 2, 2
  c.input.eval_split = 'test[:16]'
  workdir = str(tmp_path_factory.mktemp('tiny_pretrain'))
  out = train.train(c, workdir)
  return workdir, out


def test_surgery_drop_one_block_and_attach_a_two_layer_head(tiny_checkpoint):
  path, pre = tiny_checkpoint
  spec, params = finetune.surgery(path, drop_last=1, head_hidden=(12, 7), num_outputs=10)
  summary = finetune.validate_surgery(params, CNN, drop_last=1, head_hidden=(12, 7), num_outputs=10,
                                      source_params=pre.params)
  assert summary['blocks'] == ['block_0', 'block_1'] and summary['head'] == ['layer_0', 'layer_1', 'out']
  assert summary['feature_dim'] == 7 * 7 * 8        # block_1's flattened map (28 → 14 → 7)
  assert spec['backbone']['drop_last'] == 1
  with pytest.raises(finetune.SurgeryError, match='head layers'):
    finetune.validate_surgery(params, CNN, drop_last=1, head_hidden=(12,), num_outputs=10)
  with pytest.raises(finetune.SurgeryError, match='backbone blocks'):
    finetune.validate_surgery(params, CNN, drop_last=0, head_hidden=(12, 7), num_outputs=10)


def test_train_loop_keeps_the_pretrained_anchor_and_recompiles_at_unfreezing(tiny_checkpoint, data_dir, tmp_path):
  path, pre = tiny_checkpoint
  c = config_lib.finetune(init_from=path, per_class=2)
  c.input.data_dir, c.input.eval_split = data_dir, 'test[:16]'
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 4, 8, 4, 4
  finetune.apply_strategy(c, 'l2sp')
  out = train.train(c, str(tmp_path / 'l2sp'))
  anchor = out.opt_state[0].anchor
  for a, b in zip(jax.tree_util.tree_leaves(anchor), jax.tree_util.tree_leaves(pre.params['backbone'])):
    np.testing.assert_array_equal(a, b)                # the anchor is the pretrained backbone, not the init
  # ResNet + BatchNorm from scratch, unfreeze every 3 steps, 4 steps: only the top block (and head) trains.
  c = config_lib.base()
  c.data, c.input.data_dir, c.input.eval_split, c.input.per_class = 'glyphs/small', data_dir, 'test[:16]', 1
  c.model.backbone = RESNET
  c.optim.unfreeze_every = 3
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 4, 8, 4, 4
  c.seed = 1
  out = train.train(c, str(tmp_path / 'gradual'))
  model = model_lib.build(step_lib.model_spec(c, 62))
  init = jax.jit(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1))))(jax.random.split(jax.random.key(1))[0])
  for block in ('block_0', 'block_1'):
    for part in ('params', 'batch_stats'):
      now = out.params if part == 'params' else out.batch_stats
      for a, b in zip(jax.tree_util.tree_leaves(now['backbone'][block]),
                      jax.tree_util.tree_leaves(init[part]['backbone'][block])):
        np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(out.params['backbone']['block_2']),
                                                      jax.tree_util.tree_leaves(init['params']['backbone']['block_2'])))


def _dotted(d, prefix=''):
  """{'a.b': value} for a nested config dict (dict-valued leaves such as model.backbone kept whole)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and k != 'backbone':
      out.update(_dotted(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def test_strategy_table_is_applied_as_dotted_overrides_with_fractions_of_the_budget():
  for steps, lp, every in ((10, 3, 2), (300, 100, 75), (2, 1, 1)):
    c = config_lib.finetune(init_from='/ckpt')
    c.train.steps = steps
    finetune.apply_strategy(c, 'lp-ft')
    assert (c.optim.lp_steps, c.optim.lp_lr, c.optim.lr, c.trainable) == (lp, 1e-2, 3e-4, 'all')
    c = config_lib.finetune(init_from='/ckpt')
    c.train.steps = steps
    assert finetune.apply_strategy(c, 'gradual').optim.unfreeze_every == every
  for name, changes in finetune.STRATEGIES.items():   # every entry lands on the keys it names, nothing else
    c = config_lib.finetune(init_from='/ckpt')
    before = _dotted(c.to_dict())
    finetune.apply_strategy(c, name, backbone=CNN)
    after = _dotted(c.to_dict())
    for key, value in changes.items():
      assert after[key] == (value(c) if callable(value) else value), (name, key)
    changed = {k for k in after if after[k] != before[k]}
    assert changed <= set(changes) | {'model.backbone'}, (name, changed)
  c = finetune.apply_strategy(config_lib.finetune(init_from='/ckpt'), 'drop1+mlp2', lr=0.5)
  assert (c.transfer.drop_last_blocks, c.model.head, tuple(c.model.head_hidden), c.optim.lr) == (1, 'mlp', (128, 128), 0.5)
  c = finetune.apply_strategy(config_lib.finetune(init_from='/ckpt'), 'scratch', backbone=CNN)
  assert c.transfer.init_from == '' and c.model.backbone == CNN
  c = finetune.apply_strategy(config_lib.finetune(init_from='/ckpt'), 'head+A-digits')
  assert c.transfer.head_init == 'class_names' and c.trainable == 'head' and c.transfer.init_from == '/ckpt'


def test_strategy_errors_are_typed():
  with pytest.raises(errors.ConfigError, match="unknown strategy 'nope'"):
    finetune.apply_strategy(config_lib.finetune(init_from='/ckpt'), 'nope')
  with pytest.raises(errors.ConfigError, match="'head' needs config.transfer.init_from"):
    finetune.apply_strategy(config_lib.finetune(), 'head')
  with pytest.raises(errors.ConfigError, match='needs the backbone spec'):
    finetune.apply_strategy(config_lib.finetune(init_from='/ckpt'), 'scratch')   # finetune() leaves it None
  with pytest.raises(errors.ConfigError, match="has no 'nope'"):
    finetune.set_dotted(config_lib.base(), 'optim.nope', 1)
  with pytest.raises(errors.ConfigError, match="no tuned learning rate for strategy 'llrd'"):
    finetune.tuned_lr('llrd', 10)
