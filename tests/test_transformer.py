"""Transformer encoder backbone: both stems, padding, pooling, block layout, freezing rules, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtransfer import errors, rules
from jaxtransfer.models import transformer

SMALL = {'num_layers': 2, 'width': 16, 'num_heads': 2, 'mlp_dim': 32, 'vocab_size': 50, 'max_len': 12}
PAD = 0


def tokens(seed: int = 0) -> jax.Array:
  """(3, 10) token ids in 1..48 (49 stays free as a second padding id); padding: 4 in row 1, 1 in row 2."""
  t = np.random.RandomState(seed).randint(1, 49, (3, 10)).astype(np.int32)
  t[1, 6:] = PAD
  t[2, 9:] = PAD
  return jnp.asarray(t)


def encoder(**kw) -> transformer.TransformerEncoder:
  return transformer.TransformerEncoder(**{**SMALL, **kw})


def init(module, x, seed=0):
  return module.init(jax.random.key(seed), x)


@pytest.mark.parametrize('layout', transformer.LAYOUTS)
def test_token_stem_shapes(layout):
  m = encoder(layout=layout)
  v = init(m, tokens())
  assert m.apply(v, tokens()).shape == (3, 16)
  seq, mask = m.apply(v, tokens(), method=m.encode)
  assert seq.shape == (3, 10, 16)
  np.testing.assert_array_equal(mask, np.asarray(tokens()) != PAD)


@pytest.mark.parametrize('pool, n_tokens', [('cls', 17), ('mean', 16)])
def test_patch_stem_shapes(pool, n_tokens):
  images = jnp.asarray(np.random.RandomState(0).rand(2, 28, 28, 1), jnp.float32)
  m = encoder(stem='patches', patch_size=7, pool=pool)
  v = init(m, images)
  assert m.apply(v, images).shape == (2, 16)
  seq, mask = m.apply(v, images, method=m.encode)
  assert seq.shape == (2, n_tokens, 16) and bool(mask.all())
  stem = v['params']['block_0']
  assert stem['patch_embed']['kernel'].shape == (7, 7, 1, 16)
  assert stem['position_embed'].shape == (n_tokens, 16)
  assert ('cls' in stem) == (pool == 'cls')


@pytest.mark.parametrize('layout', transformer.LAYOUTS)
def test_padding_content_does_not_change_real_token_outputs(layout):
  # The padding slots hold pad_id 0 in `a`; in `b` they hold 49, a model with pad_id=49 reads them as
  # padding too: same weights, same mask, different embeddings entering attention at the padding.
  m, m49 = encoder(layout=layout), encoder(layout=layout, pad_id=49)
  a = tokens()
  real = np.asarray(a) != PAD
  v = init(m, a)
  seq_a, _ = m.apply(v, a, method=m.encode)
  b = jnp.where(jnp.asarray(real), a, 49)
  seq_b, mask_b = m49.apply(v, b, method=m49.encode)
  np.testing.assert_array_equal(mask_b, real)
  np.testing.assert_allclose(np.asarray(seq_a)[real], np.asarray(seq_b)[real], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m.apply(v, a), m49.apply(v, b), rtol=1e-5, atol=1e-5)
  # Control: with padding treated as real tokens, the same change moves the real tokens' outputs.
  seq_c, _ = encoder(layout=layout, pad_id=-1).apply(v, b, method='encode')
  assert np.abs(np.asarray(seq_c)[real] - np.asarray(seq_a)[real]).max() > 1e-3


def test_padding_position_embeddings_do_not_leak():
  """Extra padding at the end (a longer batch) leaves the real tokens' outputs unchanged."""
  m = encoder()
  a = tokens()
  v = init(m, a)
  longer = jnp.concatenate([a, jnp.zeros((3, 2), jnp.int32)], axis=1)
  np.testing.assert_allclose(m.apply(v, a), m.apply(v, longer), rtol=1e-5, atol=1e-6)


def test_cls_and_mean_pooling():
  a = tokens()
  mean_model, cls_model = encoder(pool='mean'), encoder(pool='cls')
  v = init(mean_model, a)
  seq, mask = mean_model.apply(v, a, method=mean_model.encode)
  seq, mask = np.asarray(seq), np.asarray(mask)
  want_mean = np.stack([seq[i][mask[i]].mean(axis=0) for i in range(3)])
  np.testing.assert_allclose(mean_model.apply(v, a), want_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cls_model.apply(v, a), seq[:, 0], rtol=1e-6)
  assert np.abs(want_mean - seq[:, 0]).max() > 1e-3
  all_pad = transformer.pool_sequence(jnp.ones((1, 3, 2)), jnp.zeros((1, 3), bool), 'mean')
  np.testing.assert_array_equal(all_pad, 0.0)


def test_attention_implementations_agree_on_one_parameter_tree():
  a = tokens()
  base = encoder(attention='einsum')
  v = init(base, a)
  want = base.apply(v, a)
  for impl in ('xla', 'flax'):
    m = encoder(attention=impl)
    assert jax.tree_util.tree_structure(init(m, a)) == jax.tree_util.tree_structure(v)
    np.testing.assert_allclose(m.apply(v, a), want, rtol=1e-5, atol=1e-6)


def test_block_names_and_layouts():
  pre = init(encoder(), tokens())['params']
  assert list(pre) == ['block_0', 'block_1', 'block_2']          # stem + 2 layers: every param in a block
  assert set(pre['block_0']) == {'token_embed', 'position_embed'}
  assert set(pre['block_1']) == {'attention', 'norm_attention', 'mlp_in', 'mlp_out', 'norm_mlp'}
  assert pre['block_1']['attention']['query']['kernel'].shape == (16, 2, 8)
  assert pre['block_1']['attention']['out']['kernel'].shape == (2, 8, 16)
  bert = init(encoder(layout='bert', type_vocab_size=2), tokens())['params']
  assert set(bert['block_0']) == {'token_embed', 'position_embed', 'type_embed', 'norm'}
  assert bert['block_0']['type_embed']['embedding'].shape == (2, 16)
  assert list(bert) == list(pre)


def test_drop_last_and_block_modules():
  full = encoder()
  assert len(full.block_modules()) == 3
  cut = encoder(drop_last=1)
  v_full, v_cut = init(full, tokens()), init(cut, tokens())
  assert list(v_cut['params']) == ['block_0', 'block_1']
  shapes = lambda t: jax.tree_util.tree_map(jnp.shape, t)
  assert shapes(v_cut['params']['block_1']) == shapes(v_full['params']['block_1'])
  # Dropping the last block = an encoder one layer shorter, on the same weights.
  kept = {'params': {k: v_full['params'][k] for k in ('block_0', 'block_1')}}
  np.testing.assert_allclose(cut.apply(kept, tokens()), encoder(num_layers=1).apply(kept, tokens()), rtol=1e-6)
  assert np.abs(cut.apply(kept, tokens()) - full.apply(v_full, tokens())).max() > 1e-3


def test_last_k_freezes_the_right_leaves():
  m = encoder()
  params = {'backbone': init(m, tokens())['params'], 'head': {'out': {'kernel': jnp.zeros((16, 2)),
                                                                      'bias': jnp.zeros(2)}}}
  flat = rules.flatten(rules.freeze_labels('last:1', params))
  for path, label in flat.items():
    want = rules.TRAIN if path.startswith(('head/', 'backbone/block_2/')) else rules.FREEZE
    assert label == want, path
  assert rules.frozen_blocks(rules.freeze_labels('last:1', params)) == ('block_0', 'block_1')
  everything = rules.flatten(rules.freeze_labels('last:3', params))
  assert set(everything.values()) == {rules.TRAIN}                # last:<all blocks> = full fine-tuning


def test_init_is_deterministic():
  m = encoder()
  a, b, c = init(m, tokens(), 0), init(m, tokens(), 0), init(m, tokens(), 1)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(c)))


def test_dropout_only_in_training_and_not_in_frozen_blocks():
  m = encoder(dropout=0.3, attention_dropout=0.3)
  a = tokens()
  v = init(m, a)
  rng = {'dropout': jax.random.key(1)}
  clean = m.apply(v, a)
  assert np.abs(m.apply(v, a, train=True, rngs=rng) - clean).max() > 1e-3
  frozen = ('block_0', 'block_1', 'block_2')
  np.testing.assert_allclose(m.apply(v, a, train=True, frozen=frozen, rngs=rng), clean, rtol=1e-6)


@pytest.mark.parametrize('kw, error', [({'stem': 'words'}, errors.ConfigError),
                                       ({'pool': 'max'}, errors.ConfigError),
                                       ({'width': 15}, errors.ConfigError),
                                       ({'max_len': 8}, errors.ConfigError),
                                       ({'drop_last': 3}, errors.ConfigError)])
def test_bad_config_is_a_typed_error(kw, error):
  with pytest.raises(error):
    init(encoder(**kw), tokens())


def test_token_stem_rejects_images():
  with pytest.raises(errors.DataError):
    init(encoder(), jnp.zeros((2, 8, 8, 1)))


def test_llrd_and_gradual_unfreezing_see_the_stem_as_the_lowest_block():
  from jaxtransfer import config as config_lib
  from jaxtransfer import optim

  params = {'backbone': init(encoder(), tokens())['params'], 'head': {'out': {'kernel': jnp.zeros((16, 2))}}}
  labels = rules.freeze_labels('all', params)
  cfg = config_lib.base().optim
  cfg.llrd, cfg.unfreeze_every = 0.5, 10
  scales = optim.lr_scales(cfg, labels)
  assert scales['head/out/kernel'] == 1.0
  assert scales['backbone/block_2/mlp_in/kernel'] == 0.5                 # top layer: llrd
  assert scales['backbone/block_0/token_embed/embedding'] == 0.5 ** 3    # embeddings: llrd**(L+1)
  starts = optim.start_steps(cfg, labels)
  assert (starts['head/out/kernel'], starts['backbone/block_2/attention/query/kernel'],
          starts['backbone/block_0/position_embed/embedding']) == (0, 10, 30)


def test_registry_num_blocks_drop_last_and_model_init():
  from jaxtransfer.models import model as model_lib

  spec = {'name': 'transformer', **SMALL}
  assert model_lib.num_blocks(spec) == 3
  cut = model_lib.drop_last_blocks(spec, 2)
  assert cut['drop_last'] == 2 and model_lib.num_blocks(cut) == 1
  with pytest.raises(errors.Error):
    model_lib.drop_last_blocks(spec, 3)                 # the stem always stays
  model = model_lib.build({'backbone': spec, 'head': {'name': 'linear', 'num_outputs': 2}})
  v = model_lib.init(model, jax.random.key(0), (10,))   # the loop's float dummy input works for token ids
  assert list(v['params']) == ['backbone', 'head'] and 'batch_stats' not in v
  assert model.apply(v, tokens()).shape == (3, 2)
  np.testing.assert_allclose(model.apply(v, tokens(), method=model.features),
                             encoder().apply({'params': v['params']['backbone']}, tokens()), rtol=1e-6)


def test_last_1_train_steps_move_only_the_top_layer_and_the_head():
  """The real train step (steps.make_train_step + optim.make) on the encoder with trainable='last:1'."""
  from jaxtransfer import config as config_lib
  from jaxtransfer import optim, steps
  from jaxtransfer.models import model as model_lib

  model = model_lib.build({'backbone': {'name': 'transformer', **SMALL, 'dropout': 0.1},
                           'head': {'name': 'linear', 'num_outputs': 2}})
  params = model_lib.init(model, jax.random.key(0), (10,))['params']
  labels = rules.freeze_labels('last:1', params)
  cfg = config_lib.base().optim
  cfg.lr, cfg.warmup_steps = 1e-2, 0
  tx = optim.make(cfg, labels, 3)
  step = jax.jit(steps.make_train_step(model, tx, rules.frozen_blocks(labels)))
  batch = {'image': tokens(), 'label': jnp.asarray([0, 1, 1])}
  p, opt_state = params, tx.init(params)
  for i in range(3):
    p, _, opt_state, metrics = step(p, {}, opt_state, batch, jax.random.key(i))
  assert np.isfinite(float(metrics['loss']))
  moved = {path: not np.array_equal(a, b) for (path, a), b in zip(rules.flatten(params).items(),
                                                                   rules.flatten(p).values())}
  for path, changed in moved.items():
    assert changed == path.startswith(('head/', 'backbone/block_2/')), path


def test_patch_embed_is_the_strided_convolution():
  import flax.linen as nn

  images = jnp.asarray(np.random.RandomState(1).rand(2, 30, 29, 3), jnp.float32)   # remainder rows/cols dropped
  embed = transformer.PatchEmbed(8, 7)
  v = embed.init(jax.random.key(0), images)
  v = jax.tree_util.tree_map(lambda x: x + 0.1, v)                                  # non-zero bias too
  want = nn.Conv(8, (7, 7), (7, 7), padding='VALID').apply(v, images)
  got = embed.apply(v, images)
  assert got.shape == (2, 4, 4, 8)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('attention', transformer.ATTENTIONS)
def test_an_all_padding_row_stays_finite(attention):
  """The eval pipeline pads its last batch with all-zero rows: no NaN may leak into outputs or gradients."""
  x = jnp.zeros((2, 6), jnp.int32).at[0, :3].set(jnp.asarray([5, 6, 7]))
  m = encoder(attention=attention)
  v = init(m, x)
  assert bool(jnp.isfinite(jax.jit(m.apply)(v, x)).all())
  grads = jax.jit(jax.grad(lambda v: jnp.sum(m.apply(v, x) ** 2)))(v)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_dropout_keeps_1_minus_rate_scales_to_an_unbiased_output_and_its_gradient_is_the_saved_mask(rate):
  """`transformer.Dropout` keeps each element with probability t / 2¹⁶ ≈ 1 − rate (16-bit random words), scales
  the kept ones by exactly 2¹⁶ / t, draws the same mask for the same rng and another for another; its gradient
  is keep · 2¹⁶ / t at every element; deterministic, or rate 0, is the identity; rate 1 gives zeros."""
  x = jax.random.normal(jax.random.key(0), (40, 64, 128))
  rngs = {'dropout': jax.random.key(3)}
  ours = lambda y, r=rngs: transformer.Dropout(rate, False).apply({}, y, rngs=r)
  out = np.asarray(ours(x))
  t = transformer.keep_threshold(rate)
  assert t == round((1 - rate) * 65536)
  keep_prob = t / 65536
  keep = out != 0
  n = keep.size
  assert abs(keep.mean() - keep_prob) < 4 * np.sqrt(keep_prob * (1 - keep_prob) / n)   # 4 σ of a binomial
  assert abs(keep.mean(axis=(0, 1)) - keep_prob).max() < 0.06    # every feature column, not a few
  np.testing.assert_allclose(out[keep], np.asarray(x)[keep] / keep_prob, rtol=1e-6)
  assert np.array_equal(np.asarray(ours(x)), out)
  other = np.asarray(ours(x, {'dropout': jax.random.key(4)})) != 0
  assert 0 < np.mean(other != keep) < 1
  grad = np.asarray(jax.grad(lambda y: jnp.sum(ours(y) * 2.0))(x))
  np.testing.assert_allclose(grad, np.where(keep, 2.0 / keep_prob, 0.0), rtol=1e-6)
  assert np.array_equal(np.asarray(transformer.Dropout(rate, True).apply({}, x)), np.asarray(x))
  assert np.array_equal(np.asarray(transformer.Dropout(0.0, False).apply({}, x)), np.asarray(x))
  assert np.array_equal(np.asarray(transformer.Dropout(1e-6, False).apply({}, x, rngs=rngs)), np.asarray(x))
  assert not np.any(np.asarray(transformer.Dropout(1.0, False).apply({}, x, rngs=rngs)))
  assert not np.any(np.asarray(transformer.Dropout(1 - 1e-6, False).apply({}, x, rngs=rngs)))
