"""Text runs through THE training loop: tokenized batches padded to buckets, BERT masking inside the step,
the masked-LM objective's loss and metrics, the tokenizer travelling in checkpoints, and fine-tuning from an
MLM checkpoint with the MLM head dropped."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('tokenizers', reason='the `text` extra (tokenizers) is not installed')

from jaxtransfer import checkpoint, config as config_lib, errors, train  # noqa: E402
from jaxtransfer.data import catalog, pipeline  # noqa: E402
from jaxtransfer.objectives import mlm  # noqa: E402
from jaxtransfer.text import inputs as text_inputs  # noqa: E402
from jaxtransfer.text import tokenizer as tokenizer_lib  # noqa: E402

POS = ['great phone and good battery', 'i love this product a lot', 'works well very happy with it',
       'excellent sound and nice screen', 'good value would buy again', 'the best case i have owned']
NEG = ['bad battery and poor sound', 'i hate this broken product', 'does not work very unhappy',
       'terrible screen and awful case', 'poor value would not buy', 'the worst phone i have owned']
SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']


def word_tokenizer(texts) -> tokenizer_lib.Tokenizer:
  """A tiny WordLevel tokenizer with BERT's special tokens and [CLS] … [SEP] template."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.WordLevel(unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(sorted(texts), trainers.WordLevelTrainer(special_tokens=SPECIALS))
  tok.post_processor = processors.TemplateProcessing(single='[CLS] $A [SEP]',
                                                     special_tokens=[('[CLS]', 2), ('[SEP]', 3)])
  return tokenizer_lib.Tokenizer.from_json(tok.to_str())


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """A labelled TSV (textfile:) of 12 × 8 review sentences and its tokenizer.json."""
  d = tmp_path_factory.mktemp('text')
  rng = np.random.default_rng(0)
  lines = []
  for i in range(8):
    for s, label in [(t, 'pos') for t in POS] + [(t, 'neg') for t in NEG]:
      words = s.split()
      rng.shuffle(words)
      lines.append(f'{" ".join(words[:3 + i % 4]) if i else s}\t{label}')
  path = d / 'reviews.tsv'
  path.write_text('\n'.join(lines) + '\n')
  tok = word_tokenizer(POS + NEG)
  (d / 'tokenizer.json').write_text(tok.content)
  return {'data': f'textfile:{path}', 'tokenizer': str(d / 'tokenizer.json'), 'data_dir': str(d / 'tfds'), 'tok': tok}


@pytest.fixture(scope='module')
def templates(tmp_path_factory, corpus):
  """The 12 sentences, 8 copies each: a masked word is predictable from the rest of its sentence."""
  d = tmp_path_factory.mktemp('templates')
  path = d / 'templates.tsv'
  path.write_text(''.join(f'{t}\t{label}\n' for _ in range(8) for ts, label in ((POS, 'pos'), (NEG, 'neg')) for t in ts))
  return {**corpus, 'data': f'textfile:{path}', 'data_dir': str(d / 'tfds')}


def mlm_config(corpus, **over):
  c = config_lib.base()
  c.data, c.objective = corpus['data'], 'mlm'
  c.input.data_dir = corpus['data_dir']
  c.text.tokenizer, c.text.max_len, c.text.buckets = corpus['tokenizer'], 16, (8, 16)
  c.model.backbone = {'name': 'transformer', 'num_layers': 2, 'width': 32, 'num_heads': 2, 'mlp_dim': 64,
                      'vocab_size': 0, 'max_len': 16}
  c.train.steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = 6, 8, 3, 3
  c.optim.lr = 3e-3
  for k, v in over.items():
    target = c
    *path, last = k.split('.')
    for p in path:
      target = target[p]
    target[last] = v
  return c


def test_batches_are_padded_per_batch_to_the_smallest_bucket(corpus):
  tok = corpus['tok']
  ti = text_inputs.TextInputs(tok, max_len=16, buckets=(4, 8))
  assert ti.buckets == (4, 8, 16)                       # max_len is always the last bucket
  short = ti.tokens([b'good phone', 'bad'])              # [CLS] good phone [SEP] → 4
  assert short.shape == (2, 4) and short.dtype == np.int32
  assert list(short[1]) == [tok.token_to_id('[CLS]'), tok.token_to_id('bad'), tok.token_to_id('[SEP]'), tok.pad_id]
  longer = ti.tokens([' '.join(['good'] * 5)])           # 7 tokens → bucket 8
  assert longer.shape == (1, 8)
  very_long = ti.tokens([' '.join(['good'] * 40)])       # truncated at max_len, [SEP] kept
  assert very_long.shape == (1, 16) and very_long[0, -1] == tok.token_to_id('[SEP]')
  source = catalog.load(corpus['data'], 'train', data_dir=corpus['data_dir'])
  for batch in pipeline.eval_batches(source, batch_size=16, preprocess=ti):
    assert set(batch) >= {'tokens', 'label', 'mask'} and 'text' not in batch
    assert batch['tokens'].shape[1] in ti.buckets
    # padding rows (mask 0) hold no ordinary token: an MLM evaluation selects nothing there
    assert set(np.unique(batch['tokens'][batch['mask'] == 0]).tolist()) <= set(tok.special_ids)


def test_group_by_length_deals_like_lengths_and_keeps_epochs_resume_and_host_slices(corpus):
  """text.group_by_length=G: each window of G batches holds exactly the examples the ungrouped stream draws
  for those steps (so epochs are unchanged), re-cut by token count — the batches' count ranges do not
  overlap, and they pad shorter than uniform draws; resumed and per-host streams are the same stream."""
  rng = np.random.default_rng(1)
  words = sorted({w for t in POS + NEG for w in t.split()})
  source = [{'text': ' '.join(rng.choice(words, int(n))).encode(), 'label': i}
            for i, n in enumerate(rng.integers(1, 15, 100))]
  ti = text_inputs.TextInputs(corpus['tok'], max_len=16, buckets=(4, 8, 12))
  counts = ti.token_counts([ex['text'] for ex in source])
  assert counts.tolist() == [min(len(ex['text'].split()) + 2, 16) for ex in source]
  g, b, steps = 5, 8, 30                                  # 240 rows: a window crosses an epoch boundary
  draw = lambda group, **kw: pipeline.train_batches(source, batch_size=b, seed=2, preprocess=ti, group_by_length=group, **kw)
  it, plain_it = draw(g), draw(0)
  grouped, plain = [next(it) for _ in range(steps)], [next(plain_it) for _ in range(steps)]
  labels = lambda batch: batch['label'].tolist()
  for w in range(steps // g):
    window = grouped[w * g:(w + 1) * g]
    assert sorted(sum(map(labels, window), [])) == sorted(sum(map(labels, plain[w * g:(w + 1) * g]), []))
    ranges = sorted((counts[labels(x)].min(), counts[labels(x)].max()) for x in window)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:])), ranges
    # each batch pads to the bucket of its own longest text
    assert all(x['tokens'].shape[1] == ti.length(counts[labels(x)].max()) for x in window)
  longest = [[counts[labels(x)].max() for x in grouped[w * g:(w + 1) * g]] for w in range(steps // g)]
  assert any(m != sorted(m) for m in longest)           # dealt in shuffled order, not shortest first
  assert np.mean([x['tokens'].shape[1] for x in grouped]) < np.mean([x['tokens'].shape[1] for x in plain])
  for start in (3, 7, 12):
    resumed = draw(g, start_step=start)
    assert all(labels(next(resumed)) == labels(grouped[t]) for t in range(start, steps))
  halves = [draw(g, process_index=p, process_count=2) for p in (0, 1)]
  for t in range(steps):
    assert labels(next(halves[0])) + labels(next(halves[1])) == labels(grouped[t])
  images = [{'image': np.zeros((2, 2, 1), np.uint8), 'label': 0}] * 4
  with pytest.raises(errors.ConfigError, match='group_by_length=5 needs a text dataset'):
    pipeline.train_batches(images, batch_size=2, seed=0, group_by_length=5)
  with pytest.raises(errors.ConfigError, match='group_by_length=-1'):
    draw(-1)


def test_text_batches_without_a_tokenizer_are_a_one_line_error(corpus):
  source = catalog.load(corpus['data'], 'train', data_dir=corpus['data_dir'])
  with pytest.raises(errors.DataError, match='needs a tokenizer'):
    next(pipeline.eval_batches(source, batch_size=4))


def _mask(tokens, key, vocab=50, special=(0, 1, 2, 3, 4)):
  return jax.jit(lambda t, k: mlm.select_and_corrupt(t, k, mask_rate=0.15, mask_token=0.8, random_token=0.1, mask_id=4,
                                                     special_ids=special, vocab_size=vocab))(tokens, key)


def test_masking_statistics_and_padding_never_selected():
  vocab = 50
  rng = np.random.default_rng(0)
  tokens = rng.integers(5, vocab, (256, 64)).astype(np.int32)
  lengths = rng.integers(10, 64, 256)
  tokens[np.arange(64)[None, :] >= lengths[:, None]] = 0        # padding
  tokens[:, 0] = 2                                               # [CLS]
  tokens[0] = 0                                                  # a row of padding only
  corrupted, positions, valid = (np.asarray(x) for x in _mask(tokens, jax.random.key(1)))
  assert positions.shape == valid.shape == (256, 10)             # K = ceil(0.15 · 64)
  selected = np.zeros(tokens.shape, bool)
  for i in range(256):
    selected[i, positions[i][valid[i]]] = True
    assert len(set(positions[i][valid[i]])) == valid[i].sum()    # distinct positions
  eligible = (tokens != 0) & (tokens != 2)
  assert not selected[~eligible].any()                           # padding and [CLS] are never selected
  assert not valid[0].any()                                      # nothing to predict in a row of padding
  # Exactly round(15 % of its real tokens) per row (≥ 1), as BERT's data pipeline does.
  np.testing.assert_array_equal(selected.sum(1)[1:], np.clip(np.round(0.15 * eligible.sum(1)[1:]), 1, 10))
  assert abs(selected.sum() / eligible.sum() - 0.15) < 0.01
  assert np.all(corrupted[~selected] == tokens[~selected])       # unselected tokens are untouched
  sel_orig, sel_new = tokens[selected], corrupted[selected]
  to_mask, same = np.mean(sel_new == 4), np.mean(sel_new == sel_orig)
  assert abs(to_mask - 0.8) < 0.03 and 0.07 < same < 0.14, (to_mask, same)
  replaced = sel_new[(sel_new != 4) & (sel_new != sel_orig)]
  assert len(replaced) and np.all(replaced >= 5) and np.all(replaced < vocab)   # random tokens are ordinary
  # The same key draws the same mask; another key another one.
  assert np.array_equal(np.asarray(_mask(tokens, jax.random.key(1))[1]), positions)
  assert not np.array_equal(np.asarray(_mask(tokens, jax.random.key(2))[1]), positions)


def _words(row, continues):
  """The words of a token row as lists of positions: an eligible token (id ≥ 5) and the eligible tokens right
  after it whose id `continues` a word."""
  words = []
  for p, tok in enumerate(row):
    if tok < 5:
      continue
    if words and continues[tok] and words[-1][-1] == p - 1:
      words[-1].append(p)
    else:
      words.append([p])
  return words


def test_whole_word_masking_selects_all_of_a_word_or_none_of_it():
  """`continues_word`: each row's selected pieces are whole words, at most round(15 %) of its real pieces and
  nearly that many; padding and specials never; each piece still replaced 80 / 10 / 10 on its own; a table
  without continuations selects exactly what token-level masking counts."""
  vocab = 50
  continues = np.zeros(vocab, bool)
  continues[30:] = True                                          # ids 30–49 continue the previous piece's word
  rng = np.random.default_rng(0)
  tokens = rng.integers(5, vocab, (512, 64)).astype(np.int32)
  lengths = rng.integers(10, 64, 512)
  tokens[np.arange(64)[None, :] >= lengths[:, None]] = 0
  tokens[:, 0] = 2
  tokens[5, 1:] = 30                                             # one 63-piece word: longer than K, never fits
  mask = jax.jit(lambda t, k, c: mlm.select_and_corrupt(t, k, mask_rate=0.15, mask_token=0.8, random_token=0.1,
                                                        mask_id=4, special_ids=(0, 1, 2, 3, 4), vocab_size=vocab,
                                                        continues_word=c))
  corrupted, positions, valid = (np.asarray(x) for x in mask(tokens, jax.random.key(1), continues))
  eligible = tokens >= 5
  n = np.clip(np.round(0.15 * eligible.sum(1)), 1, 10)
  selected = np.zeros(tokens.shape, bool)
  count = {True: 0, False: 0}
  chosen_words = {True: 0, False: 0}
  for i in range(512):
    chosen = positions[i][valid[i]]
    assert len(set(chosen)) == len(chosen)
    selected[i, chosen] = True
    for w in _words(tokens[i], continues):
      assert selected[i, w].all() or not selected[i, w].any(), (i, w)   # a whole word or nothing
      count[len(w) > 1] += 1
      chosen_words[len(w) > 1] += bool(selected[i, w[0]])
  assert not selected[~eligible].any() and not selected[5].any()
  assert np.all(selected.sum(1) <= n)
  assert 0.13 < selected.sum() / eligible.sum() <= 0.15        # words that do not fit are skipped, others tried
  multi_rate, single_rate = (chosen_words[m] / count[m] for m in (True, False))
  assert 0.5 * single_rate < multi_rate < single_rate, (multi_rate, single_rate)   # fewer fit, but they do get in
  assert np.all(corrupted[~selected] == tokens[~selected])
  to_mask = np.mean(corrupted[selected] == 4)
  assert abs(to_mask - 0.8) < 0.03
  # no continuation pieces: every word is one piece, and the count is token-level masking's exactly
  _, positions0, valid0 = (np.asarray(x) for x in mask(tokens, jax.random.key(1), np.zeros(vocab, bool)))
  np.testing.assert_array_equal(valid0.sum(1), n * eligible.any(1))
  assert not np.array_equal(np.asarray(mask(tokens, jax.random.key(2), continues)[1]), positions)


def test_whole_word_masking_reads_the_tokenizers_word_table(corpus):
  """`mlm.whole_word` binds the tokenizer's `continues_word()` table; a tokenizer that has none is one line."""
  c = config_lib.base()
  c.mlm.whole_word = True
  objective = mlm.from_config(c)
  with pytest.raises(tokenizer_lib.TokenizerError, match='needs a WordPiece or SentencePiece tokenizer'):
    objective.for_tokenizer(corpus['tok'])
  from jaxtransfer.text.sentencepiece import train_sentencepiece
  sp = train_sentencepiece(POS + NEG, vocab_size=60, seed=0)
  bound = objective.for_tokenizer(sp)
  np.testing.assert_array_equal(bound.continues_word, sp.continues_word())
  assert mlm.from_config(config_lib.base()).for_tokenizer(sp).continues_word is None


def test_unselected_positions_get_exactly_zero_loss_and_gradient():
  """The loss reaches the encoder's outputs only at the selected positions: its gradient with respect to every
  other position's output is exactly zero, and the per-position losses of invalid entries are 0."""
  from jaxtransfer.models import heads
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(5, 50, (3, 20)), jnp.int32)
  _, positions, valid = _mask(tokens, jax.random.key(0))
  head = heads.MLMHead(50)
  seq = jnp.asarray(rng.normal(size=(3, 20, 16)), jnp.float32)
  hv = head.init(jax.random.key(1), seq)

  def loss(s):
    logits = head.apply(hv, jnp.take_along_axis(s, positions[..., None], axis=1))
    nll, _ = mlm.masked_losses(logits, jnp.take_along_axis(tokens, positions, axis=1), valid)
    return jnp.sum(nll)

  grad = np.asarray(jax.grad(loss)(seq))
  selected = np.zeros((3, 20), bool)
  for i in range(3):
    selected[i, np.asarray(positions)[i][np.asarray(valid)[i]]] = True
  assert selected.sum() == 9                                     # round(0.15 · 20) = 3 per row
  assert np.all(grad[~selected] == 0) and np.all(np.abs(grad[selected]).sum(-1) > 0)
  logits = jnp.zeros((3, positions.shape[1], 50))
  nll, correct = mlm.masked_losses(logits, jnp.take_along_axis(tokens, positions, axis=1), valid & False)
  assert float(jnp.sum(nll)) == 0.0 and float(jnp.sum(correct)) == 0.0


def test_a_constant_loss_normalizing_factor_weighs_every_masked_token_alike():
  """`mlm.loss_normalizing_factor` N > 0: the gradient is the masked tokens' summed loss over N — the per-batch
  mean's gradient × count / N, so a token of a batch with few masked tokens weighs what one of a full batch
  does; 0 keeps the mean. The reported loss and accuracy are the per-token means either way, and a negative N
  is a one-line ConfigError."""
  from jaxtransfer import objectives
  from jaxtransfer.models import model as model_lib
  backbone = {'name': 'transformer', 'num_layers': 1, 'width': 16, 'num_heads': 2, 'mlp_dim': 32,
              'vocab_size': 50, 'max_len': 24, 'dropout': 0.0}
  model = model_lib.build({'backbone': backbone, 'head': {'name': 'mlm', 'num_outputs': 50, 'hidden': 0}})
  params = model_lib.init(model, jax.random.key(0), (24,))['params']
  fwd = objectives.Forward(model, {}, (), {})
  bind = dict(mask_id=4, special_ids=(0, 1, 2, 3, 4), vocab_size=50)
  mean, fixed = mlm.MaskedLM(**bind), mlm.MaskedLM(loss_normalizing_factor=7.0, **bind)
  rng = np.random.default_rng(0)
  for length in (8, 24):                                  # 1 and 3 masked tokens a row: counts 4 and 12
    batch = {'tokens': jnp.asarray(rng.integers(5, 50, (4, length)), jnp.int32)}
    g_mean, _, _, m_mean = jax.jit(lambda k: mean.grads(fwd, params, {}, batch, k))(jax.random.key(1))
    g_fixed, _, _, m_fixed = jax.jit(lambda k: fixed.grads(fwd, params, {}, batch, k))(jax.random.key(1))
    count = float(m_mean['masked_tokens'])
    assert count == 4 * round(0.15 * length) and m_fixed['masked_tokens'] == count
    for a, b in zip(jax.tree_util.tree_leaves(g_mean), jax.tree_util.tree_leaves(g_fixed)):
      np.testing.assert_allclose(np.asarray(a) * count / 7.0, b, rtol=1e-4, atol=1e-5)
    assert float(m_fixed['loss']) == float(m_mean['loss']) and float(m_fixed['masked_accuracy']) == float(
        m_mean['masked_accuracy'])
  c = config_lib.base()
  c.mlm.loss_normalizing_factor = 700.0
  assert mlm.from_config(c).loss_normalizing_factor == 700.0
  c.mlm.loss_normalizing_factor = -1.0
  with pytest.raises(errors.ConfigError, match='mlm.loss_normalizing_factor'):
    config_lib.validate(c)


def test_masked_accuracy_counts_the_argmax_hits_of_valid_positions_only():
  """`correct` (the target's logit is the only largest) equals argmax == target at valid positions, 0 elsewhere;
  a tie counts as wrong (constant logits must not read as 100 % accuracy)."""
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.normal(size=(4, 6, 30)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 30, (4, 6)), jnp.int32)
  targets = targets.at[:2].set(jnp.argmax(logits[:2], -1))          # rows 0–1 all right, rows 2–3 mostly wrong
  valid = jnp.asarray(rng.random((4, 6)) < 0.7)
  nll, correct = mlm.masked_losses(logits, targets, valid)
  expected = (np.argmax(np.asarray(logits), -1) == np.asarray(targets)) & np.asarray(valid)
  assert np.array_equal(np.asarray(correct), expected.astype(np.float32))
  assert 0 < expected.sum() < np.asarray(valid).sum()
  _, tied = mlm.masked_losses(jnp.zeros((4, 6, 30)), jnp.zeros((4, 6), jnp.int32), valid)   # argmax would say 0 = right
  assert not np.any(np.asarray(tied))
  ref = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(nll), np.where(np.asarray(valid), ref, 0.0), rtol=1e-5, atol=1e-6)


def test_mlm_pretraining_learns_saves_its_tokenizer_and_resumes_bit_identically(corpus, tmp_path):
  c = mlm_config(corpus)
  full = train.train(c, str(tmp_path / 'full'))
  assert set(full.metrics) >= {'masked_accuracy', 'perplexity', 'loss', 'masked_tokens'}
  assert full.metrics['masked_tokens'] > 0 and np.isfinite(full.metrics['perplexity'])
  # The tokenizer and the fitted vocabulary are in the checkpoint's meta.
  mngr, step = checkpoint.open_for_reading(str(tmp_path / 'full'))
  meta = checkpoint.read_meta(mngr, step)
  assert tokenizer_lib.from_meta(meta['tokenizer']).fingerprint == corpus['tok'].fingerprint
  assert meta['model_spec']['backbone']['vocab_size'] == corpus['tok'].vocab_size
  assert meta['model_spec']['head'] == {'name': 'mlm', 'num_outputs': corpus['tok'].vocab_size, 'hidden': 0}
  # Preempted after 3 steps and resumed: the same final parameters (masking drawn from the step key).
  train.train(c, str(tmp_path / 'split'), stop_after=3)
  resumed = train.train(c, str(tmp_path / 'split'))
  assert resumed.init == 'resume'
  for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  lines = [json.loads(x) for x in open(tmp_path / 'full' / 'metrics.jsonl')]
  assert any('train/masked_accuracy' in x for x in lines) and any('eval/perplexity' in x for x in lines)


def test_mlm_learns_to_fill_in_masked_words(templates, tmp_path):
  over = {'train.steps': 200, 'train.checkpoint_every': 200, 'optim.lr': 3e-3, 'input.eval_split': 'train'}
  start = train.train(mlm_config(templates, **{**over, 'train.steps': 1}), str(tmp_path / 'one')).metrics
  end = train.train(mlm_config(templates, **over), str(tmp_path / 'long')).metrics
  assert end['masked_tokens'] > 50
  assert end['loss'] < start['loss'] - 1.5, (start, end)
  assert end['masked_accuracy'] > 0.5 > start['masked_accuracy'], (start, end)


def test_finetune_from_mlm_drops_its_head_and_keeps_its_tokenizer(corpus, tmp_path):
  pre = str(tmp_path / 'pre')
  train.train(mlm_config(corpus), pre)
  c = mlm_config(corpus, objective='classification')
  c.model.backbone, c.transfer.init_from, c.text.tokenizer = None, pre, ''
  c.trainable = 'last:1'
  out = train.train(c, str(tmp_path / 'ft'))
  assert out.init == 'init_from' and 0.0 <= out.metrics['accuracy'] <= 1.0
  assert set(out.params['head']) == {'out'} and out.params['head']['out']['kernel'].shape == (32, 2)
  mngr, step = checkpoint.open_for_reading(str(tmp_path / 'ft'))
  assert checkpoint.read_meta(mngr, step)['tokenizer']['sha256'] == corpus['tok'].fingerprint
  # Naming another tokenizer than the checkpoint's is one line.
  other = tmp_path / 'other.json'
  other.write_text(word_tokenizer(POS).content)
  c.text.tokenizer = str(other)
  with pytest.raises(tokenizer_lib.TokenizerError, match='differs from the checkpoint'):
    train.train(c, str(tmp_path / 'ft2'))
  # A from-scratch twin tokenizes exactly like the pretrained encoder ('from:<checkpoint>').
  c.transfer.init_from, c.text.tokenizer = '', f'from:{pre}'
  c.model.backbone, c.trainable = mlm_config(corpus).model.backbone, 'all'
  scratch = train.train(c, str(tmp_path / 'scratch'))
  mngr, step = checkpoint.open_for_reading(str(tmp_path / 'scratch'))
  assert scratch.init == 'scratch' and checkpoint.read_meta(mngr, step)['tokenizer']['sha256'] == corpus['tok'].fingerprint


def test_feature_cache_and_linear_probe_on_a_text_encoder(corpus, tmp_path):
  """features.FeatureCache / linear_probe (what `advise` and the sweeps' head-only cells use) tokenize with the
  checkpoint's tokenizer, and the probe equals the loop's head-only run on cached features."""
  from jaxtransfer import features
  pre = str(tmp_path / 'pre')
  train.train(mlm_config(corpus), pre)
  cache = features.FeatureCache(data_dir=corpus['data_dir'])
  f = cache.get(pre, corpus['data'], 'train')
  assert f.x.shape == (76, 32) and np.isfinite(f.x).all() and set(f.y.tolist()) == {0, 1}
  c = mlm_config(corpus, objective='classification', trainable='head')
  c.model.backbone, c.transfer.init_from, c.text.tokenizer = None, pre, ''
  c.train.steps, c.optim.lr = 30, 1e-2
  probe = features.linear_probe(c, cache=cache)
  run = train.train(c, str(tmp_path / 'head'))
  assert probe['accuracy'] == pytest.approx(run.metrics['accuracy'], abs=1e-6) and probe['count'] == run.metrics['count'] == 20
  np.testing.assert_allclose(probe['loss'], run.metrics['loss'], rtol=1e-4)


def test_a_text_run_without_a_tokenizer_or_with_an_image_backbone_is_one_line(corpus, tmp_path):
  c = mlm_config(corpus)
  c.text.tokenizer = ''
  with pytest.raises(tokenizer_lib.TokenizerError, match='set text.tokenizer'):
    train.train(c, str(tmp_path / 'a'))
  c = mlm_config(corpus, objective='classification')
  c.model.backbone = {'name': 'cnn', 'stages': [8], 'dense': []}
  with pytest.raises(errors.ConfigError, match='needs a token encoder'):
    train.train(c, str(tmp_path / 'b'))
  c = mlm_config(corpus)
  c.model.backbone = {**c.model.backbone, 'vocab_size': 5}
  with pytest.raises(errors.ConfigError, match='smaller than the tokenizer'):
    train.train(c, str(tmp_path / 'c'))
