"""How text becomes model inputs in a run: which tokenizer, and token batches padded to a few lengths.

    inputs = TextInputs(tokenizer, max_len=128, buckets=(32, 64, 128))
    inputs.tokens([b'a sentence', b'another one'])   # (2, 32) int32: padded to the bucket of the longest

Every batch is padded to the smallest bucket that holds its longest sequence (truncated at `max_len`), so
a train or eval step compiles once per bucket — at most `len(buckets)` programs — while short batches do
not pay for `max_len`. Training batches of random sentences almost always hold one long sentence, so
they pad to the longest bucket: `text.group_by_length` (data/pipeline.py) draws batches of like lengths
instead. With several processes the hosts cannot agree on a batch's bucket without a
collective, so every batch is padded to `max_len` (one program).

Which tokenizer (`tokenizer_for_run`), in order:
  1. the run's own checkpoint (resume) — a run never changes tokenizer half-way;
  2. the `transfer.init_from` checkpoint's — a fine-tune tokenizes with exactly its backbone's tokenizer;
     `config.text.tokenizer` naming another one is a one-line `TokenizerError`;
  3. `config.text.tokenizer`: 'sentencepiece' (trained on the training split's texts, sorted, with
     `text.vocab_size` and `text.tokenizer_seed`: deterministic), the path of a `tokenizer.json`, or
     'from:<checkpoint>' — another checkpoint's tokenizer without its weights (a from-scratch twin of a
     pretrained encoder that tokenizes exactly like it).
The tokenizer is written into every checkpoint's meta (`meta['tokenizer']`), so it travels with the weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxtransfer import errors
from jaxtransfer.text import tokenizer as tokenizer_lib

log = logging.getLogger('jaxtransfer')

TEXT_KEY = 'text'      # the feature text datasets hold (data/builders/text.py)
TOKENS_KEY = 'tokens'  # the model input the pipeline makes of it


def _as_str(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode('utf-8', errors='replace')
  return value if isinstance(value, str) else ''     # the eval pipeline's padding rows hold zeros


@dataclasses.dataclass(frozen=True)
class TextInputs:
  """Tokenizes the 'text' feature of a batch into 'tokens' (module docstring); the pipeline's `preprocess`
  for text datasets (no per-example work, nothing random: batches stay pure functions of (seed, step))."""
  tokenizer: Any                       # tokenizer.Tokenizer or a SentencePiece tokenizer (same interface)
  max_len: int = 128
  buckets: tuple[int, ...] = (32, 64, 128)

  def __post_init__(self):
    if self.max_len < 2:
      raise errors.ConfigError(f'text.max_len={self.max_len}: must be ≥ 2 (room for the special tokens)')
    buckets = tuple(sorted({int(b) for b in self.buckets if 0 < int(b) < self.max_len} | {self.max_len}))
    object.__setattr__(self, 'buckets', buckets)

  is_identity = True     # no per-example work (pipeline: read batches as they are)
  augments = False       # features are a pure function of the example (the feature cache may be used)

  def length(self, longest: int) -> int:
    """The padded length of a batch whose longest sequence has `longest` tokens."""
    if jax.process_count() > 1:
      return self.max_len
    return next(b for b in self.buckets if b >= min(longest, self.max_len))

  def tokens(self, texts: Sequence[Any]) -> np.ndarray:
    """(B, bucket) int32 token ids of `texts` (bytes or str), padded with the tokenizer's pad id."""
    ids = self.tokenizer.encode([_as_str(t) for t in texts], max_len=self.max_len)
    out = np.full((len(ids), self.length(ids.shape[1])), self.tokenizer.pad_id, np.int32)
    out[:, :ids.shape[1]] = ids
    return out

  def token_counts(self, texts: Sequence[Any]) -> np.ndarray:
    """(len(texts),) int: each text's token count as `tokens` pads it (specials included, at most max_len) —
    what `text.group_by_length` sorts by."""
    ids = self.tokenizer.encode([_as_str(t) for t in texts], max_len=self.max_len)
    return np.sum(ids != self.tokenizer.pad_id, axis=1)

  def output_shape(self, shape: Sequence[int] = ()) -> tuple[int, ...]:
    """The shape of one example the model is initialised with (parameters do not depend on the length)."""
    del shape
    return (self.buckets[0],)

  def probe_example(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`batch` (one example) padded to `max_len`: the longest input a step can get, for memory sizing."""
    tokens = batch[TOKENS_KEY]
    padded = np.full((tokens.shape[0], self.max_len), self.tokenizer.pad_id, np.int32)
    padded[:, :tokens.shape[1]] = tokens
    return {**batch, TOKENS_KEY: padded}


def source_texts(source: Sequence[Any], chunk: int = 4096) -> list[str]:
  """Every text of a text dataset's split, in order (what a tokenizer is trained on)."""
  out = []
  for lo in range(0, len(source), chunk):
    ids = list(range(lo, min(lo + chunk, len(source))))
    examples = source.__getitems__(ids) if hasattr(source, '__getitems__') else [source[i] for i in ids]
    out += [_as_str(ex[TEXT_KEY]) for ex in examples]
  return out


def from_config(text_config: ml_collections.ConfigDict, tokenizer: Any) -> TextInputs:
  return TextInputs(tokenizer, int(text_config.max_len), tuple(int(b) for b in text_config.buckets))


def read_tokenizer(spec: str, texts: Any, text_config: ml_collections.ConfigDict) -> Any:
  """The tokenizer `config.text.tokenizer` names: 'sentencepiece' (trained on `texts()`), or a path."""
  if spec == 'sentencepiece':
    corpus = sorted(_as_str(t) for t in texts())
    log.info('training a SentencePiece tokenizer (vocabulary %d) on %d texts', text_config.vocab_size, len(corpus))
    from jaxtransfer.text import sentencepiece   # the `text` extra's sentencepiece, only when training one
    return sentencepiece.train_sentencepiece(corpus, int(text_config.vocab_size),
                                             seed=int(text_config.get('tokenizer_seed', 0)))
  if spec.startswith('from:'):
    from jaxtransfer import checkpoint
    meta = checkpoint.read_meta(*checkpoint.open_for_reading(spec[len('from:'):]))
    if 'tokenizer' not in meta:
      raise tokenizer_lib.TokenizerError(f'text.tokenizer={spec!r}: that checkpoint holds no tokenizer')
    return tokenizer_lib.from_meta(meta['tokenizer'])
  if not os.path.isfile(spec):
    raise tokenizer_lib.TokenizerError(f"text.tokenizer={spec!r}: expected 'sentencepiece', 'from:<checkpoint>' "
                                       'or the path of a tokenizer.json file (no such file)')
  with open(spec) as f:
    return tokenizer_lib.Tokenizer.from_json(f.read())


def tokenizer_for_run(config: ml_collections.ConfigDict, *, resume_meta: Mapping[str, Any] | None,
                      init_meta: Mapping[str, Any] | None, texts: Any) -> Any:
  """The run's tokenizer (module docstring); `texts()` gives the training texts (only called to train one)."""
  spec = config.text.tokenizer
  if resume_meta is not None:
    if 'tokenizer' not in resume_meta:
      raise tokenizer_lib.TokenizerError('resume: the run\'s checkpoint holds no tokenizer (written by a run '
                                         'that was not a text run?)')
    return tokenizer_lib.from_meta(resume_meta['tokenizer'])
  if init_meta is not None and init_meta.get('tokenizer') is not None:
    stored = tokenizer_lib.from_meta(init_meta['tokenizer'])
    if spec:
      tokenizer_lib.check_same(init_meta['tokenizer'], read_tokenizer(spec, texts, config.text),
                               f'text.tokenizer={spec!r} vs transfer.init_from={config.transfer.init_from}')
    return stored
  if not spec:
    where = (f'transfer.init_from={config.transfer.init_from} holds no tokenizer' if init_meta is not None
             else 'no transfer.init_from')
    raise tokenizer_lib.TokenizerError(f'{config.data} is a text dataset but {where}: set text.tokenizer '
                                       "('sentencepiece' or a tokenizer.json path)")
  return read_tokenizer(spec, texts, config.text)


def fit_backbone(spec: Mapping[str, Any], tokenizer: Any) -> dict[str, Any]:
  """The backbone spec with the tokenizer's vocabulary size (when the spec says 0) and padding id; a spec
  whose vocabulary or padding id disagrees with the tokenizer is a one-line ConfigError."""
  spec = dict(spec)
  if spec.get('name') != 'transformer' or spec.get('stem', 'tokens') != 'tokens':
    raise errors.ConfigError(f'a text dataset needs a token encoder (backbone transformer, stem tokens), got '
                             f'{spec.get("name")!r} stem {spec.get("stem", "tokens")!r}')
  vocab = int(tokenizer.vocab_size)
  if not spec.get('vocab_size'):
    spec['vocab_size'] = vocab
  elif int(spec['vocab_size']) < vocab:
    raise errors.ConfigError(f'model.backbone vocab_size={spec["vocab_size"]} is smaller than the tokenizer\'s '
                             f'{vocab} tokens')
  pad = int(tokenizer.pad_id)
  if 'pad_id' in spec and int(spec['pad_id']) != pad:
    raise errors.ConfigError(f'model.backbone pad_id={spec["pad_id"]} but the tokenizer pads with id {pad}')
  spec['pad_id'] = pad
  return spec
