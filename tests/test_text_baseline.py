"""The TF-IDF + logistic regression baseline: learns a keyword rule, stays at chance on random labels, tunes
on the training set only, and on the review sentences (../shared/data) improves with more labels."""

import importlib.util
import os

import numpy as np
import pytest

from jaxtransfer import errors

pytestmark = pytest.mark.skipif(importlib.util.find_spec('sklearn') is None,
                                reason="the text extra is not installed (pip install -e '.[text]')")

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared', 'data')
SHARED = os.environ.get('JAXTRANSFER_SHARED_DATA', os.path.normpath(SHARED))
FILLER = [f'w{i}' for i in range(60)]


def keyword_data(n: int, seed: int) -> tuple[list[str], np.ndarray]:
  """Sentences of 4–10 filler words; label 1 iff the word 'excellent' is inserted somewhere (half of them)."""
  rng = np.random.default_rng(seed)
  texts, labels = [], rng.permutation(np.arange(n) % 2)
  for y in labels:
    words = list(rng.choice(FILLER, rng.integers(4, 11)))
    if y:
      words.insert(int(rng.integers(0, len(words) + 1)), 'excellent')
    texts.append(' '.join(words))
  return texts, labels


def test_learns_a_keyword_rule_exactly():
  from jaxtransfer.text.baseline import C_GRID, tfidf_logistic_regression
  # (TF-IDF gives the keyword, present in half the sentences, the lowest idf of all words: a few hundred
  # sentences are needed before no long sentence drowns it)
  x, y = keyword_data(400, seed=0)
  xt, yt = keyword_data(200, seed=1)
  r = tfidf_logistic_regression(x, y, xt, yt, seed=0)
  assert r['accuracy'] == 1.0 and r['cv_accuracy'] > 0.98
  assert r['C'] in C_GRID and r['min_df'] in (1, 2) and (r['n_train'], r['n_test']) == (400, 200)
  assert r['num_features'] > len(FILLER)          # unigrams and bigrams


def test_random_labels_stay_near_chance():
  from jaxtransfer.text.baseline import tfidf_logistic_regression
  x, _ = keyword_data(160, seed=0)
  xt, _ = keyword_data(200, seed=1)
  rng = np.random.default_rng(5)
  r = tfidf_logistic_regression(x, rng.integers(0, 2, 160), xt, rng.integers(0, 2, 200), seed=0)
  assert 0.35 < r['accuracy'] < 0.65 and 0.3 < r['cv_accuracy'] < 0.7


def test_tuning_never_sees_the_test_set_and_is_deterministic():
  from jaxtransfer.text.baseline import tfidf_logistic_regression
  x, y = keyword_data(60, seed=2)
  noisy = y.copy()
  noisy[::4] ^= 1                                  # a quarter of the labels wrong: the C grid matters
  xt, yt = keyword_data(80, seed=3)
  a = tfidf_logistic_regression(x, noisy, xt, yt, seed=0)
  b = tfidf_logistic_regression([t.encode() for t in x], noisy, xt, 1 - yt, seed=0)   # bytes in, test flipped
  assert {k: a[k] for k in ('C', 'min_df', 'cv_accuracy', 'num_features')} == \
         {k: b[k] for k in ('C', 'min_df', 'cv_accuracy', 'num_features')}
  assert a['accuracy'] + b['accuracy'] == pytest.approx(1.0)           # same predictions, flipped truth
  assert tfidf_logistic_regression(x, noisy, xt, yt, seed=0) == a


def test_bad_inputs_are_one_line_errors():
  from jaxtransfer.text.baseline import tfidf_logistic_regression
  x, y = keyword_data(20, seed=0)
  with pytest.raises(errors.DataError, match='20 train texts but 19 labels'):
    tfidf_logistic_regression(x, y[:-1], x, y, seed=0)
  with pytest.raises(errors.DataError, match=r'2\+ classes with 2\+ training texts each, got counts \{0: 10\}'):
    tfidf_logistic_regression(x[:10], np.zeros(10, int), x, y, seed=0)
  with pytest.raises(errors.DataError, match='one str'):
    tfidf_logistic_regression('one text', [1], x, y, seed=0)
  with pytest.raises(errors.DataError, match='no test texts'):
    tfidf_logistic_regression(x, y, [], [], seed=0)


def test_review_sentences_more_labels_help(data_dir):
  if not os.path.isdir(os.path.join(SHARED, 'sentiment-sentences')):
    pytest.skip(f'../shared/data/sentiment-sentences not found ({SHARED}; set JAXTRANSFER_SHARED_DATA)')
  from jaxtransfer.text.baseline import label_budget_table
  table = label_budget_table('sentiment_sentences/both', budgets=(100, 800), seeds=(0,), manual_dir=SHARED,
                             data_dir=data_dir, c_grid=(1.0, 10.0, 100.0), min_df_grid=(1,), folds=3)
  small, large = table[100][0], table[800][0]
  assert (small['n_train'], large['n_train'], large['n_test']) == (100, 800, 400)
  assert 0.55 < small['accuracy'] < large['accuracy'] and large['accuracy'] > 0.75
