"""Train the same CNN from scratch on k real handwritten digits per class (the no-transfer baseline).

Run:
  jaxtransfer finetune --config=experiments/configs/scratch_digits.py --workdir=runs/scratch_10 \
      --config.input.per_class=10
Expected (10 labels per class, 200 steps): ≈ 0.75–0.8 test accuracy on the held-out real digits.
"""

from jaxtransfer import config


def get_config():
  c = config.finetune(init_from='', trainable='all', per_class=10)
  c.model.backbone = config.pretrain().model.backbone.to_dict()
  c.optim.lr = 3e-3
  return c
