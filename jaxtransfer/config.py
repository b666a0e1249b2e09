"""The config schema: every key the training loop reads, with its default.

Configs are code (ml_collections). `experiments/configs/*.py` start from `base()` or one of the presets
below and change what they need; `--config.<key>=<value>` overrides any key on the command line, and a
key that does not exist is an error. The presets are the demo's stages: `pretrain()` on glyphs (task A)
and `finetune()` on real handwritten digits (task B).
"""

import ml_collections


def base() -> ml_collections.ConfigDict:
  """All keys with neutral defaults: a small CNN, a linear head, Adam, no transfer, everything trains."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'real_digits'           # a catalog name: 'glyphs', 'glyphs/small', 'real_digits', …
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.per_class = 0                  # k examples per class for training (0 = all)
  c.data.subset_seed = 0                # which k examples (independent of the training seed)
  c.data.data_dir = ''                  # prepared TFDS datasets ('' = JAXTRANSFER_DATA_DIR or ~/.cache)
  c.data.manual_dir = ''                # where data that cannot be generated lives (e.g. ../shared/data)

  c.model = ml_collections.ConfigDict()
  # Backbone spec ({'name': 'cnn' | 'resnet', **kwargs}); None with init_from = the checkpoint's own.
  c.model.backbone = ml_collections.FieldReference({'name': 'cnn', 'stages': [32, 64], 'dense': [256]},
                                                   field_type=dict)
  c.model.head = 'linear'               # 'linear' | 'mlp'
  c.model.head_hidden = (128,)          # MLP head: one new Dense layer per entry
  c.model.head_dropout = 0.0
  c.model.num_outputs = 0               # 0 = the dataset's number of classes

  c.transfer = ml_collections.ConfigDict()
  c.transfer.init_from = ''             # a pretraining workdir, its checkpoints/ dir, or one step dir
  c.transfer.drop_last_blocks = 0       # remove the last k backbone blocks before attaching the head

  c.trainable = 'all'                   # 'all' | 'head' | 'last:K' | a regex over parameter paths

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.optim.momentum = 0.9
  c.optim.grad_clip = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 128
  c.train.eval_batch_size = 500
  c.train.log_every = 100
  c.train.eval_every = 0                # 0 = evaluate at the end only
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                      # devices on the batch axis (-1 = all)
  return c


def pretrain() -> ml_collections.ConfigDict:
  """Task A: the CNN on 50k printed glyphs (62 classes)."""
  c = base()
  c.data.name = 'glyphs'
  c.train.steps = 1200
  c.train.batch_size = 128
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.train.checkpoint_every = 400
  return c


def finetune(init_from: str = '', trainable: str = 'all', per_class: int = 10) -> ml_collections.ConfigDict:
  """Task B: real handwritten digits, k labels per class, from `init_from` (or scratch when '')."""
  c = base()
  c.data.name = 'real_digits'
  c.data.per_class = per_class
  c.transfer.init_from = init_from
  if init_from:
    c.model.backbone = None
  c.trainable = trainable
  c.train.steps = 200
  c.train.batch_size = 32
  c.train.checkpoint_every = 100
  c.train.log_every = 50
  return c
