"""LoRA on the Transformer encoder: adapters, the `lora:R` rule, real training, merge, export, strict transfer."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtransfer import checkpoint, errors, lora, rules, train, transfer
from jaxtransfer import config as config_lib
from jaxtransfer.models import model as model_lib
from jaxtransfer.models import transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = {'name': 'transformer', 'num_layers': 2, 'width': 16, 'num_heads': 2, 'mlp_dim': 32, 'vocab_size': 50,
          'max_len': 12}
# glyphs/small images are 28×28×1: 16 patches of 7×7.
PATCHES = {'name': 'transformer', 'stem': 'patches', 'patch_size': 7, 'num_layers': 2, 'width': 16, 'num_heads': 2,
           'mlp_dim': 32}
HEAD = {'name': 'linear', 'num_outputs': 3}
RANK = 4


def tokens(seed: int = 0) -> jax.Array:
  t = np.random.RandomState(seed).randint(1, 50, (3, 10)).astype(np.int32)
  t[1, 6:] = 0   # padding
  return jnp.asarray(t)


def images(n: int = 4, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.RandomState(seed).rand(n, 28, 28, 1), jnp.float32)


def build(backbone: dict, **kw) -> model_lib.Model:
  return model_lib.build({'backbone': {**backbone, **kw}, 'head': HEAD})


def init_params(model: model_lib.Model, x: jax.Array, seed: int = 0) -> dict:
  return model.init(jax.random.key(seed), x)['params']


def with_base(lora_params: dict, base: dict) -> dict:
  """`lora_params` with every non-adapter leaf taken from `base` (same paths)."""
  flat_base = rules.flatten(base)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x if rules.is_adapter(rules.path_str(p)) else flat_base[rules.path_str(p)], lora_params)


def randomize_b(params: dict, seed: int = 1) -> dict:
  """Every lora_b drawn at random (a trained adapter): the adapters then change the outputs."""
  key = jax.random.key(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (0.1 * jax.random.normal(jax.random.fold_in(key, hash(rules.path_str(p)) % 2**31), x.shape)
                    if rules.path_str(p).endswith('lora_b') else x), params)


# ------------------------------------------------------------------------------------------- the modules


@pytest.mark.parametrize('features, n_in, reference', [
    ((8,), 1, lambda: nn.Dense(8, kernel_init=nn.initializers.xavier_uniform())),
    ((2, 3), 1, lambda: nn.DenseGeneral((2, 3), kernel_init=nn.initializers.xavier_uniform())),
    ((5,), 2, lambda: nn.DenseGeneral(5, axis=(-2, -1), kernel_init=nn.initializers.xavier_uniform())),
])
def test_rank_0_is_flax_dense_bit_for_bit(features, n_in, reference):
  x = jnp.asarray(np.random.RandomState(0).rand(2, 7, 2, 3), jnp.float32)
  x = x.reshape(2, 7, 6) if n_in == 1 else x
  ours, ref = transformer.LoRADense(features, n_in), reference()
  v_ours, v_ref = ours.init(jax.random.key(3), x), ref.init(jax.random.key(3), x)
  assert jax.tree_util.tree_structure(v_ours) == jax.tree_util.tree_structure(v_ref)
  jax.tree_util.tree_map(np.testing.assert_array_equal, v_ours, v_ref)          # same initial values
  v = jax.tree_util.tree_map(lambda a: a + 0.5, v_ref)                          # a non-zero bias too
  np.testing.assert_array_equal(ours.apply(v, x), ref.apply(v, x))


def test_adapters_sit_next_to_the_targeted_kernels():
  plain = rules.flatten(init_params(build(TOKENS), tokens()))
  adapted = rules.flatten(init_params(build(TOKENS, lora_rank=RANK), tokens()))
  adapters = {p: tuple(x.shape) for p, x in adapted.items() if rules.is_adapter(p)}
  assert {p: tuple(x.shape) for p, x in adapted.items() if p not in adapters} == {
      p: tuple(x.shape) for p, x in plain.items()}                               # everything else as before
  want = {}
  for block in ('block_1', 'block_2'):   # width 16, 2 heads of 8, MLP 32; the stem block_0 has none
    for module, (n_in, n_out) in {'attention/query': (16, 16), 'attention/key': (16, 16),
                                  'attention/value': (16, 16), 'attention/out': (16, 16),
                                  'mlp_in': (16, 32), 'mlp_out': (32, 16)}.items():
      want[f'backbone/{block}/{module}/lora_a'] = (n_in, RANK)
      want[f'backbone/{block}/{module}/lora_b'] = (RANK, n_out)
  assert adapters == want
  assert all(not np.any(adapted[p]) for p in want if p.endswith('lora_b'))       # B = 0
  assert all(np.std(adapted[p]) > 0 for p in want if p.endswith('lora_a'))       # A random
  some = rules.flatten(init_params(build(TOKENS, lora_rank=2, lora_targets='attention/(query|value)'), tokens()))
  assert sorted(p for p in some if p.endswith('lora_a')) == [
      f'backbone/block_{i}/attention/{m}/lora_a' for i in (1, 2) for m in ('query', 'value')]


@pytest.mark.parametrize('attention', ['einsum', 'xla'])
@pytest.mark.parametrize('layout', transformer.LAYOUTS)
def test_lora_at_init_gives_the_base_models_outputs(attention, layout):
  base_model = build(TOKENS, layout=layout, attention=attention)
  lora_model = build(TOKENS, layout=layout, attention=attention, lora_rank=8)
  base = init_params(base_model, tokens(), seed=0)
  params = with_base(init_params(lora_model, tokens(), seed=1), base)            # same backbone and head
  want = base_model.apply({'params': base}, tokens())
  np.testing.assert_array_equal(lora_model.apply({'params': params}, tokens()), want)
  # The adapters are in the computation: once B ≠ 0 the outputs move.
  assert np.abs(lora_model.apply({'params': randomize_b(params)}, tokens()) - want).max() > 1e-3


@pytest.mark.parametrize('attention', ['einsum', 'xla'])
def test_merged_and_unmerged_models_give_the_same_outputs(attention):
  spec = {'backbone': {**TOKENS, 'attention': attention, 'lora_rank': RANK, 'lora_alpha': 16.0}, 'head': HEAD}
  model = model_lib.build(spec)
  params = randomize_b(init_params(model, tokens()))
  merged, merged_spec = lora.merge(params, spec)
  assert merged_spec['backbone']['lora_rank'] == 0 and 'lora_alpha' not in merged_spec['backbone']
  assert spec['backbone']['lora_rank'] == RANK                                  # pure: the input is unchanged
  plain = build(TOKENS, attention=attention)
  shapes = lambda t: {p: tuple(x.shape) for p, x in rules.flatten(t).items()}
  assert shapes(merged) == shapes(init_params(plain, tokens()))                 # a plain encoder's tree
  got = model_lib.build(merged_spec).apply({'params': merged}, tokens())
  want = model.apply({'params': params}, tokens())
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.abs(got - plain.apply({'params': with_base(merged, params)}, tokens())).max() > 1e-3  # folded in
  again, same_spec = lora.merge(merged, merged_spec)                            # nothing left to merge
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, merged)
  with pytest.raises(lora.LoRAError, match='rank 2'):
    lora.merge(params, {**spec, 'backbone': {**spec['backbone'], 'lora_rank': 2}})


@pytest.mark.parametrize('kw, message', [
    ({'lora_rank': 4, 'attention': 'flax'}, "needs attention='einsum' or 'xla'"),
    ({'lora_rank': 4, 'lora_targets': 'attn/q'}, 'matches none of'),
    ({'lora_rank': -1}, 'expected an integer'),
    ({'lora_rank': 4, 'lora_alpha': 0}, 'lora_alpha=0'),
])
def test_bad_lora_spec_is_a_one_line_config_error(kw, message):
  with pytest.raises(errors.ConfigError, match=message) as e:
    init_params(build(TOKENS, **kw), tokens())
  assert '\n' not in str(e.value)


# ------------------------------------------------------------------------------------------- the rule


def test_lora_rule_trains_exactly_the_adapters_and_the_head():
  params = init_params(build(TOKENS, lora_rank=RANK), tokens())
  labels = rules.flatten(rules.freeze_labels(f'lora:{RANK}', params))
  for path, label in labels.items():
    assert (label == rules.TRAIN) == (path.startswith('head/') or rules.is_adapter(path)), path
  assert rules.frozen_blocks(rules.freeze_labels(f'lora:{RANK}', params)) == ('block_0',)
  with pytest.raises(rules.RuleError, match=r'have rank \[4\]'):
    rules.freeze_labels('lora:8', params)
  with pytest.raises(rules.RuleError, match='integer rank'):
    rules.freeze_labels('lora:x', params)


def test_lora_rule_on_a_cnn_is_a_one_line_error():
  cnn = model_lib.build({'backbone': {'name': 'cnn', 'stages': [4], 'dense': [8]}, 'head': HEAD})
  params = init_params(cnn, images(1))
  with pytest.raises(rules.RuleError, match='the model has no LoRA adapters') as e:
    rules.freeze_labels('lora:8', params)
  assert '\n' not in str(e.value)
  # The spec helper of a lora:R run leaves other backbones alone (so the rule above is what the user sees).
  assert lora.with_adapters({'name': 'cnn', 'stages': [4]}, 'lora:8') == {'name': 'cnn', 'stages': [4]}
  assert lora.with_adapters(TOKENS, 'lora:8', alpha=16.0) == {**TOKENS, 'lora_rank': 8, 'lora_alpha': 16.0,
                                                              'lora_targets': transformer.LORA_TARGETS}
  with pytest.raises(errors.ConfigError, match='already has lora_rank=4'):
    lora.with_adapters({**TOKENS, 'lora_rank': 4}, 'lora:8')


# ------------------------------------------------------------------------------------------- training


def glyph_config(data_dir: str, backbone: dict, trainable: str, steps: int) -> config_lib.ml_collections.ConfigDict:
  c = config_lib.base()
  c.data, c.input.data_dir, c.input.eval_split = 'glyphs/small', data_dir, 'test[:16]'
  c.model.backbone = backbone
  c.trainable = trainable
  c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 1e-2, 0, 'constant'
  c.train.steps, c.train.batch_size, c.train.log_every = steps, 16, steps
  c.train.checkpoint_every, c.train.keep_checkpoints = 1, steps
  c.train.eval_batch_size = 16                      # no memory estimate (one compile fewer)
  return c


@pytest.fixture(scope='module')
def lora_run(tmp_path_factory, data_dir):
  """3 real steps of `train.train` with trainable='lora:4' on glyphs/small (patch encoder with adapters)."""
  workdir = str(tmp_path_factory.mktemp('lora_run'))
  out = train.train(glyph_config(data_dir, {**PATCHES, 'lora_rank': RANK}, f'lora:{RANK}', 3), workdir)
  return workdir, out


@pytest.fixture(scope='module')
def plain_run(tmp_path_factory, data_dir):
  """A plain patch encoder (no adapters) after 1 step: a checkpoint to put adapters on."""
  workdir = str(tmp_path_factory.mktemp('plain_run'))
  out = train.train(glyph_config(data_dir, PATCHES, 'all', 1), workdir)
  return workdir, out


def test_training_moves_only_adapters_and_the_head(lora_run):
  workdir, out = lora_run
  mngr, _ = checkpoint.open_for_reading(workdir)
  first = rules.flatten(checkpoint.restore_subtree(mngr, 1, 'params', None))
  last = rules.flatten(out.params)
  assert sorted(first) == sorted(last) and any(rules.is_adapter(p) for p in last)
  for path in last:   # steps 2 and 3 (after step 1 B ≠ 0, so A gets gradients too)
    trains = path.startswith('head/') or rules.is_adapter(path)
    assert np.array_equal(first[path], last[path]) != trains, path
  # The optimizer holds Adam moments for the adapters and the head only: none for any frozen leaf.
  held = [rules.path_str(p) for p, x in jax.tree_util.tree_leaves_with_path(out.opt_state)
          if getattr(x, 'ndim', 0) > 0]
  backbone_held = [p for p in held if '/backbone/' in f'/{p}']
  assert backbone_held and all(rules.is_adapter(p) for p in backbone_held), backbone_held[:5]
  trainable_bytes = sum(x.nbytes for p, x in last.items() if p.startswith('head/') or rules.is_adapter(p))
  moment_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(out.opt_state) if getattr(x, 'ndim', 0) > 0)
  assert moment_bytes == 2 * trainable_bytes                                    # mu and nu


def test_lora_finetune_from_a_plain_checkpoint(plain_run, data_dir, tmp_path):
  """The recipe itself: init_from a plain encoder, trainable='lora:R' alone puts the adapters into the spec."""
  workdir, plain = plain_run
  c = glyph_config(data_dir, None, f'lora:{RANK}', 2)
  c.transfer.init_from, c.lora.alpha = workdir, 4.0
  out = train.train(c, str(tmp_path))
  meta = checkpoint.read_meta(*checkpoint.open_for_reading(str(tmp_path)))
  assert out.init == 'init_from' and meta['model_spec']['backbone'] == {
      **PATCHES, 'lora_rank': RANK, 'lora_targets': transformer.LORA_TARGETS, 'lora_alpha': 4.0}
  stored = rules.flatten(plain.params)
  for path, x in rules.flatten(out.params).items():
    if rules.is_adapter(path):   # started random (A) / zero (B) and trained
      assert np.std(x) > 0, path
    elif path.startswith('backbone/'):
      np.testing.assert_array_equal(x, stored[path], err_msg=path)


def test_export_merge_through_the_cli_then_init_from(lora_run, tmp_path, data_dir):
  workdir, out = lora_run
  env = dict(os.environ, JAXTRANSFER_DATA_DIR=data_dir)
  run = lambda *args: subprocess.run([sys.executable, '-m', 'jaxtransfer.cli', 'export', *args], cwd=ROOT, env=env,
                                     capture_output=True, text=True, timeout=300)
  proc = run(f'--workdir={workdir}', f'--out={tmp_path}/merged', '--merge')
  assert proc.returncode == 0, proc.stderr[-2000:]
  exported = str(tmp_path / 'merged')
  mngr, step = checkpoint.open_for_reading(exported)
  meta = checkpoint.read_meta(mngr, step)
  source_meta = checkpoint.read_meta(*checkpoint.open_for_reading(workdir))
  assert step == 3 and meta['items'] == ['params', 'meta']                      # no optimizer state
  assert meta['model_spec']['backbone'] == {**PATCHES, 'lora_rank': 0}
  assert meta['config'] == source_meta['config'] and meta['class_names'] == source_meta['class_names']
  assert not any(rules.is_adapter(p) for p in checkpoint.item_shapes(mngr, step, 'params'))
  # init_from takes it like any other checkpoint; the plain model's features are the LoRA run's.
  spec = {'backbone': transfer.source_backbone_spec(exported), 'head': HEAD}
  model = model_lib.build(spec)
  params, _ = transfer.init_from(exported, init_params(model, images(1), seed=5), {})
  lora_model = model_lib.build({'backbone': source_meta['model_spec']['backbone'], 'head': HEAD})
  got = model.apply({'params': params}, images(), method=model.features)
  want = lora_model.apply({'params': out.params}, images(), method=lora_model.features)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # An export without --merge: one line, exit code 2, nothing written; a second export into the same --out
  # is refused (the CLI turns that LoRAError into its one line like any errors.Error).
  proc = run(f'--workdir={workdir}', f'--out={tmp_path}/other')
  lines = [l for l in proc.stderr.splitlines() if 'error' in l.lower()]
  assert proc.returncode == 2 and len(lines) == 1 and 'supports only --merge' in lines[0], proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / 'other')
  with pytest.raises(lora.LoRAError, match='is not empty') as e:
    lora.export(workdir, exported)
  assert '\n' not in str(e.value)
  assert checkpoint.open_for_reading(exported)[1] == 3                          # the first export is intact


def test_export_of_a_run_without_adapters_is_an_error(plain_run, tmp_path):
  with pytest.raises(lora.LoRAError, match='no LoRA adapters to merge'):
    lora.export(plain_run[0], str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out')


def test_init_from_a_plain_checkpoint_into_a_lora_model(plain_run, lora_run):
  workdir, out = plain_run
  model = build(PATCHES, lora_rank=RANK)
  target = init_params(model, images(1), seed=7)
  params, _ = transfer.init_from(workdir, target, {})
  flat, stored, fresh = rules.flatten(params), rules.flatten(out.params), rules.flatten(target)
  for path, x in flat.items():
    source = fresh if rules.is_adapter(path) or path.startswith('head/') else stored
    np.testing.assert_array_equal(x, source[path], err_msg=path)
  assert list(flat) == list(fresh)                                              # the target's tree, in order
  plain = build(PATCHES)
  np.testing.assert_array_equal(model.apply({'params': params}, images(), method=model.features),
                                plain.apply({'params': out.params}, images(), method=plain.features))
  # Still strict for everything that is not a fresh adapter: a genuinely missing leaf fails ...
  deeper = build(PATCHES, lora_rank=RANK, num_layers=3)
  with pytest.raises(transfer.TransferError, match=r'missing in checkpoint: backbone/block_3/') as e:
    transfer.init_from(workdir, init_params(deeper, images(1)), {})
  assert 'lora_' not in str(e.value)
  # ... an adapter that was never initialised (A = B = 0 would never train) fails ...
  zeros = jax.tree_util.tree_map(jnp.zeros_like, target)
  with pytest.raises(transfer.TransferError, match='are all zero'):
    transfer.init_from(workdir, zeros, {})
  # ... and a LoRA run's unmerged adapters do not go silently into a plain model.
  with pytest.raises(transfer.TransferError, match='export --merge'):
    transfer.init_from(lora_run[0], init_params(plain, images(1)), {})


def test_benchmark_counts_two_moments_per_adapter_byte():
  from experiments.benchmarks import lora as bench
  res = bench.measure()                                   # MiniLM-sized, rank 8: abstract shapes only
  raw = res['raw']
  assert res['lora_opt_state_over_adapter_bytes'] == 2.0
  assert raw['trainable_params'] == raw['adapter_params'] + (384 + 1) * 2   # adapters + the 2-class head
  assert raw['adapter_params'] == 6 * (4 * (384 * 8 + 8 * 384) + 2 * (384 * 8 + 8 * 1536))
  assert res['trainable_fraction'] == raw['trainable_params'] / raw['params'] < 0.05
  assert raw['base_params'] == raw['params'] - raw['adapter_params'] == 22_565_376 + 770   # MiniLM + the head
  assert raw['opt_state_bytes']['all (no adapters)']['backbone'] == 2 * 4 * 22_565_376
