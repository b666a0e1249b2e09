"""Head-only runs train on cached features inside `train.train` (issue #19 item 5), and evaluation batch
sizes come from a memory budget (item 4)."""

import logging

import jax
import numpy as np
import pytest

from jaxtransfer import config as config_lib
from jaxtransfer import errors, evaluation, features, memory, objectives, rules, sharding, train
from jaxtransfer.data import catalog, preprocess
from jaxtransfer.models import model as model_lib

CNN = {'name': 'cnn', 'stages': [4, 8], 'dense': [16]}
CACHE_LINE = 'the frozen backbone runs once per example'
HEAD_TOL = 1e-5     # max |cached head − step-by-step head| after 30 steps (measured ≈ 1e-7)


@pytest.fixture(scope='module')
def pretrained(tiny_glyph_checkpoint):
  """The shared 3-step glyph pretraining of `CNN` (conftest.tiny_glyph_checkpoint)."""
  return tiny_glyph_checkpoint


def head_only(data_dir, init_from, steps=30, **train_keys):
  c = config_lib.finetune(init_from=init_from, trainable='head', per_class=5)
  c.input.data_dir, c.input.eval_split = data_dir, 'test[:200]'
  c.optim.lr = 0.1
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = steps, 16, 6, 10
  c.train.update(train_keys)
  return c


@pytest.fixture(scope='module')
def runs(pretrained, data_dir, tmp_path_factory):
  """{'cached': (workdir, Outcome, log text), 'plain': …}: the same head-only config with and without the cache."""
  out = {}
  handler, logger = _Capture(), logging.getLogger('jaxtransfer')
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    for name, on in (('cached', True), ('plain', False)):
      handler.lines.clear()
      workdir = str(tmp_path_factory.mktemp(f'fca_{name}'))
      outcome = train.train(head_only(data_dir, pretrained, feature_cache=on), workdir)
      out[name] = (workdir, outcome, '\n'.join(handler.lines))
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  return out


class _Capture(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.lines: list[str] = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def test_cached_head_only_run_matches_the_step_by_step_run(runs):
  (_, cached, log_cached), (_, plain, log_plain) = runs['cached'], runs['plain']
  assert f'{CACHE_LINE}: 50 train + 200 eval examples extracted' in log_cached
  assert CACHE_LINE not in log_plain and 'train.feature_cache=False' in log_plain
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
      jax.tree_util.tree_leaves(cached.params['head']), jax.tree_util.tree_leaves(plain.params['head'])))
  assert diff <= HEAD_TOL
  # The backbone did not move (the head did: test_cached_run_resumes_bit_identically).
  assert cached.step == plain.step == 30
  for a, b in zip(jax.tree_util.tree_leaves(cached.params['backbone']),
                  jax.tree_util.tree_leaves(plain.params['backbone'])):
    np.testing.assert_array_equal(a, b)
  assert cached.metrics['accuracy'] == plain.metrics['accuracy']
  assert cached.metrics['count'] == plain.metrics['count'] == 200
  assert cached.metrics['loss'] == pytest.approx(plain.metrics['loss'], abs=1e-5)
  assert cached.metrics['accuracy'] > 0.2          # 10 classes: the head learned (0.31 measured)


def test_batchnorm_backbone_gives_the_same_head(data_dir, tmp_path):
  """A frozen ResNet's BatchNorm runs on its running averages in the train step too, so features cached in
  inference mode give the same head."""
  c = config_lib.pretrain()
  c.data, c.input.data_dir, c.input.eval_split = 'glyphs/small', data_dir, 'test[:16]'
  c.model.backbone = {'name': 'resnet', 'depth': [1], 'width': 4}
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 3, 16, 3, 3
  train.train(c, str(tmp_path / 'pre'))
  heads = []
  for on in (True, False):
    ft = head_only(data_dir, str(tmp_path / 'pre'), steps=10, feature_cache=on)
    ft.input.eval_split = 'test[:101]'        # an odd count: the last eval/extraction batch is padded
    heads.append(train.train(ft, str(tmp_path / f'ft_{on}')))
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
      jax.tree_util.tree_leaves(heads[0].params['head']), jax.tree_util.tree_leaves(heads[1].params['head'])))
  assert diff <= HEAD_TOL
  assert heads[0].metrics['accuracy'] == heads[1].metrics['accuracy'] and heads[0].metrics['count'] == 101
  for a, b in zip(jax.tree_util.tree_leaves(heads[0].batch_stats), jax.tree_util.tree_leaves(heads[1].batch_stats)):
    np.testing.assert_array_equal(a, b)     # frozen statistics untouched either way


def test_cached_checkpoint_holds_the_full_model(runs):
  workdir, cached, _ = runs['cached']
  again = evaluation.evaluate_checkpoint(workdir)     # rebuilds the full model from the checkpoint's spec
  assert again['count'] == 200
  assert again['accuracy'] == pytest.approx(cached.metrics['accuracy'], abs=1e-9)
  assert again['loss'] == pytest.approx(cached.metrics['loss'], abs=1e-5)


def test_cached_run_resumes_bit_identically(runs, pretrained, data_dir, tmp_path):
  _, uninterrupted, _ = runs['cached']
  c = head_only(data_dir, pretrained)
  workdir = str(tmp_path / 'resumed')
  early = train.train(c, workdir, stop_after=12)
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
      jax.tree_util.tree_leaves(early.params['head']), jax.tree_util.tree_leaves(uninterrupted.params['head'])))
  assert moved > 100 * HEAD_TOL       # steps 13-30 changed the head far more than the cache's tolerance
  resumed = train.train(c, workdir)
  assert resumed.init == 'resume' and resumed.step == 30
  for a, b in zip(jax.tree_util.tree_leaves((resumed.params, resumed.opt_state)),
                  jax.tree_util.tree_leaves((uninterrupted.params, uninterrupted.opt_state))):
    np.testing.assert_array_equal(a, b)
  assert resumed.metrics == uninterrupted.metrics


@pytest.mark.parametrize('augment', [{'flip': True}, {'resize': '32', 'random_crop': '28'}])
def test_augmentation_or_trained_backbone_turns_the_cache_off(pretrained, data_dir, tmp_path, caplog, augment):
  c = head_only(data_dir, pretrained, steps=2)
  c.input.update(augment)
  with caplog.at_level(logging.INFO, logger='jaxtransfer'):
    train.train(c, str(tmp_path / 'aug'))
  assert CACHE_LINE not in caplog.text and 'feature cache not used: augmentation' in caplog.text


def test_trained_backbone_blocks_do_not_use_the_cache(pretrained, data_dir, tmp_path, caplog):
  c = head_only(data_dir, pretrained, steps=2)
  c.trainable = 'last:1'
  with caplog.at_level(logging.INFO, logger='jaxtransfer'):
    train.train(c, str(tmp_path / 'last1'))
  assert CACHE_LINE not in caplog.text
  blocker = features.cache_blocker
  # The objective decides too: one whose gradients are not the head's loss alone is never cached.
  params = {'backbone': {'block_0': {'w': np.zeros(1)}}, 'head': {'w': np.zeros(1)}}
  labels = rules.freeze_labels('head', params)
  pre = preprocess.Preprocess()
  assert blocker(c, objectives.classification(), params, {}, labels, pre) is None
  tasks = {'a': {'kind': 'binary', 'key': 'labels', 'index': 0}}
  assert 'objective' in blocker(c, objectives.multitask(tasks), params, {}, labels, pre)
  assert blocker(c, objectives.classification(), params, {}, rules.freeze_labels('all', params), pre) == \
      'backbone parameters train'


# --- batch sizes from a memory budget -----------------------------------------------------------------


def _forward(spec, shape):
  model = model_lib.build({'backbone': spec, 'head': {'name': 'linear', 'num_outputs': 2}})
  variables = jax.jit(lambda k: model_lib.init(model, k, shape))(jax.random.key(0))
  fn = jax.jit(lambda v, b: model.apply(v, b['image']))
  example = {'image': np.zeros((1, *shape), np.float32), 'label': np.zeros(1, np.int32),
             'mask': np.ones(1, np.float32)}
  return fn, (variables,), example


def test_auto_batch_size_shrinks_for_large_inputs_and_fits_the_budget():
  mesh = sharding.make_mesh(1)
  budget = 256
  small = _forward(CNN, (28, 28, 1))
  # EfficientNet-Lite0's stem and first MBConv blocks at 224×224×3 (its largest activations; the full
  # network compiles too slowly for a unit test — experiments/benchmarks/own_photos.py runs it).
  large = _forward({'name': 'efficientnet_lite', 'variant': 'lite0', 'drop_last': 14}, (224, 224, 3))
  per_small, per_large = memory.per_example_bytes(*small, mesh), memory.per_example_bytes(*large, mesh)
  # Lite0 at 224: megabytes per example (activations of 112×112×96 maps), the CNN on 28×28×1 tens of KB.
  assert per_large > 2**20 and per_large > 50 * per_small
  n_small = memory.batch_size(*small, mesh, budget_mb=budget)
  n_large = memory.fitting(per_large, budget)
  assert n_small == memory.MAX_BATCH
  assert 1 <= n_large < 100
  assert n_large * per_large <= budget * 2**20 < (n_large + 1) * per_large
  assert memory.fitting(per_large, budget, multiple=4) % 4 == 0
  assert memory.fitting(per_large, 1e-3, multiple=2) == 2        # at least one example per device
  with pytest.raises(errors.ConfigError, match='eval_memory_mb'):
    memory.batch_size(*small, mesh, budget_mb=0)


def test_evaluation_is_the_same_at_auto_and_fixed_batch_sizes(runs, pretrained, data_dir):
  workdir, _, _ = runs['plain']
  auto = evaluation.evaluate_checkpoint(workdir)             # config: eval_batch_size 0 → from the budget
  assert auto == evaluation.evaluate_checkpoint(workdir, batch_size=500)
  small = evaluation.evaluate_checkpoint(workdir, batch_size=7)
  assert small['accuracy'] == auto['accuracy'] and small['count'] == auto['count'] == 200
  assert small['loss'] == pytest.approx(auto['loss'], abs=1e-6)
  # Extraction: auto and fixed batches give the same features.
  backbone = features.load_backbone(pretrained)
  src = catalog.load('real_digits', 'test[:50]', data_dir=data_dir)
  np.testing.assert_allclose(features.extract(backbone, src).x, features.extract(backbone, src, batch_size=7).x,
                             rtol=1e-6, atol=1e-6)
