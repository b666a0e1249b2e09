"""Pretrain the CNN backbone on printed glyphs (task A: 50k images, 62 classes).

Run:
  jaxtransfer pretrain --config=experiments/configs/pretrain_glyphs.py --workdir=runs/pretrain
  jaxtransfer pretrain --config=experiments/configs/pretrain_glyphs.py:augment --workdir=runs/pretrain_aug
Expected: ~1200 steps of batch 128 in ~2–3 min on 2 CPU cores; glyph test accuracy ≈ 0.9 (letters such
as O/0 and l/1 are ambiguous by design). The checkpoint under runs/pretrain/checkpoints/ is what the
fine-tuning configs start from.
"""

from jaxtransfer import config


def get_config(variant: str = ''):
  """'' = the plain glyph pretraining (`config.pretrain()`, the studies before the tenth session); ':augment' =
  the same on random views of the glyphs (`input.augment`), the demo's pretraining since then."""
  if variant not in ('', 'augment'):
    raise ValueError(f'pretrain_glyphs: expected no argument or :augment, got {variant!r}')
  c = config.pretrain()
  c.input.augment = variant == 'augment'
  return c
