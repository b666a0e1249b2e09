"""The hand-feature baseline for text classification: TF-IDF word 1–2-grams + logistic regression.

    result = tfidf_logistic_regression(train_texts, train_labels, test_texts, test_labels, seed=0)
    result['accuracy'], result['C'], result['min_df']

Why it matters: with little labelled data a pipeline of hand-designed features usually beats end-to-end
learning; a transferred encoder has to beat *this*, honestly tuned, to show that transfer changed that.
scikit-learn does the work (TfidfVectorizer + LogisticRegression; nothing hand-written). Tuning uses the
training set only: C (and min_df, whose best value depends on how many sentences there are — with 100
sentences a bigram seen twice is rare) is chosen by stratified k-fold cross-validation on the training
texts, then the pipeline is refit on all of them and scored once on the test set. The cell with the best
cross-validated accuracy wins; ties (frequent with 100 sentences) go to the lower cross-validated log-loss.

    python -m jaxtransfer.text.baseline --manual_dir=../shared/data   # the label-budget table, 3 seeds
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtransfer import errors

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
MIN_DF_GRID = (1, 2)
FOLDS = 5


def _texts(texts: Sequence[str | bytes], what: str) -> list[str]:
  """str texts (the catalog's text datasets give UTF-8 bytes)."""
  if isinstance(texts, (str, bytes)):
    raise errors.DataError(f'{what}: expected a sequence of texts, got one {type(texts).__name__}')
  return [t.decode('utf-8') if isinstance(t, bytes) else str(t) for t in texts]


def tfidf_logistic_regression(train_texts: Sequence[str | bytes], train_labels: Sequence[int],
                              test_texts: Sequence[str | bytes], test_labels: Sequence[int], *, seed: int,
                              c_grid: Sequence[float] = C_GRID, min_df_grid: Sequence[int] = MIN_DF_GRID,
                              folds: int = FOLDS) -> dict[str, Any]:
  """Fit TF-IDF (word 1–2-grams, sublinear tf) + logistic regression on the training texts, C and min_df
  chosen by `folds`-fold stratified cross-validation on them (split by `seed`), and score the test texts.

  Returns {'accuracy': test accuracy, 'C', 'min_df', 'cv_accuracy' and 'cv_log_loss': the chosen cell's over
  all folds, 'num_features': the refit vocabulary size, 'n_train', 'n_test'}.
  """
  from sklearn.model_selection import StratifiedKFold

  x_train, x_test = _texts(train_texts, 'train_texts'), _texts(test_texts, 'test_texts')
  y_train, y_test = np.asarray(train_labels, np.int64), np.asarray(test_labels, np.int64)
  if len(x_train) != len(y_train) or len(x_test) != len(y_test):
    raise errors.DataError(f'tfidf baseline: {len(x_train)} train texts but {len(y_train)} labels, '
                           f'{len(x_test)} test texts but {len(y_test)} labels')
  classes, counts = np.unique(y_train, return_counts=True)
  if len(classes) < 2 or counts.min() < 2:
    raise errors.DataError(f'tfidf baseline: needs 2+ classes with 2+ training texts each, got counts '
                           f'{dict(zip(classes.tolist(), counts.tolist()))}')
  if not len(x_test):
    raise errors.DataError('tfidf baseline: no test texts')
  cs, min_dfs = sorted(float(c) for c in c_grid), sorted(int(m) for m in min_df_grid)
  # Cross-validation by hand over sklearn's pieces only so that each fold's TF-IDF is fitted once per
  # min_df, not once per (C, min_df) as GridSearchCV's pipeline would (9× fewer vectorisations, same result).
  correct, log_loss = np.zeros((len(cs), len(min_dfs))), np.zeros((len(cs), len(min_dfs)))
  cv = StratifiedKFold(int(min(folds, counts.min())), shuffle=True, random_state=seed)
  for fit_idx, val_idx in cv.split(np.zeros(len(y_train)), y_train):
    for j, min_df in enumerate(min_dfs):
      tfidf = _vectorizer(min_df)
      x_fit = tfidf.fit_transform([x_train[i] for i in fit_idx])
      x_val = tfidf.transform([x_train[i] for i in val_idx])
      for i, c in enumerate(cs):
        clf = _logreg(c, seed).fit(x_fit, y_train[fit_idx])
        proba = clf.predict_proba(x_val)
        truth = np.searchsorted(clf.classes_, y_train[val_idx])
        correct[i, j] += np.sum(clf.classes_[proba.argmax(1)] == y_train[val_idx])
        log_loss[i, j] -= np.sum(np.log(np.clip(proba[np.arange(len(truth)), truth], 1e-15, None)))
  # Best CV accuracy; among equally accurate cells (frequent with 100 sentences) the lowest CV log-loss,
  # then the first in (C, min_df) order.
  best = np.lexsort((log_loss.ravel(), -correct.ravel()))[0]
  i, j = np.unravel_index(best, correct.shape)
  tfidf = _vectorizer(min_dfs[j])
  clf = _logreg(cs[i], seed).fit(tfidf.fit_transform(x_train), y_train)
  return {
      'accuracy': float(np.mean(clf.predict(tfidf.transform(x_test)) == y_test)),
      'C': cs[i], 'min_df': min_dfs[j],
      'cv_accuracy': float(correct[i, j] / len(y_train)), 'cv_log_loss': float(log_loss[i, j] / len(y_train)),
      'num_features': len(tfidf.vocabulary_),
      'n_train': len(x_train), 'n_test': len(x_test),
  }


def _vectorizer(min_df: int) -> Any:
  from sklearn.feature_extraction.text import TfidfVectorizer

  return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, strip_accents='unicode', min_df=min_df)


def _logreg(c: float, seed: int) -> Any:
  from sklearn.linear_model import LogisticRegression

  return LogisticRegression(C=c, solver='liblinear', max_iter=1000, random_state=seed)


def label_budget_table(name: str = 'sentiment_sentences/both', budgets: Sequence[int] = (100, 300, 1000, 1600),
                       seeds: Sequence[int] = (0, 1, 2), *, manual_dir: str | None = None,
                       data_dir: str | None = None, **options: Any) -> dict[int, list[dict[str, Any]]]:
  """{budget: [result per seed]}: the baseline trained on `budget` training sentences (budget/2 per class,
  nested across budgets for one seed: `fewshot.k_per_class_indices`), scored on the whole test split.
  `options` go to `tfidf_logistic_regression` (c_grid, min_df_grid, folds)."""
  from jaxtransfer.data import catalog, fewshot

  train, test = (catalog.load(name, s, data_dir=data_dir, manual_dir=manual_dir) for s in ('train', 'test'))
  train_rows = [train[i] for i in range(len(train))]
  test_rows = [test[i] for i in range(len(test))]
  y = np.asarray([r['label'] for r in train_rows])
  num_classes = int(y.max()) + 1
  out: dict[int, list[dict[str, Any]]] = {}
  for budget in budgets:
    out[budget] = []
    for seed in seeds:
      idx = fewshot.k_per_class_indices(y, budget // num_classes, seed, num_classes=num_classes)
      out[budget].append(tfidf_logistic_regression(
          [train_rows[i]['text'] for i in idx], y[idx], [r['text'] for r in test_rows],
          [r['label'] for r in test_rows], seed=seed, **options))
  return out


def main(argv: Sequence[str] | None = None) -> None:
  import argparse
  import time

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', default='sentiment_sentences/both')
  parser.add_argument('--manual_dir', default=None)
  parser.add_argument('--budgets', default='100,300,1000,1600')
  parser.add_argument('--seeds', default='0,1,2')
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  table = label_budget_table(args.data, [int(b) for b in args.budgets.split(',')],
                             [int(s) for s in args.seeds.split(',')], manual_dir=args.manual_dir)
  print(f'TF-IDF 1-2-gram + logistic regression on {args.data} (test accuracy, mean ± std over seeds)')
  print('| labels | accuracy % | per seed | C per seed | min_df per seed |\n|---|---|---|---|---|')
  for budget, rs in table.items():
    acc = np.array([r['accuracy'] for r in rs]) * 100
    cs, dfs = (' / '.join(f'{r[k]:g}' for r in rs) for k in ('C', 'min_df'))
    print(f'| {budget} | {acc.mean():.1f} ± {acc.std(ddof=1):.1f} | {" / ".join(f"{a:.1f}" for a in acc)} | {cs} | {dfs} |')
  print(f'({time.perf_counter() - t0:.1f} s)')


if __name__ == '__main__':
  main()
