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
