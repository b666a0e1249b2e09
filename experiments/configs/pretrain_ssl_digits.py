"""Self-supervised pretraining on unlabelled digits: SimCLR on the demo CNN, or MAE on a patch Transformer.

Run (`:simclr` is the default; the pool needs ../shared/data — on a machine without it use
`--config.data=real_digits --config.input.manual_dir=''`):
  jaxtransfer pretrain --config=experiments/configs/pretrain_ssl_digits.py:simclr --workdir=runs/simclr_digits
  jaxtransfer pretrain --config=experiments/configs/pretrain_ssl_digits.py:mae --workdir=runs/mae_digits
  jaxtransfer finetune --config=experiments/configs/finetune_digits.py --workdir=runs/from_simclr \
      --config.transfer.init_from=runs/simclr_digits --config.trainable=head    # the projection head is dropped
Data: every training digit without its label — real_digits train (4000 MNIST digits) + USPS train (7291,
16×16 upscaled: full-frame), `pool:`; no test image of real_digits, USPS or the MNIST test set is in it
(tests/test_pool.py). Monitors at every evaluation: k-NN accuracy on real_digits (1000 train → 500 test
digits, `monitor.knn_*`) and, in the step, an online linear probe (the pool's labels; stop-gradient).
SimCLR: the demo CNN (glyph-pretraining's architecture), two views per digit (`config.views`: crop 0.5–1 of
the area, ±15° rotation, ±10° shear, ±10 % translation, stroke width, contrast), NT-Xent at temperature
0.1, batch 256, 2000 steps. MAE: 4 pre-LN layers × 128 on 4×4 patches (49 per digit), 75 % hidden, a 1-layer
decoder of width 64, batch 256, 2000 steps.
"""

from jaxtransfer import config

ENCODER = {'name': 'transformer', 'stem': 'patches', 'patch_size': 4, 'num_layers': 4, 'width': 128,
           'num_heads': 4, 'mlp_dim': 512, 'pool': 'mean'}


def get_config(objective: str = 'simclr'):
  c = config.pretrain()
  if objective not in ('simclr', 'mae'):
    raise ValueError(f'pretrain_ssl_digits: expected :simclr or :mae, got {objective!r}')
  c.objective = objective
  c.data = 'pool:real_digits+real_digits/usps'
  c.input.manual_dir = '../shared/data'
  c.input.eval_split = 'test[:1000]'
  c.monitor.knn_data = 'real_digits'
  c.monitor.online_probe = True
  c.train.steps, c.train.batch_size = 2000, 256
  c.train.checkpoint_every, c.train.eval_every = 500, 500
  c.optim.warmup_steps = 100
  if objective == 'mae':
    c.model.backbone = dict(ENCODER)
    c.optim.lr, c.optim.weight_decay = 1.5e-3, 0.05
  else:
    c.optim.lr = 1e-3
  return c
