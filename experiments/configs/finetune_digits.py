"""Fine-tune on real handwritten digits (task B) from a pretrained checkpoint.

Run (after pretrain_glyphs.py):
  jaxtransfer finetune --config=experiments/configs/finetune_digits.py --workdir=runs/ft_head_10 \
      --config.transfer.init_from=runs/pretrain --config.trainable=head --config.input.per_class=10
Strategies: --config.trainable=head (linear probe) | last:1 | last:2 | all; surgery with
--config.transfer.drop_last_blocks=1 --config.model.head=mlp --config.model.head_hidden='(128,128)'.
Expected (10 labels per class, 200 steps): head ≈ 0.90, full ≈ 0.90 test accuracy on the 1000 held-out
real digits (see BUILD_NOTES.md for the measured table).
"""

from jaxtransfer import config


def get_config():
  c = config.finetune(init_from='runs/pretrain', trainable='head', per_class=10)
  c.optim.lr = 1e-2
  return c
