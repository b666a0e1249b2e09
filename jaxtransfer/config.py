"""The config schema: every key the training loop reads, with its default.

Configs are code (ml_collections). `experiments/configs/*.py` start from `base()` or one of the presets
below and change what they need; `--config.<key>=<value>` overrides any key on the command line, and a
key that does not exist is an error. The presets are the demo's stages: `pretrain()` on glyphs (task A)
and `finetune()` on real handwritten digits (task B).
"""

import math

import ml_collections
from ml_collections import config_dict

from jaxtransfer import errors


def base() -> ml_collections.ConfigDict:
  """All keys with neutral defaults: a small CNN, a linear head, Adam, no transfer, everything trains."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # What the run optimises and how it is measured (jaxtransfer/objectives/): 'classification' (one head,
  # softmax cross-entropy, accuracy) | 'multitask' (one head per config.tasks entry, masked losses, mean AP).
  # The objective owns the head, the label checks, the choice of training examples, the loss and metrics.
  c.objective = 'classification'

  # The dataset, by catalog name (jaxtransfer/data/catalog.py): an embedded builder ('glyphs',
  # 'glyphs/small', 'real_digits', 'real_digits/mnist_t10k'), 'tfds:<name>[:<config>]' or 'imagefolder:<dir>'.
  c.data = 'real_digits'
  c.input = ml_collections.ConfigDict()
  c.input.train_split = 'train'         # TFDS split syntax, slicing included ('train[:80%]')
  c.input.eval_split = 'test'
  c.input.eval_data = ''                # evaluate on another dataset ('' = c.data), e.g. 'real_digits/mnist_t10k'
  c.input.per_class = 0                 # k examples per class for training (0 = all)
  c.input.subset_seed = 0               # which k examples (independent of the training seed)
  c.input.data_dir = ''                 # prepared TFDS datasets ('' = JAXTRANSFER_DATA_DIR or ~/.cache)
  c.input.manual_dir = ''               # where data that cannot be generated lives (e.g. ../shared/data)
  # Preprocessing (jaxtransfer/data/preprocess.py); training augments with per-(seed, step) randomness.
  c.input.resize = ''                   # '' | 'H' | 'HxW': every image, train and eval
  c.input.resize_policy = 'crop'        # 'crop' | 'pad' | 'stretch'
  c.input.random_crop = ''              # '' | 'H' | 'HxW': random window in training, centre window in eval
  c.input.flip = False                  # random left-right flip in training
  c.input.augment = False               # each training image → a random view of itself (config.views), in the step
  c.input.normalize = ''                # '' | 'imagenet' | 'inception' | 'efficientnet_lite'

  # Text datasets (a 'text' feature, e.g. 'wikitext2', 'sentiment_sentences/both', 'textfile:<path>'):
  # jaxtransfer/text/inputs.py. The tokenizer: '' = the one in the init_from (or resumed) checkpoint;
  # 'sentencepiece' = trained on the training split (vocab_size, tokenizer_seed); or a tokenizer.json path.
  c.text = ml_collections.ConfigDict()
  c.text.tokenizer = ''
  c.text.vocab_size = 8000
  c.text.tokenizer_seed = 0
  c.text.max_len = 128                  # tokens per example at most ([CLS] and [SEP] included)
  c.text.buckets = (32, 64, 128)        # each batch padded to the smallest of these that holds it
  c.text.group_by_length = 0            # G > 0: training batches drawn G at a time, the G·B texts sorted by token
                                        # count and cut into G batches of like lengths, in shuffled order: less padding
  c.mlm = ml_collections.ConfigDict()   # objective 'mlm' (BERT's masking)
  c.mlm.mask_rate = 0.15                # fraction of the real, non-special tokens selected
  c.mlm.mask_token = 0.8                # of those: → [MASK]
  c.mlm.random_token = 0.1              # of those: → a random token (the rest stay as they are)
  c.mlm.head_hidden = 0                 # the MLM head's transform width (0 = the encoder's)
  c.mlm.whole_word = False              # select whole words (all of a word's pieces or none), not pieces
  c.mlm.loss_normalizing_factor = 0.0   # the loss is Σ over a batch's masked tokens / this (0: / their count)

  c.model = ml_collections.ConfigDict()
  # Backbone spec ({'name': 'cnn' | 'resnet' | 'efficientnet_lite', **kwargs}); None with init_from = the
  # checkpoint's own. Typed `object` so that the command line can override it with a dict literal:
  # --config.model.backbone="{'name': 'resnet', 'depth': [2, 2], 'width': 16}"
  c.model.backbone = ml_collections.FieldReference({'name': 'cnn', 'stages': [16, 32], 'dense': [128]},
                                                   field_type=object)
  c.model.head = 'linear'               # classification head: 'linear' | 'mlp' (multi-task: see config.tasks)
  c.model.head_hidden = (128,)          # MLP head: one new Dense layer per entry
  c.model.head_dropout = 0.0
  # The backbone's dropout rate for this run, replacing its spec's (with init_from: the pretraining's own).
  # None = the spec's. BERT-style runs pretrain an underfitting encoder without dropout and fine-tune with it.
  c.model.backbone_dropout = config_dict.placeholder(float)
  c.model.num_outputs = 0               # 0 = the dataset's number of classes

  # Multi-task runs (objective = 'multitask', issue #3): the tasks, name -> {'kind': 'binary' | 'multilabel'
  # | 'classification' | 'regression', 'key': batch feature, 'index': its column, 'num_classes', 'num_outputs'}
  # (see objectives/multitask.py parse_tasks; data/builders/scenes.py `task_config` builds the scenes tasks).
  c.tasks = ml_collections.ConfigDict()
  c.mtl = ml_collections.ConfigDict()
  c.mtl.weighting = 'equal'             # 'equal' | 'uncertainty' | 'gradnorm' | 'pcgrad' | 'cagrad' | 'dwa' | 'rlw'
                                        # | 'famo' | 'nashmtl' | 'upgrad' (weighting.py)
  c.mtl.task_gradients = 'features'     # gradient methods (gradnorm/pcgrad/cagrad): their Gram matrix of task
                                        # gradients at the backbone output ('features', one backbone backward
                                        # pass) or at the shared parameters ('params', one per task)
  c.mtl.unknown_policy = 'mask'         # unknown labels: 'mask' (left out) | 'negative' (as 0) | 'drop' (only
                                        # fully labelled examples train) | 'pseudo' (an EMA teacher's
                                        # confident predictions, objectives/multitask.py)
  c.mtl.pseudo_threshold = 0.9          # 'pseudo': teacher confidence needed to fill an unknown label
  c.mtl.ema_decay = 0.99                # 'pseudo': the teacher = EMA of the weights with this decay per step
  c.mtl.pseudo_start = 100              # 'pseudo': steps of plain masking before the teacher labels
  c.mtl.head_hidden = ()                # per-task hidden Dense layers of the multitask head (() = linear heads)
  c.mtl.shuffled_tasks = ()             # a control: these tasks' training labels permuted across the training
                                        # examples (seed input.subset_seed), unrelated to the image

  c.mae = ml_collections.ConfigDict()   # objective='mae': masked autoencoding (objectives/mae.py)
  c.mae.mask_ratio = 0.75               # fraction of each image's patches hidden from the encoder
  c.mae.norm_pix = True                 # targets normalised per patch (mean, variance of its pixels)
  c.mae.decoder_width = 64              # the light decoder (the head, dropped at transfer): width, layers, heads
  c.mae.decoder_depth = 1
  c.mae.decoder_heads = 4

  c.simclr = ml_collections.ConfigDict()   # objective='simclr': joint embedding (objectives/simclr.py)
  c.simclr.temperature = 0.1            # NT-Xent temperature
  c.simclr.proj_hidden = 256            # the projection head (an MLP, dropped at transfer): hidden width, output
  c.simclr.proj_dim = 64
  c.views = ml_collections.ConfigDict()   # the random views made in the step (views.py ViewConfig)
  c.views.crop_scale = (0.5, 1.0)       # random resized crop: area fraction, aspect ratio range
  c.views.ratio = (3 / 4, 4 / 3)
  c.views.rotate = 15.0                 # degrees, uniform in ±
  c.views.shear = 10.0                  # degrees, uniform in ±
  c.views.translate = 0.1               # fraction of the image size, uniform in ±
  c.views.stroke = 0.4                  # probability of a thicker (half) or thinner (half) stroke: 3×3 dilation/erosion
  c.views.contrast = 0.4                # contrast factor uniform in [1 − c, 1 + c]
  c.views.brightness = 0.2              # shift uniform in ± b × the image's range
  c.views.flip = False                  # random left-right flip (not for digits)

  c.monitor = ml_collections.ConfigDict()   # feature monitors at every evaluation (monitors.py)
  c.monitor.knn_data = ''               # a labelled dataset ('' = off): weighted k-NN accuracy of the backbone's
  c.monitor.knn_train_split = 'train[:1000]'   # features, these examples voting for
  c.monitor.knn_eval_split = 'test[:500]'      # these ones (metric eval/knn_accuracy)
  c.monitor.knn_k = 20
  c.monitor.online_probe = False        # mae/simclr: a linear probe trained in the step on stop-gradient features
                                        # with the batch's labels (online_probe.py; train/probe_accuracy)

  c.transfer = ml_collections.ConfigDict()
  c.transfer.init_from = ''             # a pretraining workdir, its checkpoints/ dir, or one step dir
  c.transfer.drop_last_blocks = 0       # remove the last k backbone blocks before attaching the head
  c.transfer.head_init = 'fresh'        # 'fresh' | 'class_names': start the output layer from the checkpoint's
                                        # outputs for classes of the same name (A's '0'…'9' → B's digits)

  c.trainable = 'all'                   # 'all' | 'head' | 'last:K' | 'bitfit' | 'lora:R' | a regex over parameter paths
  c.lora = ml_collections.ConfigDict()  # trainable='lora:R' on the Transformer encoder (jaxtransfer/lora.py)
  c.lora.targets = ''                  # regex over the module path inside a block ('' = transformer.LORA_TARGETS:
                                        # attention query/key/value/out and the MLP kernels)
  c.lora.alpha = 0.0                    # adapter scale alpha / R (0 = transformer.LORA_ALPHA)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.optim.momentum = 0.9
  c.optim.grad_clip = 0.0
  # Per-group optimisation and fine-tuning schedules (issue #5, jaxtransfer/optim.py); defaults = off.
  c.optim.lr_mult = ()                  # ((regex, multiplier), …) first match wins, other parameters × 1
  c.optim.llrd = 1.0                    # layer-wise lr decay: head × 1, block_i of n × llrd**(n-i) (1 = off)
  c.optim.decay_rules = ()              # ((regex, True | False), …) where weight decay acts (() = everywhere)
  c.optim.l2sp = 0.0                    # L2-SP α: pulls the backbone toward the weights the run started from
  c.optim.l2sp_head = 0.0               # L2-SP β: plain L2 on the new head
  c.optim.unfreeze_every = 0            # gradual unfreezing: head first, one more block every N steps (0 = off)
  c.optim.lp_steps = 0                  # LP-FT: N head-only steps at lp_lr, then `trainable` at lr (0 = off)
  c.optim.lp_lr = 1e-2

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 128
  # Evaluation and feature extraction batches: 0 = the largest batch whose estimated memory (XLA's own
  # analysis of the compiled step, jaxtransfer/memory.py) fits eval_memory_mb, at most 500; > 0 = that size.
  c.train.eval_batch_size = 0
  c.train.eval_memory_mb = 512.0
  # Head-only runs (every backbone parameter frozen, from transfer.init_from, no augmentation, an objective
  # that needs only the head's outputs) train the head on the backbone's features, extracted once per
  # example (features.for_run): same head, metrics and checkpoints, the backbone not run every step.
  c.train.feature_cache = True
  c.train.log_every = 100
  c.train.eval_every = 0                # 0 = evaluate at the end only
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2
  # A loss or training state that becomes NaN/inf (divergence): 'stop' ends the run with a one-line error
  # naming the step and the last good checkpoint; 'skip' skips the update of a step whose gradients are not
  # finite (optax.apply_if_finite) and stops after `max_nonfinite` skipped steps in a row. Either way no
  # checkpoint with a non-finite value is written.
  c.train.on_nonfinite = 'stop'         # 'stop' | 'skip'
  c.train.max_nonfinite = 10            # 'skip': consecutive skipped steps before the run stops

  c.mesh = ml_collections.ConfigDict()  # see jaxtransfer/sharding.py
  c.mesh.data = -1                      # devices on the batch axis (-1 = all the rest)
  c.mesh.model = 1                      # devices on the 'model' axis (only explicit param_rules use it)
  c.mesh.params = 'replicate'           # parameters not matched by param_rules: 'replicate' | 'fsdp'
  c.mesh.param_rules = ()               # ((regex, 'replicate' | 'fsdp' | PartitionSpec tuple), …) first match wins
  c.mesh.fsdp_min_size = 2**14          # 'fsdp' leaves parameters with fewer elements replicated
  c.mesh.cpu_devices = 0                # CPU only: split the host into N devices (0 = JAX's default, 1); see BUILD_NOTES

  c.distributed = ml_collections.ConfigDict()  # multi-host: sharding.initialize_distributed
  c.distributed.initialize = 'off'      # 'off' | 'on' (the keys below) | 'auto' (cluster environment)
  c.distributed.coordinator = ''        # 'host:port' of process 0 (env JAXTRANSFER_COORDINATOR)
  c.distributed.num_processes = 0       # (env JAXTRANSFER_NUM_PROCESSES)
  c.distributed.process_id = -1         # (env JAXTRANSFER_PROCESS_ID)
  return c


def pretrain() -> ml_collections.ConfigDict:
  """Task A: the CNN on 50k printed glyphs (62 classes)."""
  c = base()
  c.data = 'glyphs'
  c.train.steps = 1200
  c.train.batch_size = 128
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.train.checkpoint_every = 400
  return c


def finetune(init_from: str = '', trainable: str = 'all', per_class: int = 10) -> ml_collections.ConfigDict:
  """Task B: real handwritten digits, k labels per class, from `init_from` (or scratch when '')."""
  c = base()
  c.data = 'real_digits'
  c.input.per_class = per_class
  c.transfer.init_from = init_from
  if init_from:
    c.model.backbone = None
  c.trainable = trainable
  c.train.steps = 200
  c.train.batch_size = 32
  c.train.checkpoint_every = 100
  c.train.log_every = 50
  return c


# ------------------------------------------------------------------------------------------ validation

# Allowed values of the enumerated keys. Registries that tests or users extend (objectives, backbones,
# heads) are checked by the registry itself, not here.
CHOICES = {
    'input.resize_policy': ('crop', 'pad', 'stretch'),
    'input.normalize': ('', 'imagenet', 'inception', 'efficientnet_lite'),
    'transfer.head_init': ('fresh', 'class_names'),
    'optim.name': ('adam', 'sgd'),
    'optim.schedule': ('cosine', 'constant'),
    'mtl.weighting': ('equal', 'uncertainty', 'gradnorm', 'pcgrad', 'cagrad', 'dwa', 'rlw', 'famo', 'nashmtl', 'upgrad'),
    'mtl.task_gradients': ('features', 'params'),
    'mtl.unknown_policy': ('mask', 'negative', 'drop', 'pseudo'),
    'mesh.params': ('replicate', 'fsdp'),
    'distributed.initialize': ('off', 'on', 'auto'),
    'train.on_nonfinite': ('stop', 'skip'),
}
# key: (lowest, highest, lowest allowed?, highest allowed?) for numbers; None = unbounded on that side.
RANGES = {
    'train.steps': (1, None, True, True),
    'train.batch_size': (1, None, True, True),
    'train.eval_batch_size': (0, None, True, True),   # 0 = from train.eval_memory_mb
    'train.eval_memory_mb': (0.0, None, False, True),
    'train.log_every': (1, None, True, True),
    'train.checkpoint_every': (1, None, True, True),
    'train.keep_checkpoints': (1, None, True, True),
    'train.max_nonfinite': (1, None, True, True),
    'train.eval_every': (0, None, True, True),
    'input.per_class': (0, None, True, True),
    'transfer.drop_last_blocks': (0, None, True, True),
    'model.num_outputs': (0, None, True, True),
    'model.head_dropout': (0.0, 1.0, True, False),
    'model.backbone_dropout': (0.0, 1.0, True, False),
    'optim.lr': (0.0, None, False, True),
    'optim.lp_lr': (0.0, None, False, True),
    'optim.warmup_steps': (0, None, True, True),
    'optim.weight_decay': (0.0, None, True, True),
    'optim.momentum': (0.0, 1.0, True, False),
    'optim.grad_clip': (0.0, None, True, True),
    'optim.llrd': (0.0, 1.0, False, True),
    'optim.l2sp': (0.0, None, True, True),
    'optim.l2sp_head': (0.0, None, True, True),
    'optim.unfreeze_every': (0, None, True, True),
    'optim.lp_steps': (0, None, True, True),
    'mesh.fsdp_min_size': (0, None, True, True),
    'mesh.cpu_devices': (0, None, True, True),
    'text.vocab_size': (8, None, True, True),
    'text.tokenizer_seed': (0, None, True, True),
    'text.max_len': (2, None, True, True),
    'mlm.mask_rate': (0.0, 1.0, False, True),
    'mlm.mask_token': (0.0, 1.0, True, True),
    'mlm.random_token': (0.0, 1.0, True, True),
    'mlm.head_hidden': (0, None, True, True),
    'mlm.loss_normalizing_factor': (0.0, None, True, True),
    'lora.alpha': (0.0, None, True, True),
    'mtl.pseudo_threshold': (0.5, 1.0, False, True),
    'mtl.ema_decay': (0.0, 1.0, True, False),
    'mtl.pseudo_start': (0, None, True, True),
    'mae.mask_ratio': (0.0, 1.0, False, False),
    'mae.decoder_width': (1, None, True, True),
    'mae.decoder_depth': (0, None, True, True),
    'mae.decoder_heads': (1, None, True, True),
    'monitor.knn_k': (1, None, True, True),
    'simclr.temperature': (0.0, None, False, True),
    'simclr.proj_hidden': (0, None, True, True),
    'simclr.proj_dim': (1, None, True, True),
    'views.rotate': (0.0, 180.0, True, True),
    'views.shear': (0.0, 60.0, True, True),
    'views.translate': (0.0, 1.0, True, True),
    'views.stroke': (0.0, 1.0, True, True),
    'views.contrast': (0.0, 1.0, True, True),
    'views.brightness': (0.0, None, True, True),
}
INTEGER_KEYS = frozenset(k for k, (low, *_) in RANGES.items() if isinstance(low, int))
OPTIONAL_KEYS = frozenset({'model.backbone_dropout'})   # None = unset (the spec's value)
_ABSENT = object()


def _get(config: ml_collections.ConfigDict, key: str) -> object:
  """The value at dotted `key`, or _ABSENT when the config has no such key (older or partial configs)."""
  node = config
  for part in key.split('.'):
    if not hasattr(node, 'get'):
      return _ABSENT
    node = node.get(part, _ABSENT)
    if node is _ABSENT:
      return _ABSENT
  return node


def _bad(key: str, value: object, why: str) -> errors.ConfigError:
  return errors.ConfigError(f'config.{key}={value!r}: {why}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raise one `errors.ConfigError` naming the key and its value if any key is out of range.

  Checks the numbers (`RANGES`: steps and batch sizes ≥ 1, lr > 0 and finite, fractions in their interval
  …), the enumerated strings (`CHOICES`) and the few rules between keys (warm-up shorter than the run,
  one of gradual unfreezing / LP-FT). Keys a config lacks are skipped. Cheap; no data or JAX involved.
  """
  for key, (low, high, low_ok, high_ok) in RANGES.items():
    value = _get(config, key)
    if value is _ABSENT or (value is None and key in OPTIONAL_KEYS):
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise _bad(key, value, 'expected a number')
    if key in INTEGER_KEYS and value != int(value):
      raise _bad(key, value, 'expected an integer')
    if not math.isfinite(value):
      raise _bad(key, value, 'expected a finite number')
    if low is not None and (value < low or (value == low and not low_ok)):
      raise _bad(key, value, f'must be {">=" if low_ok else ">"} {low}')
    if high is not None and (value > high or (value == high and not high_ok)):
      raise _bad(key, value, f'must be {"<=" if high_ok else "<"} {high}')
  for key, allowed in CHOICES.items():
    value = _get(config, key)
    if value is not _ABSENT and value not in allowed:
      raise _bad(key, value, f'expected one of {" | ".join(repr(a) for a in allowed)}')
  # optim.warmup_steps ≥ train.steps is allowed: optim.schedule clamps the warm-up to the run (a shortened
  # pretraining keeps the preset's warm-up without an error).
  mask_token, random_token = _get(config, 'mlm.mask_token'), _get(config, 'mlm.random_token')
  if mask_token is not _ABSENT and random_token is not _ABSENT and mask_token + random_token > 1:
    raise _bad('mlm.random_token', random_token, f'mlm.mask_token + mlm.random_token must be ≤ 1 (got {mask_token} + '
               f'{random_token})')
  steps = _get(config, 'train.steps')
  lp_steps = _get(config, 'optim.lp_steps')
  if steps is not _ABSENT and lp_steps is not _ABSENT and lp_steps and lp_steps >= steps:
    raise _bad('optim.lp_steps', lp_steps, f'must be < train.steps ({steps}): LP-FT needs steps left to fine-tune')
  if lp_steps not in (_ABSENT, 0) and _get(config, 'optim.unfreeze_every') not in (_ABSENT, 0):
    raise _bad('optim.lp_steps', lp_steps, 'optim.unfreeze_every and optim.lp_steps are two different schedules: '
               'set one of them')
