"""Shared fixtures. Prepared datasets go to one session-wide directory (generated once per run)."""

import os

import pytest


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """Where the embedded TFDS datasets are prepared for this test session (JAXTRANSFER_TEST_DATA_DIR reuses one)."""
  path = os.environ.get('JAXTRANSFER_TEST_DATA_DIR') or str(tmp_path_factory.mktemp('tfds'))
  os.makedirs(path, exist_ok=True)
  return path
