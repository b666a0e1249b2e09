"""Shared fixtures. Prepared datasets go to one session-wide directory (generated once per run)."""

import os

import pytest

from jaxtransfer import runtime


def pytest_configure(config):
  # One compilation cache per test session: the same small programs recur across tests.
  runtime.configure(os.environ.get(runtime.CACHE_ENV) or os.path.join(
      str(config.rootpath), '.pytest_cache', 'jax'))


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """Where the embedded TFDS datasets are prepared for this test session (JAXTRANSFER_TEST_DATA_DIR reuses one)."""
  path = os.environ.get('JAXTRANSFER_TEST_DATA_DIR') or str(tmp_path_factory.mktemp('tfds'))
  os.makedirs(path, exist_ok=True)
  return path


TINY_CNN = {'name': 'cnn', 'stages': [4, 8], 'dense': [16]}


@pytest.fixture(scope='session')
def tiny_glyph_checkpoint(tmp_path_factory, data_dir) -> str:
  """A 3-step pretraining of a tiny CNN (`TINY_CNN`) on glyphs/small: a source checkpoint for transfer tests
  (feature cache, probes) that only need *a* pretrained backbone, trained once per test worker."""
  from jaxtransfer import config as config_lib
  from jaxtransfer import train
  c = config_lib.pretrain()
  c.data, c.input.data_dir, c.input.eval_split = 'glyphs/small', data_dir, 'test[:16]'
  c.model.backbone = TINY_CNN
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 3, 16, 3, 3
  workdir = str(tmp_path_factory.mktemp('tiny_glyph_pretrain'))
  train.train(c, workdir)
  return workdir
