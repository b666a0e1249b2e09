"""Masked-language-model pretraining (BERT): predict hidden tokens from the rest of the sentence.

Masking is drawn inside the jitted train step from the step key (`select_and_corrupt`), so a resumed run
is bit-identical. As in BERT's own data pipeline, each sequence gets exactly round(`mlm.mask_rate` × its
real tokens) selected positions (15 %; at least one, at most K = ceil(rate × T)), drawn uniformly among its
real, non-special tokens; a selected token becomes [MASK] with probability `mlm.mask_token` (80 %), a
random ordinary token with `mlm.random_token` (10 %), and stays itself otherwise. With `mlm.whole_word` the
selection takes whole words (all the pieces of a word or none, up to the same count; the tokenizer says which
pieces continue a word: `continues_word()`), as BERT's whole-word-masking models do. Loss and accuracy are
over the selected positions only (the loss is their mean, or with `mlm.loss_normalizing_factor` N > 0 their
sum / N, below): the head runs on the K gathered positions of each row (`Model.per_token(positions=…)`) — the
vocabulary projection is most of a small encoder's step, and computing it at every position only to zero 85 % of
it would cost T/K ≈ 6.7× that part — so an unselected position contributes exactly zero loss and gradient. The head (`MLMHead`: dense + GELU + LayerNorm + output
projection, untied from the token embedding; see models/heads.py) is dropped at transfer like any head.

Batches of like lengths (`text.group_by_length`) hold from ~130 to ~1200 masked tokens, so a per-batch mean gives a
token of a short-sentence batch several times the weight of one in a long-sentence batch. A constant N (t5x's
`loss_normalizing_factor`; set it to the masked tokens of an average batch: batch size × the mean of round(rate ×
real tokens)) weighs every masked token alike whatever batch it lands in, as uniform batches do. The reported
train 'loss' stays the mean per masked token.

Evaluation masks the same way with a key derived from each row's own tokens (not the step), so a split
scores the same at every evaluation and in `jaxtransfer evaluate`: metrics `masked_accuracy`, `loss` (mean
cross-entropy per masked token) and `perplexity` = exp(loss), summed over the whole split.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtransfer import errors
from jaxtransfer.models import model as model_lib
from jaxtransfer.objectives import base


def num_predictions(length: int, mask_rate: float) -> int:
  """K: how many positions of a T-token row the head runs on (the most a row can have selected)."""
  return max(1, math.ceil(mask_rate * length))


def select_and_corrupt(tokens: jax.Array, key: jax.Array, *, mask_rate: float, mask_token: float,
                       random_token: float, mask_id: int, special_ids: tuple[int, ...],
                       vocab_size: int, continues_word: Any = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(corrupted tokens (B, T), positions (B, K) int32, valid (B, K) bool): BERT's masking (module docstring).

  Row i has n_i = min(K, max(1, round(rate × real_i))) selected positions (0 for a row of padding), uniform
  among its real, non-special tokens: `positions[i, :n_i]` with `valid[i, :n_i]` True; the other K − n_i
  entries point at unselected positions and are not valid. Random replacements are ordinary tokens,
  uniform over the vocabulary without the special ones.

  `continues_word` (a (vocab,) bool table, True for a piece that continues the previous piece's word):
  whole-word masking, what BERT's released whole-word models use — the pieces of a word are selected together
  (`select_words`), so no masked piece is guessed from its own word's other pieces; each selected piece is
  still replaced 80 / 10 / 10 on its own.
  """
  b, t = tokens.shape
  k = num_predictions(t, mask_rate)
  k_select, k_how, k_random = jax.random.split(key, 3)
  eligible = ~jnp.isin(tokens, jnp.asarray(special_ids, jnp.int32))
  real = jnp.sum(eligible, axis=1)
  n = jnp.where(real > 0, jnp.clip(jnp.round(mask_rate * real), 1, k), 0).astype(jnp.int32)
  u = jax.random.uniform(k_select, tokens.shape)
  if continues_word is None:
    scores = jnp.where(eligible, u, -1.0)
    _, positions = jax.lax.top_k(scores, k)                    # a uniform random order of the eligible ones
    valid = jnp.arange(k)[None, :] < n[:, None]
  else:
    positions, valid = select_words(eligible, jnp.asarray(continues_word, bool)[tokens], u, n, k)
  selected = jnp.zeros((b, t), bool).at[jnp.arange(b)[:, None], positions].set(valid)
  how = jax.random.uniform(k_how, tokens.shape)
  ordinary = np.setdiff1d(np.arange(vocab_size), np.asarray(special_ids)).astype(np.int32)
  random_ids = jnp.asarray(ordinary)[jax.random.randint(k_random, tokens.shape, 0, len(ordinary))]
  corrupted = jnp.where(how < mask_token, mask_id, jnp.where(how < mask_token + random_token, random_ids, tokens))
  return jnp.where(selected, corrupted, tokens).astype(tokens.dtype), positions.astype(jnp.int32), valid


def select_words(eligible: jax.Array, continues: jax.Array, u: jax.Array, n: jax.Array,
                 k: int) -> tuple[jax.Array, jax.Array]:
  """(positions (B, K), valid (B, K)): whole words of each row in a uniform random order, taken while they fit.

  A word is an eligible token and the eligible tokens right after it that `continues` (B, T). As BERT's
  whole-word masking does, row i takes words in random order, skipping one that would bring its count of
  selected pieces above n_i (or past the K prediction slots), so it selects at most n_i pieces — a few fewer
  than n_i when the last words tried were long. Every piece of a word gets the word's random score `u` at the
  word's first position, so `top_k` lists a word's pieces together, in order (ties go to the lower index).
  """
  b, t = eligible.shape
  idx = jnp.arange(t)[None, :]
  before = jnp.pad(eligible[:, :-1], ((0, 0), (1, 0)))
  cont = eligible & continues & before
  first = jax.lax.cummax(jnp.where(eligible & ~cont, idx, -1), axis=1)      # each word's first position
  after = jnp.pad(cont[:, 1:], ((0, 0), (0, 1)))
  last = jax.lax.cummin(jnp.where(eligible & ~after, idx, t), axis=1, reverse=True)
  scores = jnp.where(eligible, jnp.take_along_axis(u, jnp.maximum(first, 0), axis=1), -1.0)
  _, positions = jax.lax.top_k(scores, k)
  at = lambda a: jnp.take_along_axis(a, positions, axis=1)
  offset, length = positions - at(first), at(last) - at(first) + 1        # the piece's place in its word, word size
  start = jnp.arange(k)[None, :] - offset                                 # the rank of its word's first piece
  ok = at(eligible) & (start + length <= k)                               # the whole word is among the K ranked

  def take(count, j):   # rank j: a word's first piece decides for the word; its other pieces follow it
    first_piece = offset[:, j] == 0
    fits = ok[:, j] & (count + length[:, j] <= n)
    count = jnp.where(first_piece & fits, count + length[:, j], count)
    return count, fits

  _, chosen = jax.lax.scan(take, jnp.zeros((b,), jnp.int32), jnp.arange(k))
  chosen = chosen.T                                                       # (B, K)
  # a later piece is valid iff its word's first piece was taken (its rank is `start`)
  valid = jnp.take_along_axis(chosen, jnp.clip(start, 0, k - 1), axis=1) & ok
  return positions, valid


def masked_losses(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(cross-entropy, correct) per gathered position (B, K), both exactly 0 where not `valid`."""
  logits = logits.astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  # correct = the target's logit is the largest, and the only largest (a tie, e.g. a head giving every token
  # the same logit, counts as wrong): argmax's (value, index) reduction over the vocabulary costs as much as
  # the softmax itself on CPU; the max is shared with the cross-entropy's
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  top = jnp.max(logits, -1, keepdims=True)
  correct = ((target_logit >= top[..., 0]) & (jnp.sum(logits >= top, -1) == 1)).astype(jnp.float32)
  return jnp.where(valid, nll, 0.0), jnp.where(valid, correct, 0.0)


@dataclasses.dataclass(frozen=True)
class MaskedLM(base.Objective):
  """The masked-LM objective (module docstring); bound to a tokenizer by `for_tokenizer` before use."""
  mask_rate: float = 0.15
  mask_token: float = 0.8
  random_token: float = 0.1
  head_hidden: int = 0
  whole_word: bool = False
  loss_normalizing_factor: float = 0.0   # > 0: the loss is Σ over the masked tokens / this constant
  mask_id: int = -1
  special_ids: tuple[int, ...] = ()
  vocab_size: int = 0
  continues_word: Any = dataclasses.field(default=None, compare=False, repr=False)   # (vocab,) bool, whole_word

  name = 'mlm'
  input_key = 'tokens'

  def for_tokenizer(self, tokenizer: Any) -> 'MaskedLM':
    mask_id = tokenizer.mask_id
    if mask_id is None:
      raise errors.ConfigError('objective mlm: the tokenizer has no [MASK] token')
    continues = np.asarray(tokenizer.continues_word(), bool) if self.whole_word else None
    return dataclasses.replace(self, mask_id=int(mask_id), special_ids=tuple(int(i) for i in tokenizer.special_ids),
                               vocab_size=int(tokenizer.vocab_size), continues_word=continues)

  def _check_bound(self) -> None:
    if self.mask_id < 0:
      raise errors.ConfigError('objective mlm needs a text dataset and a tokenizer (for_tokenizer was not called)')

  def num_classes(self, info: Any, tokenizer: Any | None) -> int:
    if tokenizer is None:
      raise errors.ConfigError('objective mlm needs a text dataset (a tokenizer)')
    return int(tokenizer.vocab_size)

  def head(self, config: ml_collections.ConfigDict, num_outputs: int) -> dict[str, Any]:
    return {'name': 'mlm', 'num_outputs': num_outputs, 'hidden': self.head_hidden}

  def _corrupt(self, tokens: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    return select_and_corrupt(tokens, key, mask_rate=self.mask_rate, mask_token=self.mask_token,
                              random_token=self.random_token, mask_id=self.mask_id, special_ids=self.special_ids,
                              vocab_size=self.vocab_size, continues_word=self.continues_word)

  def grads(self, fwd, trainable, state, batch, key):
    self._check_bound()
    k_mask, k_dropout = jax.random.split(key)
    tokens = batch['tokens']
    corrupted, positions, valid = self._corrupt(tokens, k_mask)
    targets = jnp.take_along_axis(tokens, positions, axis=1)
    count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    normalizer = self.loss_normalizing_factor if self.loss_normalizing_factor > 0 else count

    def loss_fn(p):
      (logits, _), new_stats = fwd.apply(p, corrupted, k_dropout, method=model_lib.Model.per_token,
                                         positions=positions)
      nll, correct = masked_losses(logits, targets, valid)
      total = jnp.sum(nll)
      return total / normalizer, (total / count, jnp.sum(correct) / count, new_stats)

    (_, (loss, accuracy, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    return grads, new_stats, state, {'loss': loss, 'masked_accuracy': accuracy,
                                     'masked_tokens': jnp.sum(valid).astype(jnp.float32)}

  def predict(self, model, variables, batch):
    self._check_bound()
    tokens = batch['tokens']
    corrupt_row = lambda row, key: jax.tree_util.tree_map(lambda x: x[0], self._corrupt(row[None], key))
    corrupted, positions, valid = jax.vmap(corrupt_row)(tokens, base.content_keys(tokens, 0x6D6C6D))
    logits, _ = model.apply(variables, corrupted, positions, train=False, method=model_lib.Model.per_token)
    return logits, positions, valid

  def per_example(self, outputs, batch):
    logits, positions, valid = outputs
    nll, correct = masked_losses(logits, jnp.take_along_axis(batch['tokens'], positions, axis=1), valid)
    return {'nll': jnp.sum(nll, 1), 'correct': jnp.sum(correct, 1), 'masked': jnp.sum(valid, 1).astype(jnp.float32)}

  def loss(self, outputs, batch):   # not used: `grads` is overridden (masking needs the step key)
    raise NotImplementedError

  def summarize(self, values):
    n = max(float(np.sum(values['masked'])), 1.0)
    loss = float(np.sum(values['nll'])) / n
    return {'masked_accuracy': float(np.sum(values['correct'])) / n, 'loss': loss,
            'perplexity': float(np.exp(min(loss, 700.0))), 'masked_tokens': float(np.sum(values['masked']))}


def from_config(config: ml_collections.ConfigDict) -> MaskedLM:
  m = config.get('mlm', ml_collections.ConfigDict())
  return MaskedLM(mask_rate=float(m.get('mask_rate', 0.15)), mask_token=float(m.get('mask_token', 0.8)),
                  random_token=float(m.get('random_token', 0.1)), head_hidden=int(m.get('head_hidden', 0)),
                  whole_word=bool(m.get('whole_word', False)),
                  loss_normalizing_factor=float(m.get('loss_normalizing_factor', 0.0)))
