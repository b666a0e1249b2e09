"""experiments/text_transfer.py without training: each strategy's config, the budgets and seeds it refuses,
and the TF-IDF cell on a small file of its own."""

import os

import pytest

from experiments import text_transfer as T


def test_each_strategy_builds_the_config_it_names(tmp_path):
  a = T.parse([f'--workdir={tmp_path}', '--mlm=/ckpt/mlm', '--minilm=/ckpt/minilm'])
  assert a.budgets == (100, 300, 1000, 0) and a.tune_seeds == (100, 101) and a.seeds == 3
  c = T.make_config('scratch', 300, 2, 1e-3, a=a)
  assert (c.transfer.init_from, c.text.tokenizer, c.trainable) == ('', 'from:/ckpt/mlm', 'all')
  assert c.model.backbone['name'] == 'transformer' and c.model.backbone['vocab_size'] == 0
  assert (c.input.per_class, c.input.subset_seed, c.seed, c.optim.lr) == (150, 2, 2, 1e-3)   # 300 labels = 150/class
  c = T.make_config('mlm head', 0, 0, 1e-2, a=a)
  assert (c.transfer.init_from, c.trainable, c.input.per_class, c.model.backbone) == ('/ckpt/mlm', 'head', 0, None)
  assert T.make_config('minilm lora:8', 100, 0, 1e-3, a=a).trainable == 'lora:8'
  c = T.make_config('minilm llrd', 100, 0, 1e-4, a=a)
  assert (c.transfer.init_from, c.trainable, c.optim.llrd) == ('/ckpt/minilm', 'all', 0.8)
  assert T.make_config('minilm dapt full', 100, 0, 5e-5, a=a).transfer.init_from == os.path.join(str(tmp_path), 'dapt')
  d = T.dapt_config(a)   # the domain-adaptive MLM sees only training sentences
  assert (d.objective, d.input.train_split, d.transfer.init_from) == ('mlm', 'train', '/ckpt/minilm')


@pytest.mark.parametrize('argv, message', [(['--budgets=101'], 'even numbers'), (['--seeds=3', '--tune_seeds=2'], 'overlap'),
                                           (['--strategies=minilm huge'], 'unknown')])
def test_bad_arguments_are_refused(argv, message, capsys):
  with pytest.raises(SystemExit):
    T.parse(argv)
  assert message in capsys.readouterr().err


def test_tfidf_cell_trains_on_the_subset_and_scores_the_evaluation_split(tmp_path):
  pos = ['great phone', 'love it', 'works great', 'very good', 'good value', 'love the screen']
  neg = ['bad phone', 'hate it', 'broken again', 'very bad', 'poor value', 'hate the screen']
  path = tmp_path / 'r.tsv'
  path.write_text(''.join(f'{t} {i}\t{lab}\n' for i in range(5) for ts, lab in ((pos, 'pos'), (neg, 'neg')) for t in ts))
  a = T.parse([f'--workdir={tmp_path}', f'--data_dir={tmp_path / "tfds"}'])
  c = T.tfidf_config(0, 0, a)
  c.data = f'textfile:{path}'
  out = T.tfidf_run(c, str(tmp_path / 'cell'))
  assert out['accuracy'] > 0.8 and out['C'] > 0
  c.input.per_class = 1                 # 1 example per class cannot be cross-validated: a one-line error
  from jaxtransfer import errors
  with pytest.raises(errors.DataError, match='2\\+ training texts'):
    T.tfidf_run(c, str(tmp_path / 'cell'))
