"""Transformer encoder backbone: one encoder, two stems (tokens for text, patches for images).

    spec = {'name': 'transformer', **transformer.SIZES['tiny'], 'vocab_size': 8000}
    bb = model.build_backbone(spec)        # tokens (B, T) int32 → pooled features (B, width)
    seq, mask = bb.apply(v, tokens, method=bb.encode)   # per-token outputs (B, T, width) for MLM/MAE heads

Blocks, in order of computation (so `trainable='last:K'`, LLRD, gradual unfreezing, `drop_last_blocks`,
the sharding rules, the feature cache and `advise` work as on every other backbone):
  block_0              the stem. stem='tokens': token embedding + learned positions (+ token types and
                       a LayerNorm in the BERT layout); stem='patches': a p×p stride-p convolution of the
                       NHWC image + learned positions (+ a learned [CLS] vector when pool='cls').
  block_1 … block_L    encoder layers: multi-head self-attention and a GELU MLP, each with a residual.
So an encoder of `num_layers` L has L + 1 blocks. The stem is block_0 — as ResNet's and EfficientNet's stems
are — rather than a separate non-block module, because the rules treat backbone parameters outside the
blocks as "below every block": `last:K` never trains them (so `last:<all>` would not be full fine-tuning),
`model.split_frozen` keeps them in the differentiated set (a frozen head-only step would trace the backward
pass through every frozen layer to reach the embedding) and LLRD gives them llrd**(n+1). As block_0 the
embedding gets llrd**(L+1) and the top layer llrd — the BERT/ELECTRA layer-wise decay — and it unfreezes last.
Every parameter lives in a block.

Layouts. 'pre_ln' (default, for models trained here): x + Attn(LN(x)), x + MLP(LN(x)), LayerNorm ε 1e-6,
tanh-GELU, and a final LayerNorm WITHOUT scale and bias on the encoder output. Parameterless because every
consumer of the output starts with a Dense layer (the heads, an MLM or MAE head) that absorbs any affine
map, and because a learned final norm would be the one parameter outside the blocks (see above).
'bert' (post-LN, what BERT checkpoints need): LN(x + Attn(x)), LN(x + MLP(x)), LayerNorm on the
embeddings, ε 1e-12, exact (erf) GELU; set `type_vocab_size=2` for BERT's token-type embeddings (type 0 is
added to every token, as for single-sentence inputs).

Padding. The token stem treats `pad_id` tokens as padding: attention never attends to them (a key mask),
'mean' pooling leaves them out, so the outputs at real tokens do not depend on what the padding holds.
'cls' pooling takes position 0 — the tokenizer's [CLS] for text, a learned [CLS] vector for patches.

Dropout (`dropout` after the embeddings, the attention output and the MLP; `attention_dropout` on the
attention weights) is on only with `train=True` and only in blocks not listed in `frozen` — the rule
BatchNorm follows in the other backbones, so a frozen encoder gives the same features as the feature cache.
`Dropout` is inverted dropout like `nn.Dropout`, with two differences for speed: the keep mask is drawn from
16-bit random words (half of `nn.Dropout`'s 32-bit threefry words), and the backward pass reuses the forward's
keep mask instead of redrawing it.

Attention implementation (`attention`): 'einsum' (two einsums and a softmax), 'xla'
(`jax.nn.dot_product_attention`) or 'flax' (`nn.MultiHeadDotProductAttention`); all three have the same
parameters — query/key/value kernels (width, heads, head_dim), out (heads, head_dim, width) — so this is a
speed knob, not a format. Default 'einsum': on CPU the three compile to the same matmuls, einsum with the
fewest extra transposes and copies, and it is as fast as the others within noise
(experiments/benchmarks/attention.py); 'xla' cannot drop out attention weights (it falls back to einsum).

LoRA (`lora_rank` R > 0, Hu et al. 2021): every encoder-layer module whose path inside the block fully matches
`lora_targets` (default: the attention query/key/value/out kernels and the MLP's mlp_in/mlp_out) gets a
low-rank adapter next to its kernel — `lora_a` (in, R) and `lora_b` (R, out), in and out being the kernel's
input and output axes flattened, so `backbone/block_3/attention/query/lora_a` is (width, R) and its
`lora_b` (R, heads·head_dim) — and computes x·W + b + (alpha/R)·(x·A)·B. A starts random (uniform
±1/sqrt(in): PyTorch/peft's kaiming_uniform(a=√5)), B at zero, so at init the model computes exactly the
base model's outputs. `lora_alpha` defaults to 8: the paper fixes alpha to the first rank tried and does not
retune it (the scale alpha/R keeps Adam's effective step of the product roughly independent of R); 8 gives
scale 1 at the issue's r = 8, peft's default pair. rank 0 (the default) creates exactly `nn.Dense` /
`nn.DenseGeneral`'s parameters, initial values and outputs, so every existing checkpoint and spec holds.
`trainable='lora:R'` (rules.py) trains the adapters and the head only; `jaxtransfer.lora.merge` folds them
back into plain kernels. The stem (block_0) has no adapters. attention='flax' cannot take adapters (its
projections are flax's own modules): a ConfigError.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtransfer import errors
from jaxtransfer.models import projection

# Encoder sizes: layers, width, heads, MLP width. 'minilm' is all-MiniLM-L6-v2's, 'base' BERT-base's.
SIZES = {
    'tiny': {'num_layers': 2, 'width': 128, 'num_heads': 2, 'mlp_dim': 512},
    'small': {'num_layers': 4, 'width': 256, 'num_heads': 4, 'mlp_dim': 1024},
    'minilm': {'num_layers': 6, 'width': 384, 'num_heads': 12, 'mlp_dim': 1536},
    'base': {'num_layers': 12, 'width': 768, 'num_heads': 12, 'mlp_dim': 3072},
}
LAYOUTS = ('pre_ln', 'bert')
STEMS = ('tokens', 'patches')
POOLS = ('cls', 'mean')
ATTENTIONS = ('einsum', 'xla', 'flax')
_NEG = -1e9    # additive logit of a masked key: finite, so a row with no real key stays finite (uniform)

_KERNEL_INIT = nn.initializers.xavier_uniform()
_EMBED_INIT = nn.initializers.normal(0.02)
# LoRA: the modules of an encoder layer that can carry adapters (paths inside the block), the default
# `lora_targets`, and A's init: uniform ±1/sqrt(fan_in), what peft's kaiming_uniform_(a=√5) draws.
LORA_MODULES = ('attention/query', 'attention/key', 'attention/value', 'attention/out', 'mlp_in', 'mlp_out')
LORA_TARGETS = 'attention/(query|key|value|out)|mlp_(in|out)'
LORA_ALPHA = 8.0
_LORA_A_INIT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def _layer_norm(layout: str, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-12 if layout == 'bert' else 1e-6, name=name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dropout(keep_prob: float, x: jax.Array, keep: jax.Array) -> jax.Array:
  """x / keep_prob where `keep`, else 0 — inverted dropout, with a gradient that reads the saved mask."""
  return jax.lax.select(keep, x / keep_prob, jnp.zeros_like(x))


def _dropout_fwd(keep_prob, x, keep):
  return _dropout(keep_prob, x, keep), keep


def _dropout_bwd(keep_prob, keep, g):
  return jax.lax.select(keep, g / keep_prob, jnp.zeros_like(g)), None


_dropout.defvjp(_dropout_fwd, _dropout_bwd)

_KEEP_BITS = 16   # a keep decision reads one 16-bit random word (Dropout)


def keep_threshold(rate: float) -> int:
  """t: an element is kept when its 16-bit random word is < t, so the keep probability is t / 2¹⁶ — 1 − `rate`
  rounded to a multiple of 2⁻¹⁶ (rate 0.1: 0.8999939)."""
  return round((1.0 - rate) * 2 ** _KEEP_BITS)


class Dropout(nn.Module):
  """Inverted dropout (zero an element with probability `rate`, scale the rest by 1 / keep probability), for
  speed on CPU: a masked-LM step draws 9 masks of a million elements each.

  - The keep mask comes from 16-bit random words (`jax.random.bits(key, shape, uint16)` < t, `keep_threshold`):
    a keep decision needs 16 bits, and half the random words are half of the threefry hashing — the masked-LM
    step 3.5–5.6 % faster than with `nn.Dropout`'s 32-bit `bernoulli` in same-process A/Bs (BUILD_NOTES). The kept elements are scaled by
    1 / (t / 2¹⁶), the exact keep probability, so the expected output is the input.
  - The mask is the saved residual of a custom VJP: with `nn.Dropout` XLA recomputes the threefry bits inside
    the backward fusions (cheap to recompute in its cost model), drawing every mask twice per train step; here
    once: −10 % of the masked-LM step on CPU (BUILD_NOTES).
  The rng stream is `nn.Dropout`'s (`make_rng('dropout')`), so runs are reproducible and resume bit-identically.
  """
  rate: float
  deterministic: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    t = keep_threshold(self.rate)
    if t >= 2 ** _KEEP_BITS:   # rate < 2⁻¹⁷: nothing would ever be dropped
      return x
    if t <= 0:                 # rate > 1 − 2⁻¹⁷ (or ≥ 1): everything is
      return jnp.zeros_like(x)
    keep = jax.random.bits(self.make_rng('dropout'), x.shape, jnp.uint16) < jnp.uint16(t)
    return _dropout(t / 2 ** _KEEP_BITS, x, keep)


def _gelu(layout: str, x: jax.Array) -> jax.Array:
  return nn.gelu(x, approximate=layout != 'bert')


def lora_modules(rank: int, targets: str) -> tuple[str, ...]:
  """The `LORA_MODULES` that carry adapters (their path fully matches the regex `targets`); () when rank is 0.

  A targets regex that is not a valid regex or matches none of them is a ConfigError (a typo must not
  silently leave the model without adapters).
  """
  if not rank:
    return ()
  try:
    regex = re.compile(targets)
  except re.error as e:
    raise errors.ConfigError(f'transformer lora_targets={targets!r} is not a valid regex: {e}') from None
  chosen = tuple(m for m in LORA_MODULES if regex.fullmatch(m))
  if not chosen:
    raise errors.ConfigError(f'transformer lora_targets={targets!r} matches none of {", ".join(LORA_MODULES)}')
  return chosen


class LoRADense(nn.Module):
  """A dense layer over the last `n_in` input axes, with an optional low-rank adapter (module docstring).

  rank 0: `nn.Dense(features)` (n_in=1, one feature axis) or `nn.DenseGeneral(features, axis=(-n_in…-1))` —
  the same parameters (kernel in_shape + features, bias features), the same initial values (the kernel
  initialiser sees the flattened (in, out) shape, as DenseGeneral's does) and the same outputs; the matmul is
  `projection.dot_general`, whose kernel gradient moves fewer bytes when the layer widens (mlp_in).
  rank R: also `lora_a` (in, R), `lora_b` (R, out) (in/out flattened) and + scale·(x·A)·B, scale = alpha/R.
  """
  features: tuple[int, ...]
  n_in: int = 1
  rank: int = 0
  alpha: float = LORA_ALPHA

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = tuple(self.features)
    in_shape = tuple(x.shape[x.ndim - self.n_in:])
    n_in, n_out = math.prod(in_shape), math.prod(features)
    kernel = self.param('kernel', lambda key, shape, dtype: jnp.reshape(_KERNEL_INIT(key, (n_in, n_out), dtype), shape),
                        in_shape + features, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, features, jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=None)
    axes = tuple(range(x.ndim - self.n_in, x.ndim))
    y = projection.dot_general(x, kernel, ((axes, tuple(range(self.n_in))), ((), ())))
    y = y + jnp.reshape(bias, (1,) * (y.ndim - len(features)) + features)
    if self.rank:
      a = self.param('lora_a', _LORA_A_INIT, (n_in, self.rank), jnp.float32)
      b = self.param('lora_b', nn.initializers.zeros, (self.rank, n_out), jnp.float32)
      low = jnp.reshape(x, x.shape[:x.ndim - self.n_in] + (n_in,)) @ a
      y = y + jnp.reshape((self.alpha / self.rank) * (low @ b), y.shape)
    return y


class TokenStem(nn.Module):
  """Token ids (B, T) → embeddings (B, T, D) and the real-token mask (B, T)."""
  vocab_size: int
  width: int
  max_len: int
  pad_id: int
  type_vocab_size: int
  layout: str
  dropout: float

  @nn.compact
  def __call__(self, tokens: jax.Array, *, deterministic: bool) -> tuple[jax.Array, jax.Array]:
    if tokens.ndim != 2:
      raise errors.DataError(f'transformer stem=tokens takes token ids (B, T), got shape {tokens.shape}')
    tokens = tokens.astype(jnp.int32)   # ids given as floats too: `model.init`'s dummy input is float zeros
    t = tokens.shape[1]
    if t > self.max_len:
      raise errors.ConfigError(f'transformer max_len={self.max_len} is shorter than the sequence length {t}')
    x = nn.Embed(self.vocab_size, self.width, embedding_init=_EMBED_INIT, name='token_embed')(tokens)
    x = x + nn.Embed(self.max_len, self.width, embedding_init=_EMBED_INIT, name='position_embed').embedding[:t]
    if self.type_vocab_size:
      x = x + nn.Embed(self.type_vocab_size, self.width, embedding_init=_EMBED_INIT,
                       name='type_embed').embedding[0]
    if self.layout == 'bert':
      x = _layer_norm(self.layout, 'norm')(x)
    x = Dropout(self.dropout, deterministic)(x)
    return x, tokens != self.pad_id


class PatchEmbed(nn.Module):
  """p×p patches → `features`: what `nn.Conv(features, (p, p), strides=p, padding='VALID')` computes, with
  the same parameters (kernel (p, p, C, features), bias), as one matmul over the non-overlapping patches
  — XLA:CPU runs convolutions over 1- or 3-channel images slowly (models/conv.py)."""
  features: int
  patch_size: int

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    p = self.patch_size
    b, h, w, c = images.shape
    gh, gw = h // p, w // p
    if not gh or not gw:
      raise errors.ConfigError(f'transformer patch_size={p} is larger than the {h}×{w} image')
    kernel = self.param('kernel', _KERNEL_INIT, (p, p, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    patches = images[:, :gh * p, :gw * p].reshape(b, gh, p, gw, p, c)
    return jnp.einsum('bipjqc,pqcd->bijd', patches, kernel) + bias


class PatchStem(nn.Module):
  """Images (B, H, W, C) → patch embeddings (B, N [+1], D) and an all-true mask.

  N = (H/p)·(W/p) (a remainder row or column of pixels is dropped). The learned positions are sized by the
  image at `init`, so a checkpoint fits images of that size; with `cls`, a learned [CLS] vector goes first.
  """
  width: int
  patch_size: int
  cls: bool
  dropout: float

  @nn.compact
  def __call__(self, images: jax.Array, *, deterministic: bool) -> tuple[jax.Array, jax.Array]:
    if images.ndim != 4:
      raise errors.DataError(f'transformer stem=patches takes NHWC images, got shape {images.shape}')
    x = PatchEmbed(self.width, self.patch_size, name='patch_embed')(images.astype(jnp.float32))
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    if self.cls:
      cls = self.param('cls', nn.initializers.zeros, (1, 1, d))
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1)
    x = x + self.param('position_embed', _EMBED_INIT, (x.shape[1], d))
    x = Dropout(self.dropout, deterministic)(x)
    return x, jnp.ones(x.shape[:2], bool)


class SelfAttention(nn.Module):
  """Multi-head self-attention with a key mask; parameters laid out as `nn.MultiHeadDotProductAttention`'s.

  `lora` names the projections ('query', 'key', 'value', 'out') that carry rank-`lora_rank` adapters."""
  num_heads: int
  dropout: float
  implementation: str
  lora: tuple[str, ...] = ()
  lora_rank: int = 0
  lora_alpha: float = LORA_ALPHA

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    d = x.shape[-1]
    if d % self.num_heads:
      raise errors.ConfigError(f'transformer width {d} is not divisible by num_heads={self.num_heads}')
    h, dh = self.num_heads, d // self.num_heads
    rank = lambda name: self.lora_rank if name in self.lora else 0
    dense = lambda name, features, n_in=1: LoRADense(features, n_in, rank(name), self.lora_alpha, name=name)
    q, k, v = (dense(n, (h, dh))(x) for n in ('query', 'key', 'value'))   # (B, T, H, Dh)
    if self.implementation == 'xla' and (deterministic or not self.dropout):
      y = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], implementation='xla')
    else:   # 'einsum' (and 'xla' when the attention weights need dropout, which it cannot do)
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(dh).astype(q.dtype)
      logits = jnp.where(mask[:, None, None, :], logits, _NEG)
      weights = jax.nn.softmax(logits, axis=-1)
      weights = Dropout(self.dropout, deterministic)(weights)
      y = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    return dense('out', (d,), 2)(y)


class EncoderBlock(nn.Module):
  """One encoder layer: self-attention then a 2-layer GELU MLP, pre-LN or BERT's post-LN (module docstring)."""
  num_heads: int
  mlp_dim: int
  layout: str
  dropout: float
  attention_dropout: float
  attention: str
  lora_rank: int = 0
  lora_targets: str = LORA_TARGETS
  lora_alpha: float = LORA_ALPHA

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    drop = lambda y: Dropout(self.dropout, deterministic)(y)
    lora = lora_modules(self.lora_rank, self.lora_targets)   # TransformerEncoder._check refuses them with 'flax'
    rank = lambda name: self.lora_rank if name in lora else 0
    if self.attention == 'flax':   # the same parameter tree as SelfAttention's
      mha = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dropout_rate=self.attention_dropout,
                                            kernel_init=_KERNEL_INIT, name='attention')
      attn = lambda y, m, deterministic: mha(y, y, mask=m[:, None, None, :], deterministic=deterministic)
    else:
      attn = SelfAttention(self.num_heads, self.attention_dropout, self.attention,
                           tuple(m.split('/')[1] for m in lora if m.startswith('attention/')), self.lora_rank,
                           self.lora_alpha, name='attention')
    norm_attn, norm_mlp = _layer_norm(self.layout, 'norm_attention'), _layer_norm(self.layout, 'norm_mlp')

    def mlp(y):
      y = _gelu(self.layout, LoRADense((self.mlp_dim,), 1, rank('mlp_in'), self.lora_alpha, name='mlp_in')(y))
      return LoRADense((x.shape[-1],), 1, rank('mlp_out'), self.lora_alpha, name='mlp_out')(y)

    if self.layout == 'bert':
      x = norm_attn(x + drop(attn(x, mask, deterministic=deterministic)))
      return norm_mlp(x + drop(mlp(x)))
    x = x + drop(attn(norm_attn(x), mask, deterministic=deterministic))
    return x + drop(mlp(norm_mlp(x)))


class TransformerEncoder(nn.Module):
  """Transformer encoder backbone (module docstring). Output: (B, width) pooled features.

  Sizes: `SIZES` ('tiny' 2×128 … 'base' 12×768); `mlp_dim=0` means 4·width. The token stem needs
  `vocab_size` and `max_len` (the number of learned positions); the patch stem `patch_size`. LoRA adapters:
  `lora_rank` (0 = none), `lora_targets`, `lora_alpha` (module docstring).
  """
  stem: str = 'tokens'
  num_layers: int = 2
  width: int = 128
  num_heads: int = 2
  mlp_dim: int = 0
  layout: str = 'pre_ln'
  pool: str = 'mean'
  vocab_size: int = 8000
  max_len: int = 128
  pad_id: int = 0
  type_vocab_size: int = 0
  patch_size: int = 4
  dropout: float = 0.0
  attention_dropout: float = 0.0
  attention: str = 'einsum'
  drop_last: int = 0
  lora_rank: int = 0
  lora_targets: str = LORA_TARGETS
  lora_alpha: float = LORA_ALPHA

  def _check(self) -> None:
    for key, value, allowed in (('stem', self.stem, STEMS), ('layout', self.layout, LAYOUTS),
                                ('pool', self.pool, POOLS), ('attention', self.attention, ATTENTIONS)):
      if value not in allowed:
        raise errors.ConfigError(f'transformer {key}={value!r}: expected one of {", ".join(allowed)}')
    if self.num_layers < 0 or self.width <= 0 or self.num_heads <= 0:
      raise errors.ConfigError(f'transformer sizes: num_layers={self.num_layers}, width={self.width}, '
                               f'num_heads={self.num_heads} (layers ≥ 0, width and heads ≥ 1)')
    if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
      raise errors.ConfigError(f'transformer lora_rank={self.lora_rank!r}: expected an integer ≥ 0 (0 = no adapters)')
    if self.lora_rank and not (isinstance(self.lora_alpha, (int, float)) and math.isfinite(self.lora_alpha)
                               and self.lora_alpha > 0):
      raise errors.ConfigError(f'transformer lora_alpha={self.lora_alpha!r}: expected a number > 0')
    if lora_modules(self.lora_rank, self.lora_targets) and self.attention == 'flax':
      raise errors.ConfigError("transformer lora_rank > 0 needs attention='einsum' or 'xla' (not 'flax')")

  def block_modules(self) -> list[tuple[Any, dict[str, Any]]]:
    self._check()
    if self.stem == 'tokens':
      blocks: list[tuple[Any, dict[str, Any]]] = [(TokenStem, {
          'vocab_size': self.vocab_size, 'width': self.width, 'max_len': self.max_len, 'pad_id': self.pad_id,
          'type_vocab_size': self.type_vocab_size, 'layout': self.layout, 'dropout': self.dropout})]
    else:
      blocks = [(PatchStem, {'width': self.width, 'patch_size': self.patch_size, 'cls': self.pool == 'cls',
                             'dropout': self.dropout})]
    layer = {'num_heads': self.num_heads, 'mlp_dim': self.mlp_dim or 4 * self.width, 'layout': self.layout,
             'dropout': self.dropout, 'attention_dropout': self.attention_dropout, 'attention': self.attention,
             'lora_rank': self.lora_rank, 'lora_targets': self.lora_targets, 'lora_alpha': self.lora_alpha}
    blocks += [(EncoderBlock, layer)] * self.num_layers
    if not 0 <= self.drop_last < len(blocks):
      raise errors.ConfigError(f'transformer drop_last={self.drop_last}: the encoder has {len(blocks)} blocks '
                               '(the stem stays)')
    return blocks[:len(blocks) - self.drop_last]

  @nn.compact
  def encode(self, x: jax.Array, *, train: bool = False, frozen: Sequence[str] = (),
             keep: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(per-token outputs (B, T, width), real-token mask (B, T)): what MLM/MAE heads read.

    Position 0 of a patch encoder with pool='cls' is the [CLS] vector, so T = N + 1 there. `keep` (B, V) int
    (patch stem only): the encoder layers see only those patches of each row (indices into the N patches,
    after the stem has added their positions; the [CLS] vector stays first) — MAE's encoder, T = V (+ 1).
    """
    mask = None
    for i, (cls, kwargs) in enumerate(self.block_modules()):
      name = f'block_{i}'
      deterministic = not train or name in frozen
      if i == 0:
        x, mask = cls(**kwargs, name=name)(x, deterministic=deterministic)
        if keep is not None:
          x, mask = _keep_patches(x, keep, self.stem, self.pool == 'cls')
      else:
        x = cls(**kwargs, name=name)(x, mask, deterministic=deterministic)
    if self.layout == 'pre_ln':
      x = nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, name='final_norm')(x)
    return x, mask

  def __call__(self, x: jax.Array, *, train: bool = False, frozen: Sequence[str] = ()) -> jax.Array:
    seq, mask = self.encode(x, train=train, frozen=frozen)
    return pool_sequence(seq, mask, self.pool)


def _keep_patches(x: jax.Array, keep: jax.Array, stem: str, cls: bool) -> tuple[jax.Array, jax.Array]:
  """The stem's output (B, N [+1], D) cut to the patches `keep` (B, V) of each row (the [CLS] vector first)."""
  if stem != 'patches':
    raise errors.ConfigError('transformer encode(keep=…) needs stem=patches (masked autoencoding of images)')
  if cls:
    idx = jnp.concatenate([jnp.zeros((keep.shape[0], 1), keep.dtype), keep + 1], axis=1)
  else:
    idx = keep
  x = jnp.take_along_axis(x, idx[..., None].astype(jnp.int32), axis=1)
  return x, jnp.ones(x.shape[:2], bool)


def sincos_positions(n: int, dim: int) -> jax.Array:
  """(n, dim) fixed sine-cosine position codes (MAE's decoder): 2-D over a √n × √n grid when n is a square
  (half the channels per axis), else 1-D over the index. No parameters, so one decoder fits any image size."""
  def one_d(pos: jax.Array, d: int) -> jax.Array:
    freq = 1.0 / 10000 ** (jnp.arange(d // 2, dtype=jnp.float32) / max(d // 2, 1))
    angle = pos[:, None].astype(jnp.float32) * freq[None]
    out = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=1)
    return jnp.pad(out, ((0, 0), (0, d - out.shape[1])))
  side = math.isqrt(n)
  if side * side == n and dim >= 4:
    rows, cols = jnp.divmod(jnp.arange(n), side)
    return jnp.concatenate([one_d(rows, dim // 2), one_d(cols, dim - dim // 2)], axis=1)
  return one_d(jnp.arange(n), dim)


def pool_sequence(seq: jax.Array, mask: jax.Array, how: str) -> jax.Array:
  """(B, T, D) → (B, D): position 0 ('cls') or the mean over real tokens ('mean'; 0 for a row of padding)."""
  if how == 'cls':
    return seq[:, 0]
  if how == 'mean':
    m = mask[..., None].astype(seq.dtype)
    return jnp.sum(seq * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
  raise errors.ConfigError(f'transformer pool={how!r}: expected one of {", ".join(POOLS)}')
