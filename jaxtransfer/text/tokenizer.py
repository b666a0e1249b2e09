"""A tokenizer that travels with a checkpoint: Hugging Face `tokenizers` JSON (e.g. BERT's WordPiece).

    tok = Tokenizer.from_json(open('tokenizer.json').read())
    ids = tok.encode(['a sentence', 'another one'], max_len=128)   # (2, T) int32, padded with tok.pad_id
    meta['tokenizer'] = tok.to_meta()                              # into the checkpoint's meta (JSON)
    same = Tokenizer.from_meta(meta['tokenizer'])

The whole `tokenizer.json` (normaliser, pre-tokeniser, WordPiece vocabulary, [CLS]/[SEP] template) is kept
as one string, so a fine-tune tokenizes with exactly the tokenizer its checkpoint was trained with; the
`tokenizers` library does the work (WordPiece is not re-implemented here). The file's own padding and
truncation settings are replaced: `encode` truncates to `max_len` (the post-processor's [SEP] is kept) and
pads each batch to its longest sequence with `pad_id` — the encoder's padding mask reads that id.

The other kind, a SentencePiece model trained on your own corpus, is `text.sentencepiece.SentencePieceTokenizer`
(same interface); the module-level `from_meta` reads either kind from a checkpoint's meta and `check_same`
compares either (a different kind is a different tokenizer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from jaxtransfer import errors

if TYPE_CHECKING:
  from jaxtransfer.text.sentencepiece import SentencePieceTokenizer

KIND = 'huggingface-tokenizers'
MASK_TOKEN = '[MASK]'   # BERT's mask token (the masked-LM objective's replacement)


class TokenizerError(errors.Error):
  """A tokenizer that cannot be read, or that does not fit the checkpoint or the config."""


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A `tokenizers` JSON tokenizer and its padding token (see the module docstring)."""
  content: str                      # the tokenizer.json text
  pad_token: str = '[PAD]'
  kind: ClassVar[str] = KIND

  @classmethod
  def from_json(cls, content: str, pad_token: str = '[PAD]') -> Tokenizer:
    tok = cls(content, pad_token)
    tok.pad_id  # noqa: B018  (validates the JSON and the padding token now, not at the first batch)
    return tok

  @classmethod
  def from_meta(cls, meta: dict[str, Any]) -> Tokenizer:
    """The tokenizer stored by `to_meta` in a checkpoint's meta."""
    if not isinstance(meta, dict) or meta.get('kind') != KIND or 'json' not in meta:
      raise TokenizerError(f'checkpoint meta tokenizer: expected {{"kind": "{KIND}", "json": …}}, got '
                           f'{str(meta)[:80]!r}')
    return cls.from_json(meta['json'], meta.get('pad_token', '[PAD]'))

  def to_meta(self) -> dict[str, Any]:
    """A JSON-serialisable description for a checkpoint's meta (the whole tokenizer and its fingerprint)."""
    return {'kind': KIND, 'json': self.content, 'pad_token': self.pad_token, 'sha256': self.fingerprint}

  @property
  def fingerprint(self) -> str:
    """sha256 of the tokenizer JSON: two tokenizers are the same iff their fingerprints are."""
    return hashlib.sha256(self.content.encode()).hexdigest()

  def _load(self, max_len: int | None = None) -> Any:
    """The `tokenizers.Tokenizer` without padding, truncating to `max_len` (None: not truncating). One
    instance per `max_len`, built once: encoding never changes a shared tokenizer's settings."""
    cache = self.__dict__.setdefault('_instances', {})   # frozen dataclass: a private cache beside the fields
    if max_len not in cache:
      import tokenizers

      try:
        tok = tokenizers.Tokenizer.from_str(self.content)
      except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
        raise TokenizerError(f'not a tokenizers JSON ({type(e).__name__}: {str(e)[:100]})') from None
      tok.no_padding()
      if max_len is None:
        tok.no_truncation()
      else:
        tok.enable_truncation(max_len)
      cache[max_len] = tok
    return cache[max_len]

  @property
  def _tokenizer(self) -> Any:
    return self._load()

  @property
  def pad_id(self) -> int:
    pad = self._tokenizer.token_to_id(self.pad_token)
    if pad is None:
      raise TokenizerError(f'tokenizer has no padding token {self.pad_token!r}')
    return int(pad)

  @property
  def vocab_size(self) -> int:
    return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

  def token_to_id(self, token: str) -> int | None:
    return self._tokenizer.token_to_id(token)

  def continues_word(self) -> np.ndarray:
    """(vocab,) bool: tokens that continue the previous token's word — WordPiece's '##' pieces (BERT, MiniLM);
    whole-word masking reads it. A tokenizer of another model type is a TokenizerError (its pieces do not
    say where words start in a way read here)."""
    model = json.loads(self.content).get('model', {})
    if model.get('type') != 'WordPiece':
      raise TokenizerError(f'whole-word masking needs a WordPiece or SentencePiece tokenizer, this one is '
                           f'{model.get("type")!r}')
    prefix = model.get('continuing_subword_prefix') or '##'
    out = np.zeros(self.vocab_size, bool)
    for token, i in self._tokenizer.get_vocab(with_added_tokens=False).items():
      out[i] = token.startswith(prefix)
    return out

  @property
  def mask_id(self) -> int:
    """Id of BERT's [MASK] token (the masked-LM objective's replacement token)."""
    i = self.token_to_id(MASK_TOKEN)
    if i is None:
      raise TokenizerError(f'tokenizer has no mask token {MASK_TOKEN!r}')
    return int(i)

  @property
  def special_ids(self) -> tuple[int, ...]:
    """Ids never selected for masking nor used as random replacements: padding, every special added token
    ([CLS] [SEP] [UNK] [MASK] for BERT), the model's unknown token and [MASK] even if not marked special."""
    if '_special_ids' not in self.__dict__:   # built once (parses the JSON): a private cache like `_load`'s
      ids = {self.pad_id}
      ids.update(i for i, t in self._tokenizer.get_added_tokens_decoder().items() if t.special)
      unk = json.loads(self.content).get('model', {}).get('unk_token')
      for token in (unk, MASK_TOKEN):
        i = self.token_to_id(token) if isinstance(token, str) else None
        if i is not None:
          ids.add(i)
      self.__dict__['_special_ids'] = tuple(sorted(int(i) for i in ids))
    return self.__dict__['_special_ids']

  def encode(self, texts: Sequence[str], *, max_len: int) -> np.ndarray:
    """(len(texts), T) int32 token ids, T = the longest encoding (≤ `max_len`), padded with `pad_id`."""
    if max_len < 2:
      raise TokenizerError(f'max_len={max_len}: must leave room for the special tokens')
    if isinstance(texts, str):
      raise TokenizerError('encode takes a sequence of texts, got one str')
    encodings = self._load(max_len).encode_batch(list(texts))
    t = max((len(e.ids) for e in encodings), default=0)
    out = np.full((len(encodings), t), self.pad_id, np.int32)
    for i, e in enumerate(encodings):
      out[i, :len(e.ids)] = e.ids
    return out

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` without special tokens (padding included)."""
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def from_meta(meta: dict[str, Any]) -> Tokenizer | SentencePieceTokenizer:
  """The tokenizer of either kind stored by `to_meta` in a checkpoint's meta: a `Tokenizer`
  ('huggingface-tokenizers') or a `sentencepiece.SentencePieceTokenizer` ('sentencepiece')."""
  from jaxtransfer.text import sentencepiece   # (imports this module: not at the top)

  kinds = {KIND: Tokenizer, sentencepiece.KIND: sentencepiece.SentencePieceTokenizer}
  kind = meta.get('kind') if isinstance(meta, dict) else None
  if kind not in kinds:
    raise TokenizerError(f'checkpoint meta tokenizer: unknown kind {kind!r} (known: {", ".join(kinds)})')
  return kinds[kind].from_meta(meta)


def check_same(stored: dict[str, Any] | None, wanted: Tokenizer | SentencePieceTokenizer, where: str) -> None:
  """Raise TokenizerError unless the checkpoint's meta tokenizer `stored` is `wanted` (a `Tokenizer` or a
  `SentencePieceTokenizer`): a fine-tune must tokenize with its checkpoint's own tokenizer."""
  if stored is None:
    raise TokenizerError(f'{where}: the checkpoint holds no tokenizer')
  have_tok = from_meta(stored)
  if have_tok.kind != wanted.kind:
    raise TokenizerError(f'{where}: tokenizer kind {wanted.kind!r} differs from the checkpoint\'s {have_tok.kind!r}')
  have = have_tok.fingerprint
  if have != wanted.fingerprint:
    raise TokenizerError(f'{where}: tokenizer sha256 {wanted.fingerprint[:12]} differs from the checkpoint\'s '
                         f'{have[:12]}')

