"""A check shared by the pretraining-objective tests: a head-only transfer from a run drops its pretraining
head (decoder, projection) and restores its backbone exactly."""

import numpy as np

from jaxtransfer import config as config_lib, rules, train
from jaxtransfer.data import catalog


def assert_head_only_transfer_drops_the_head(source: str, saved: dict, data_dir: str, workdir: str) -> None:
  """One head-only step on glyphs/small from `source` (whose flattened params are `saved`): only a fresh
  linear head besides the backbone, which equals the source's (frozen: unchanged by the step)."""
  c = config_lib.base()
  c.data, c.input.data_dir, c.input.eval_split = 'glyphs/small', data_dir, 'test[:64]'
  c.model.backbone, c.transfer.init_from, c.trainable = {}, source, 'head'
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 1, 16, 1, 1
  probe = rules.flatten(train.train(c, workdir).params)
  assert {k for k in probe if k.startswith('head/')} == {'head/out/kernel', 'head/out/bias'}
  assert probe['head/out/kernel'].shape[1] == catalog.info('glyphs/small', data_dir=data_dir).num_classes
  backbone = [k for k in saved if k.startswith('backbone/')]
  assert backbone and set(backbone) == {k for k in probe if k.startswith('backbone/')}
  for k in backbone:
    np.testing.assert_array_equal(probe[k], saved[k], err_msg=k)
