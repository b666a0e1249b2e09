"""Fine-tuning strategies as configs, and model surgery with a validated parameter tree.

Every strategy is ONE config for the one training loop (`train.train`); the mechanisms live in the
optimizer (`optim.py`: per-group lr / LLRD / weight-decay masks, L2-SP, gradual unfreezing and LP-FT as
step-dependent parameter groups) and in the freeze presets (`rules.py`, incl. 'bitfit'):

    c = config_lib.finetune(init_from='runs/demo/pretrain', per_class=10)
    apply_strategy(c, 'lp-ft')            # 1/3 of the steps linear probe at lp_lr, then everything at lr
    train.train(c, workdir)

Strategies (`STRATEGIES`): scratch, head, last-1, last-2, full, lp-ft, l2sp, gradual, bitfit, llrd,
drop1+mlp2 (surgery: drop the last backbone block, attach a 2-hidden-layer head). 'head' can also run on
cached features (`features.linear_probe`), which gives the same head without re-running the backbone.
"""

import copy
from typing import Any

import jax
import ml_collections

from jaxtransfer import errors, rules, transfer
from jaxtransfer.models import model as model_lib

# name → config changes. 'init_from': False = random init (scratch). lr values: see BUILD_NOTES.md.
STRATEGIES: dict[str, dict[str, Any]] = {
    'scratch': {'init_from': False, 'trainable': 'all', 'lr': 3e-3},
    'head': {'trainable': 'head', 'lr': 1e-2},
    'last-1': {'trainable': 'last:1', 'lr': 1e-3},
    'last-2': {'trainable': 'last:2', 'lr': 1e-3},
    'full': {'trainable': 'all', 'lr': 1e-3},
    'lp-ft': {'trainable': 'all', 'lr': 3e-4, 'lp_fraction': 1 / 3, 'lp_lr': 1e-2},
    'l2sp': {'trainable': 'all', 'lr': 1e-3, 'l2sp': 0.1, 'l2sp_head': 1e-4},
    'gradual': {'trainable': 'all', 'lr': 1e-3, 'unfreeze_fraction': 1 / 4},
    'bitfit': {'trainable': 'bitfit', 'lr': 1e-2},
    'llrd': {'trainable': 'all', 'lr': 1e-3, 'llrd': 0.5},
    'drop1+mlp2': {'trainable': 'all', 'lr': 1e-3, 'drop_last': 1, 'head_hidden': (128, 128)},
}


def apply_strategy(config: ml_collections.ConfigDict, name: str, *, backbone: dict[str, Any] | None = None,
                   lr: float | None = None) -> ml_collections.ConfigDict:
  """Set `config`'s keys for strategy `name` (in place; returns it). Uses `config.train.steps`.

  `backbone`: the architecture for 'scratch' (the pretrained one, so only the initialisation differs).
  """
  if name not in STRATEGIES:
    raise ValueError(f'unknown strategy {name!r}; known: {", ".join(STRATEGIES)}')
  s = STRATEGIES[name]
  steps = config.train.steps
  if not s.get('init_from', True):
    if backbone is None and not config.model.backbone:
      raise ValueError("strategy 'scratch' needs the backbone spec")
    config.model.backbone = backbone or config.model.backbone
    config.transfer.init_from = ''
  elif not config.transfer.init_from:
    raise ValueError(f'strategy {name!r} needs config.transfer.init_from')
  config.trainable = s['trainable']
  config.optim.lr = lr if lr is not None else s['lr']
  if 'lp_fraction' in s:
    config.optim.lp_steps = max(1, int(steps * s['lp_fraction']))
    config.optim.lp_lr = s['lp_lr']
  if 'unfreeze_fraction' in s:
    config.optim.unfreeze_every = max(1, int(steps * s['unfreeze_fraction']))
  if 'l2sp' in s:
    config.optim.l2sp, config.optim.l2sp_head = s['l2sp'], s['l2sp_head']
  if 'llrd' in s:
    config.optim.llrd = s['llrd']
  if 'drop_last' in s:
    config.transfer.drop_last_blocks = s['drop_last']
  if 'head_hidden' in s:
    config.model.head = 'mlp'
    config.model.head_hidden = tuple(s['head_hidden'])
  return config


class SurgeryError(errors.Error):
  """The parameter tree after surgery is not the one asked for."""


def validate_surgery(params: Any, source_backbone: dict[str, Any], *, drop_last: int, head_hidden: tuple[int, ...],
                     num_outputs: int, source_params: Any | None = None) -> dict[str, Any]:
  """Check a model after 'drop the last k blocks, attach an n-layer head'; returns a summary.

  The backbone must hold exactly the source's first n−k blocks with the source's shapes (values equal
  to `source_params` when given: the transfer really happened), the head exactly `layer_0 …
  layer_{n-1}` + `out` with widths `head_hidden` → `num_outputs`, the first head layer's input being the
  width of the shortened backbone's features. Raises one SurgeryError listing every problem.
  """
  problems = []
  n_src = model_lib.num_blocks(source_backbone)
  want_blocks = [f'block_{i}' for i in range(n_src - drop_last)]
  got_blocks = rules.block_names(params)
  if got_blocks != want_blocks:
    problems.append(f'backbone blocks {got_blocks}, expected {want_blocks}')
  extra = sorted(set(params['backbone']) - set(got_blocks))
  if extra:
    problems.append(f'unexpected backbone entries {extra}')
  if source_params is not None:
    src = rules.flatten({'backbone': source_params['backbone']})
    for path, x in rules.flatten({'backbone': params['backbone']}).items():
      if path not in src:
        problems.append(f'{path} not in the source')
      elif src[path].shape != x.shape or not bool(jax.numpy.array_equal(src[path], x)):
        problems.append(f'{path} differs from the source checkpoint')
  head = params['head']
  want_head = [f'layer_{i}' for i in range(len(head_hidden))] + ['out']
  if sorted(head) != sorted(want_head):
    problems.append(f'head layers {sorted(head)}, expected {want_head}')
  else:
    widths = list(head_hidden) + [num_outputs]
    for name, width in zip(want_head, widths):
      if head[name]['kernel'].shape[1] != width:
        problems.append(f'head/{name} has {head[name]["kernel"].shape[1]} outputs, expected {width}')
    for prev, name in zip(want_head, want_head[1:]):
      if head[name]['kernel'].shape[0] != head[prev]['kernel'].shape[1]:
        problems.append(f'head/{name} input {head[name]["kernel"].shape[0]} ≠ head/{prev} output')
  if problems:
    raise SurgeryError('; '.join(problems))
  return {'blocks': got_blocks, 'head': want_head,
          'feature_dim': int(head[want_head[0]]['kernel'].shape[0]),
          'params': int(sum(x.size for x in jax.tree_util.tree_leaves(params)))}


def surgery(source: str, *, drop_last: int, head_hidden: tuple[int, ...], num_outputs: int,
            key: jax.Array | None = None, input_shape: tuple[int, ...] = (28, 28, 1)) -> tuple[dict[str, Any], Any]:
  """(spec, params): the source checkpoint's backbone minus its last `drop_last` blocks + an MLP head.

  The same path as a fine-tune with `transfer.drop_last_blocks` (strict `transfer.init_from`), validated.
  """
  backbone = transfer.source_backbone_spec(source)
  spec = {'backbone': model_lib.drop_last_blocks(backbone, drop_last) if drop_last else copy.deepcopy(backbone),
          'head': ({'name': 'mlp', 'num_outputs': num_outputs, 'hidden': list(head_hidden)} if head_hidden
                   else {'name': 'linear', 'num_outputs': num_outputs})}
  model = model_lib.build(spec)
  variables = model.init(key if key is not None else jax.random.key(0), jax.numpy.zeros((1, *input_shape)))
  params, _ = transfer.init_from(source, variables['params'], variables.get('batch_stats', {}), drop_last=drop_last)
  validate_surgery(params, backbone, drop_last=drop_last, head_hidden=tuple(head_hidden), num_outputs=num_outputs)
  return spec, params
