"""Multi-task learning on partially labelled scenes (issue #3): six presence heads over one shared CNN.

Run (after `make demo`, whose pretraining checkpoint runs/demo/pretrain the default starts from):
  jaxtransfer pretrain --config=experiments/configs/multitask_scenes.py --workdir=runs/mtl_scenes
  (any `--config.<key>=…`: --config.data=scenes/u60, --config.mtl.unknown_policy=negative | drop,
   --config.mtl.weighting=uncertainty | gradnorm | pcgrad | cagrad, --config.trainable='backbone/.*|head/has_[0-4]/.*',
   --config.transfer.init_from='' for random init)
Data: scenes/u<k> = 48×48 canvases with 0–4 handwritten or printed digits, 5000 train / 1000 test,
k % of the training labels hidden; evaluation is on the test split's TRUE labels (mean AP over has_0…has_5).
Model: the glyph-pretrained CNN's two conv blocks (its 28×28 dense block dropped), global max pooling —
"is there a 3 anywhere" does not care where — and per task a fresh head with one hidden layer of 64.
Expected (400 steps of 32, ~45 s on 2 CPU cores): mean AP ≈ 0.6–0.8 on scenes/u0 from the glyph checkpoint,
≈ 0.3 from random init (the conv blocks learn digits slowly from presence labels alone); measured tables
in BUILD_NOTES.md (experiments/multitask_*.py).
"""

from jaxtransfer import config
from jaxtransfer.data.builders import scenes

PRETRAIN = 'runs/demo/pretrain'   # the demo's glyph pretraining (config.pretrain())
# The pretraining backbone with global max pooling; `transfer.drop_last_blocks=1` removes its dense block
# (from the spec, and from the checkpoint when init_from is set): conv 16-16-pool, conv 32-32-pool, max.
BACKBONE = {**config.pretrain().model.backbone, 'pool': 'max'}


def get_config(data: str = 'scenes/u30', init_from: str | None = PRETRAIN, steps: int = 400):
  c = config.base()
  c.data = data
  c.model.backbone = dict(BACKBONE)
  c.transfer.drop_last_blocks = 1
  c.transfer.init_from = init_from or ''
  c.objective = 'multitask'
  c.tasks = scenes.task_config(6)
  c.mtl.head_hidden = (64,)
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 50
  c.train.steps = steps
  c.train.batch_size = 32
  c.train.log_every = 100
  c.train.checkpoint_every = steps
  c.train.keep_checkpoints = 1
  return c
