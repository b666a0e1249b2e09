"""Multi-task learning on partially labelled scenes (issue #3): six presence heads over one small CNN.

Run:
  jaxtransfer pretrain --config=experiments/configs/multitask_scenes.py --workdir=runs/mtl_scenes
  (any `--config.<key>=…`: --config.data=scenes/u60, --config.mtl.unknown_policy=negative | drop,
   --config.mtl.weighting=uncertainty | gradnorm | pcgrad | cagrad, --config.trainable='backbone/.*|head/has_[0-4]/.*')
Data: scenes/u<k> = 48×48 canvases with 0–4 handwritten or printed digits, 5000 train / 1000 test,
k % of the training labels hidden; evaluation is on the test split's TRUE labels (mean AP over has_0…has_5).
Expected (300 steps, ~1–2 min on 2 CPU cores): mean AP ≈ 0.8 on scenes/u0; see
experiments/multitask_unknown.py and runs/multitask_unknown/results.md for the measured tables.
"""

from jaxtransfer import config
from jaxtransfer.data.builders import scenes

BACKBONE = {'name': 'cnn', 'stages': [16, 32], 'dense': [64]}


def get_config(data: str = 'scenes/u30', backbone: dict | None = None, steps: int = 300):
  c = config.base()
  c.data = data
  c.model.backbone = dict(backbone or BACKBONE)
  c.model.head = 'multitask'
  c.tasks = scenes.task_config(6)
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 20
  c.train.steps = steps
  c.train.batch_size = 64
  c.train.log_every = 100
  c.train.checkpoint_every = steps
  c.train.keep_checkpoints = 1
  return c
