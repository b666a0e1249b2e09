"""Train a small CNN from scratch on any image classification dataset: the no-transfer baseline.

Run (your photos: my_photos/<class>/*.jpg, split 80/20 by seed, or my_photos/{train,test}/<class>/*.jpg):
  jaxtransfer finetune --config=experiments/configs/scratch.py --workdir=runs/my_scratch \
      --config.data='imagefolder:my_photos?size=64'
  jaxtransfer evaluate --workdir=runs/my_scratch
`--config.data` is required (also e.g. `tfds:mnist`); no checkpoint is read. A small image size keeps
the CNN's dense layer small; a bigger network: --config.model.backbone="{'name': 'resnet', 'depth': [2, 2],
'width': 16}". Compare with experiments/configs/finetune.py on the same data to see what transfer buys.
"""

from jaxtransfer import config


def get_config():
  c = config.finetune(init_from='', trainable='all', per_class=0)
  c.data = ''                     # required: --config.data=imagefolder:<dir>?size=64 | tfds:<name> | …
  c.model.backbone = config.pretrain().model.backbone.to_dict()
  c.train.steps = 300
  c.optim.lr = 3e-3
  return c
