"""A SentencePiece tokenizer trained on your pretraining corpus, travelling with the checkpoint like `Tokenizer`.

    tok = train_sentencepiece(paragraphs, vocab_size=8000, seed=0)   # in memory, deterministic
    ids = tok.encode(['a sentence', 'another one'], max_len=64)     # (2, T) int32: [CLS] pieces [SEP], [PAD]…
    meta['tokenizer'] = tok.to_meta()                               # the serialized model proto, base64
    same = tokenizer.from_meta(meta['tokenizer'])                   # dispatches on meta['kind']

Why SentencePiece: it is what the JAX ecosystem trains its own vocabularies with (t5x, big_vision), it needs
no pre-tokeniser (whitespace is a piece, '▁'), and its model is one self-contained proto (normaliser
included), so its sha256 identifies the tokenizer exactly. Reserved ids, the same roles as BERT's:
[PAD] 0 (the encoder's default padding id), [UNK] 1, [CLS] 2 (bos), [SEP] 3 (eos), [MASK] 4 (a
user-defined piece, so a literal '[MASK]' in text is the mask token, as with BERT's tokenizer). `encode`
wraps each text as [CLS] + pieces + [SEP] — pooling 'cls' reads position 0 — truncates the pieces so that
[SEP] is kept, and pads to the longest in the batch with [PAD], exactly like `Tokenizer.encode`.

Determinism (`train_sentencepiece`): the texts are sorted first (the caller's order never matters), an
optional subsample is drawn with `seed`, the trainer runs on one thread with input shuffling off and reads
every given sentence, and SentencePiece's own generator is seeded — the same corpus gives a byte-identical
model (tested). Nothing is written to disk: the sentences go in through `sentence_iterator` and the model
comes out through `model_writer` into memory.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from jaxtransfer.text.tokenizer import TokenizerError

KIND = 'sentencepiece'
PAD, UNK, BOS, EOS, MASK = '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'
MAX_SENTENCE_BYTES = 1 << 16   # SentencePiece skips longer sentences (its default, 4192, would drop paragraphs)


@dataclasses.dataclass(frozen=True)
class SentencePieceTokenizer:
  """A serialized SentencePiece model proto (see the module docstring); same interface as `Tokenizer`."""
  model: bytes
  kind: ClassVar[str] = KIND

  @classmethod
  def from_model(cls, model: bytes) -> SentencePieceTokenizer:
    tok = cls(bytes(model))
    tok._processor  # noqa: B018  (validates the proto and its reserved pieces now, not at the first batch)
    return tok

  @classmethod
  def from_meta(cls, meta: dict[str, Any]) -> SentencePieceTokenizer:
    """The tokenizer stored by `to_meta` in a checkpoint's meta (its sha256 checked when present)."""
    if not isinstance(meta, dict) or meta.get('kind') != KIND or not isinstance(meta.get('model'), str):
      raise TokenizerError(f'checkpoint meta tokenizer: expected {{"kind": "{KIND}", "model": <base64>, …}}, '
                           f'got {str(meta)[:80]!r}')
    try:
      model = base64.b64decode(meta['model'], validate=True)
    except (binascii.Error, ValueError):
      raise TokenizerError('checkpoint meta tokenizer: "model" is not base64') from None
    tok = cls.from_model(model)
    if 'sha256' in meta and meta['sha256'] != tok.fingerprint:
      raise TokenizerError(f'checkpoint meta tokenizer: model sha256 {tok.fingerprint[:12]} differs from the '
                           f'recorded {str(meta["sha256"])[:12]} (damaged meta)')
    return tok

  def to_meta(self) -> dict[str, Any]:
    """A JSON-serialisable description for a checkpoint's meta (the whole model and its fingerprint)."""
    return {'kind': KIND, 'model': base64.b64encode(self.model).decode('ascii'), 'sha256': self.fingerprint}

  @property
  def fingerprint(self) -> str:
    """sha256 of the serialized model proto: two tokenizers are the same iff their fingerprints are."""
    return hashlib.sha256(self.model).hexdigest()

  @property
  def _processor(self) -> Any:
    """The `SentencePieceProcessor`, built once (a private cache beside the frozen dataclass's field)."""
    cache = self.__dict__
    if '_sp' not in cache:
      import sentencepiece as spm

      sp = spm.SentencePieceProcessor()
      try:
        sp.LoadFromSerializedProto(self.model)
      except (RuntimeError, OSError, TypeError) as e:
        raise TokenizerError(f'not a SentencePiece model ({type(e).__name__}: {str(e)[:100]})') from None
      missing = [name for name, i in (('pad', sp.pad_id()), ('bos', sp.bos_id()), ('eos', sp.eos_id())) if i < 0]
      if missing:
        raise TokenizerError(f'SentencePiece model has no {"/".join(missing)} piece (train it with '
                             'train_sentencepiece, which reserves [PAD] [UNK] [CLS] [SEP] [MASK])')
      cache['_sp'] = sp
    return cache['_sp']

  @property
  def pad_id(self) -> int:
    return int(self._processor.pad_id())

  @property
  def vocab_size(self) -> int:
    return int(self._processor.get_piece_size())

  @property
  def mask_id(self) -> int:
    """Id of the user-defined [MASK] piece (the masked-LM objective's replacement token)."""
    i = self.token_to_id(MASK)
    if i is None:
      raise TokenizerError(f'SentencePiece model has no {MASK} piece')
    return i

  @property
  def special_ids(self) -> tuple[int, ...]:
    """Ids never selected for masking nor used as random replacements: pad, unk, bos, eos, mask."""
    sp = self._processor
    ids = {sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()}
    if self.token_to_id(MASK) is not None:
      ids.add(self.mask_id)
    return tuple(sorted(int(i) for i in ids if i >= 0))

  def continues_word(self) -> np.ndarray:
    """(vocab,) bool: pieces that continue the previous piece's word — an ordinary piece that does not start
    with SentencePiece's word boundary '▁' and starts with a letter or digit (punctuation such as ',' after a
    word is a word of its own, as BERT's tokenizer splits it); whole-word masking reads it."""
    sp = self._processor
    out = np.zeros(sp.get_piece_size(), bool)
    special = set(self.special_ids)
    for i in range(len(out)):
      if i in special or sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i):
        continue
      piece = sp.id_to_piece(i)
      out[i] = not piece.startswith('\u2581') and piece[:1].isalnum()
    return out

  def token_to_id(self, token: str) -> int | None:
    sp = self._processor
    i = int(sp.piece_to_id(token))
    return None if i == sp.unk_id() and token != sp.id_to_piece(i) else i   # unknown pieces map to unk

  def encode(self, texts: Sequence[str], *, max_len: int) -> np.ndarray:
    """(len(texts), T) int32: [CLS] pieces [SEP] per text, T = the longest (≤ `max_len`), padded with `pad_id`;
    a long text keeps its first max_len − 2 pieces and its [SEP]."""
    if max_len < 2:
      raise TokenizerError(f'max_len={max_len}: must leave room for the special tokens')
    if isinstance(texts, str):
      raise TokenizerError('encode takes a sequence of texts, got one str')
    sp = self._processor
    pieces = sp.encode(list(texts), out_type=int) if len(texts) else []
    rows = [[sp.bos_id(), *p[:max_len - 2], sp.eos_id()] for p in pieces]
    t = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), t), self.pad_id, np.int32)
    for i, r in enumerate(rows):
      out[i, :len(r)] = r
    return out

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` without special tokens (padding included)."""
    special = set(self.special_ids)
    return self._processor.decode([int(i) for i in ids if int(i) not in special])


def train_sentencepiece(texts: Iterable[str], vocab_size: int, *, seed: int = 0, model_type: str = 'unigram',
                        character_coverage: float = 0.9995, byte_fallback: bool = False,
                        max_sentences: int | None = None) -> SentencePieceTokenizer:
  """A SentencePiece model of `vocab_size` pieces (the five reserved ones included) trained in memory on
  `texts` (empty ones skipped), deterministically: the same texts in any order give the same model.

  `max_sentences`: train on a seeded random subset of that many texts (None: all of them) — the only
  randomness besides SentencePiece's own generator, both drawn from `seed`. `byte_fallback` spells characters
  outside the vocabulary as UTF-8 bytes instead of [UNK] (costs 256 ids).
  """
  import sentencepiece as spm

  corpus = sorted(t for t in texts if t and t.strip())
  if not corpus:
    raise TokenizerError('train_sentencepiece: no non-empty texts to train on')
  if max_sentences is not None and len(corpus) > max_sentences:
    keep = np.random.default_rng(seed).choice(len(corpus), max_sentences, replace=False)
    corpus = [corpus[i] for i in np.sort(keep)]
  if model_type not in ('unigram', 'bpe'):
    raise TokenizerError(f'train_sentencepiece: model_type must be unigram or bpe, got {model_type!r}')
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
        user_defined_symbols=[MASK], character_coverage=character_coverage, byte_fallback=byte_fallback,
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
        max_sentence_length=MAX_SENTENCE_BYTES, minloglevel=2)
  except RuntimeError as e:   # e.g. 'Vocabulary size too high (8000). Please set it to a value <= 1234.'
    raise TokenizerError(f'train_sentencepiece: {str(e).strip().splitlines()[-1][:200]}') from None
  return SentencePieceTokenizer.from_model(model.getvalue())
