"""config.validate: every out-of-range or unknown value is one ConfigError naming the key and the value."""

import glob
import importlib.util
import math
import os

import pytest

from jaxtransfer import config as config_lib
from jaxtransfer import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(f for f in glob.glob(os.path.join(ROOT, 'experiments', 'configs', '*.py'))
                      if not f.endswith('__init__.py'))


def _with(key: str, value, base=None):
  c = base or config_lib.base()
  node = c
  *parents, leaf = key.split('.')
  for p in parents:
    node = node[p]
  with c.ignore_type():
    node[leaf] = value
  return c


@pytest.mark.parametrize('preset', [config_lib.base, config_lib.pretrain, config_lib.finetune])
def test_presets_pass(preset):
  config_lib.validate(preset())


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_experiment_configs_pass(path):
  spec = importlib.util.spec_from_file_location('cfg_' + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config_lib.validate(module.get_config())


@pytest.mark.parametrize('key, value', [
    ('train.steps', 0), ('train.steps', -5), ('train.steps', 2.5), ('train.batch_size', 0),
    ('train.eval_batch_size', -1), ('train.eval_memory_mb', 0), ('train.log_every', 0), ('train.checkpoint_every', 0),
    ('train.keep_checkpoints', 0), ('train.eval_every', -1),
    ('optim.lr', 0.0), ('optim.lr', -1e-3), ('optim.lr', math.inf), ('optim.lr', math.nan), ('optim.lr', 'fast'),
    ('optim.lp_lr', 0.0), ('optim.warmup_steps', -1), ('optim.momentum', 1.0),
    ('optim.momentum', -0.1), ('optim.weight_decay', -1e-4), ('optim.grad_clip', -1.0), ('optim.llrd', 0.0),
    ('optim.llrd', 1.5), ('optim.l2sp', -0.1), ('optim.l2sp_head', -0.1), ('optim.unfreeze_every', -1),
    ('optim.lp_steps', -1), ('optim.lp_steps', 1000),
    ('input.per_class', -1), ('transfer.drop_last_blocks', -1), ('model.head_dropout', 1.0),
    ('model.head_dropout', -0.5), ('model.backbone_dropout', 1.0), ('model.backbone_dropout', -0.1),
    ('model.num_outputs', -2), ('mesh.cpu_devices', -1),
    ('optim.schedule', 'linear'), ('optim.name', 'adagrad'), ('input.resize_policy', 'squash'),
    ('input.normalize', 'imagenette'), ('transfer.head_init', 'copy'), ('mesh.params', 'zero3'),
    ('distributed.initialize', 'yes'), ('mtl.weighting', 'mean'), ('mtl.unknown_policy', 'ignore'),
    ('mtl.task_gradients', 'both'),
])
def test_bad_value_is_a_config_error_naming_key_and_value(key, value):
  with pytest.raises(errors.ConfigError) as e:
    config_lib.validate(_with(key, value))
  message = str(e.value)
  assert f'config.{key}=' in message and repr(value) in message, message
  assert '\n' not in message


def test_gradual_unfreezing_and_lp_ft_together_are_an_error():
  c = _with('optim.unfreeze_every', 10)
  c.optim.lp_steps = 10
  with pytest.raises(errors.ConfigError, match='optim.lp_steps'):
    config_lib.validate(c)


@pytest.mark.parametrize('key, value', [('train.eval_every', 0), ('optim.warmup_steps', 999), ('optim.momentum', 0.0),
                                        ('optim.llrd', 1.0), ('model.head_dropout', 0.0), ('input.per_class', 0),
                                        ('model.backbone_dropout', None), ('model.backbone_dropout', 0.0),
                                        ('optim.schedule', 'constant'), ('mesh.params', 'fsdp')])
def test_edge_values_inside_the_range_pass(key, value):
  config_lib.validate(_with(key, value))


@pytest.mark.parametrize('key, value', [('train.on_nonfinite', 'ignore'), ('train.max_nonfinite', 0)])
def test_divergence_keys(key, value):
  c = config_lib.base()
  with c.unlocked():
    c.train.on_nonfinite, c.train.max_nonfinite = 'stop', 10   # (keys of the non-finite guard, where present)
  config_lib.validate(c)
  with pytest.raises(errors.ConfigError, match=f'config.{key}='):
    config_lib.validate(_with(key, value, c))


def test_absent_keys_are_skipped():
  c = config_lib.base()
  del c.optim['lp_lr']
  del c['distributed']
  config_lib.validate(c)


def test_a_warmup_longer_than_the_run_is_allowed_and_clamped():
  """optim.schedule clamps the warm-up to the run, so a shortened pretraining keeps the preset's warm-up."""
  from jaxtransfer import optim
  c = config_lib.pretrain()
  c.train.steps = 10                     # the preset's warm-up is 50
  config_lib.validate(c)
  lr = optim.schedule(c.optim, c.train.steps)
  assert float(lr(0)) == 0.0                                # warm-up starts at 0 …
  assert float(lr(9)) == pytest.approx(c.optim.lr, rel=1e-6)   # … and reaches the peak within the run
