"""Pretrain the CNN backbone on printed glyphs (task A: 50k images, 62 classes).

Run:
  jaxtransfer pretrain --config=experiments/configs/pretrain_glyphs.py --workdir=runs/pretrain
Expected: ~1200 steps of batch 128 in ~2–3 min on 2 CPU cores; glyph test accuracy ≈ 0.9 (letters such
as O/0 and l/1 are ambiguous by design). The checkpoint under runs/pretrain/checkpoints/ is what the
fine-tuning configs start from.
"""

from jaxtransfer import config


def get_config():
  return config.pretrain()
