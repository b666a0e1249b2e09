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

Attention implementation (`attention`): 'einsum' (two einsums and a softmax), 'xla'
(`jax.nn.dot_product_attention`) or 'flax' (`nn.MultiHeadDotProductAttention`); all three have the same
parameters — query/key/value kernels (width, heads, head_dim), out (heads, head_dim, width) — so this is a
speed knob, not a format. Default 'einsum': on CPU the three compile to the same matmuls, einsum with the
fewest extra transposes and copies, and it is as fast as the others within noise
(experiments/benchmarks/attention.py); 'xla' cannot drop out attention weights (it falls back to einsum).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtransfer import errors

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


def _layer_norm(layout: str, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-12 if layout == 'bert' else 1e-6, name=name)


def _gelu(layout: str, x: jax.Array) -> jax.Array:
  return nn.gelu(x, approximate=layout != 'bert')


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
    x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
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
    x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
    return x, jnp.ones(x.shape[:2], bool)


class SelfAttention(nn.Module):
  """Multi-head self-attention with a key mask; parameters laid out as `nn.MultiHeadDotProductAttention`'s."""
  num_heads: int
  dropout: float
  implementation: str

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    d = x.shape[-1]
    if d % self.num_heads:
      raise errors.ConfigError(f'transformer width {d} is not divisible by num_heads={self.num_heads}')
    h, dh = self.num_heads, d // self.num_heads
    dense = functools.partial(nn.DenseGeneral, features=(h, dh), kernel_init=_KERNEL_INIT)
    q, k, v = dense(name='query')(x), dense(name='key')(x), dense(name='value')(x)   # (B, T, H, Dh)
    if self.implementation == 'xla' and (deterministic or not self.dropout):
      y = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], implementation='xla')
    else:   # 'einsum' (and 'xla' when the attention weights need dropout, which it cannot do)
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(dh).astype(q.dtype)
      logits = jnp.where(mask[:, None, None, :], logits, _NEG)
      weights = jax.nn.softmax(logits, axis=-1)
      weights = nn.Dropout(self.dropout, deterministic=deterministic)(weights)
      y = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    return nn.DenseGeneral(d, axis=(-2, -1), kernel_init=_KERNEL_INIT, name='out')(y)


class EncoderBlock(nn.Module):
  """One encoder layer: self-attention then a 2-layer GELU MLP, pre-LN or BERT's post-LN (module docstring)."""
  num_heads: int
  mlp_dim: int
  layout: str
  dropout: float
  attention_dropout: float
  attention: str

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    drop = lambda y: nn.Dropout(self.dropout, deterministic=deterministic)(y)
    if self.attention == 'flax':   # the same parameter tree as SelfAttention's
      mha = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dropout_rate=self.attention_dropout,
                                            kernel_init=_KERNEL_INIT, name='attention')
      attn = lambda y, m, deterministic: mha(y, y, mask=m[:, None, None, :], deterministic=deterministic)
    else:
      attn = SelfAttention(self.num_heads, self.attention_dropout, self.attention, name='attention')
    norm_attn, norm_mlp = _layer_norm(self.layout, 'norm_attention'), _layer_norm(self.layout, 'norm_mlp')

    def mlp(y):
      y = _gelu(self.layout, nn.Dense(self.mlp_dim, kernel_init=_KERNEL_INIT, name='mlp_in')(y))
      return nn.Dense(x.shape[-1], kernel_init=_KERNEL_INIT, name='mlp_out')(y)

    if self.layout == 'bert':
      x = norm_attn(x + drop(attn(x, mask, deterministic=deterministic)))
      return norm_mlp(x + drop(mlp(x)))
    x = x + drop(attn(norm_attn(x), mask, deterministic=deterministic))
    return x + drop(mlp(norm_mlp(x)))


class TransformerEncoder(nn.Module):
  """Transformer encoder backbone (module docstring). Output: (B, width) pooled features.

  Sizes: `SIZES` ('tiny' 2×128 … 'base' 12×768); `mlp_dim=0` means 4·width. The token stem needs
  `vocab_size` and `max_len` (the number of learned positions); the patch stem `patch_size`.
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

  def _check(self) -> None:
    for key, value, allowed in (('stem', self.stem, STEMS), ('layout', self.layout, LAYOUTS),
                                ('pool', self.pool, POOLS), ('attention', self.attention, ATTENTIONS)):
      if value not in allowed:
        raise errors.ConfigError(f'transformer {key}={value!r}: expected one of {", ".join(allowed)}')
    if self.num_layers < 0 or self.width <= 0 or self.num_heads <= 0:
      raise errors.ConfigError(f'transformer sizes: num_layers={self.num_layers}, width={self.width}, '
                               f'num_heads={self.num_heads} (layers ≥ 0, width and heads ≥ 1)')

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
             'dropout': self.dropout, 'attention_dropout': self.attention_dropout, 'attention': self.attention}
    blocks += [(EncoderBlock, layer)] * self.num_layers
    if not 0 <= self.drop_last < len(blocks):
      raise errors.ConfigError(f'transformer drop_last={self.drop_last}: the encoder has {len(blocks)} blocks '
                               '(the stem stays)')
    return blocks[:len(blocks) - self.drop_last]

  @nn.compact
  def encode(self, x: jax.Array, *, train: bool = False, frozen: Sequence[str] = ()) -> tuple[jax.Array, jax.Array]:
    """(per-token outputs (B, T, width), real-token mask (B, T)): what MLM/MAE heads read.

    Position 0 of a patch encoder with pool='cls' is the [CLS] vector, so T = N + 1 there.
    """
    mask = None
    for i, (cls, kwargs) in enumerate(self.block_modules()):
      name = f'block_{i}'
      deterministic = not train or name in frozen
      if i == 0:
        x, mask = cls(**kwargs, name=name)(x, deterministic=deterministic)
      else:
        x = cls(**kwargs, name=name)(x, mask, deterministic=deterministic)
    if self.layout == 'pre_ln':
      x = nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, name='final_norm')(x)
    return x, mask

  def __call__(self, x: jax.Array, *, train: bool = False, frozen: Sequence[str] = ()) -> jax.Array:
    seq, mask = self.encode(x, train=train, frozen=frozen)
    return pool_sequence(seq, mask, self.pool)


def pool_sequence(seq: jax.Array, mask: jax.Array, how: str) -> jax.Array:
  """(B, T, D) → (B, D): position 0 ('cls') or the mean over real tokens ('mean'; 0 for a row of padding)."""
  if how == 'cls':
    return seq[:, 0]
  if how == 'mean':
    m = mask[..., None].astype(seq.dtype)
    return jnp.sum(seq * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
  raise errors.ConfigError(f'transformer pool={how!r}: expected one of {", ".join(POOLS)}')
