"""Checkpoint → new model: restore the backbone, re-initialise the head, optional surgery.

`init_from(path, params, batch_stats, drop_last)` is the one place where a pretrained backbone enters a
model. Steps: read the checkpoint's shapes; compare them with the target backbone (strict: any missing,
unexpected or shape-mismatched parameter raises one error listing every offending path, except the
blocks deliberately dropped with `drop_last_blocks`); restore ONLY the `backbone` subtree (Orbax partial
restore, so the old head is never read); check that every leaf really arrived (Orbax can silently
restore part of a tree, orbax#2972); keep the target's freshly initialised head.

LoRA: the only target leaves a checkpoint may lack are LoRA adapters (`…/lora_a`, `…/lora_b`, see
models/transformer.py), so a plain encoder checkpoint restores into a model with adapters (`trainable=
'lora:R'`); those adapters keep their fresh init (A random, B zero: the restored model computes exactly the
checkpoint's outputs). Adapters the checkpoint has but the target lacks are unexpected as any leaf is (merge
them first: `jaxtransfer export --merge`, jaxtransfer/lora.py).
"""

from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxtransfer import checkpoint, errors, rules
from jaxtransfer.models import model as model_lib


class TransferError(errors.Error):
  """The checkpoint's backbone does not fit the target backbone."""


def source_backbone_spec(path: str, drop_last: int = 0) -> dict[str, Any]:
  """The backbone spec stored in the checkpoint at `path`, with its last `drop_last` blocks removed."""
  mngr, step = checkpoint.open_for_reading(path)
  spec = checkpoint.read_meta(mngr, step)['model_spec']['backbone']
  return model_lib.drop_last_blocks(spec, drop_last) if drop_last else spec


def check_fit(stored: dict[str, tuple[int, ...]], target: dict[str, tuple[int, ...]], *,
              dropped_from: int | None = None, what: str = 'params') -> None:
  """Raise one TransferError naming every backbone path that is missing, unexpected or mis-shaped.

  `stored`/`target` map '/'-joined paths to shapes. Stored blocks numbered ≥ `dropped_from` are the ones
  removed on purpose by `drop_last_blocks` and are skipped. Target LoRA adapters (`rules.is_adapter`) may
  be missing: they start fresh.
  """
  def kept(path: str) -> bool:
    index = rules.block_index(path.split('/')[1])
    return dropped_from is None or index is None or index < dropped_from

  stored = {p: s for p, s in stored.items() if p.startswith('backbone/') and kept(p)}
  problems = []
  mismatched = [f'{p} (checkpoint {stored[p]}, model {target[p]})'
                for p in target if p in stored and tuple(stored[p]) != tuple(target[p])]
  for label, paths in (('shape mismatch', mismatched),
                       ('missing in checkpoint', [p for p in target if p not in stored and not rules.is_adapter(p)]),
                       ('unexpected in checkpoint', [p for p in stored if p not in target])):
    if paths:
      problems.append(f'{label}: {", ".join(paths)}')
  if any(rules.is_adapter(p) and p not in target for p in stored):
    problems.append('the checkpoint holds LoRA adapters: merge them into its kernels first (jaxtransfer export '
                    '--merge) or give the model the same lora_rank')
  if problems:
    raise TransferError(f'checkpoint backbone does not fit the model [{what}]: ' + '; '.join(problems))


def init_from(path: str, params: Any, batch_stats: Any, *, drop_last: int = 0) -> tuple[Any, Any]:
  """(params, batch_stats) with the backbone restored from the checkpoint at `path`, the head untouched.

  `params`/`batch_stats` are the target model's freshly initialised variables; restored arrays take
  their shardings. `drop_last` is how many of the checkpoint's last backbone blocks the target dropped.
  LoRA adapters of the target that the checkpoint lacks keep their values; they must have been initialised
  (A ≠ 0), since an adapter with A = B = 0 gets zero gradients and never trains.
  """
  mngr, step = checkpoint.open_for_reading(path)
  stored_items = checkpoint.read_meta(mngr, step).get('items', ())
  dropped_from = len(rules.block_names(params)) if drop_last else None
  restored = {}
  for item, target in (('params', params), ('batch_stats', batch_stats)):
    target_bb = (target or {}).get('backbone', {})
    target_shapes = {'backbone/' + p: tuple(x.shape) for p, x in rules.flatten(target_bb).items()}
    stored = checkpoint.item_shapes(mngr, step, item) if item in stored_items else {}
    check_fit(stored, target_shapes, dropped_from=dropped_from, what=item)
    if not target_shapes:
      restored[item] = target
      continue
    # Fresh LoRA adapters (absent from the checkpoint) are not read: they keep the target's values.
    flat = flax.traverse_util.flatten_dict(target_bb, sep='/')
    fresh = {p: x for p, x in flat.items() if 'backbone/' + p not in stored}
    _check_initialised(fresh)
    abstract = {'backbone': flax.traverse_util.unflatten_dict(
        {p: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for p, x in flat.items() if p not in fresh},
        sep='/')}
    out = checkpoint.restore_subtree(mngr, step, item, abstract)
    lost = sorted(set(rules.flatten(abstract)) - set(rules.flatten(out)))
    if lost:
      raise TransferError(f'checkpoint {path}: restore returned no value for {", ".join(lost)}')
    backbone = {**flax.traverse_util.flatten_dict(out['backbone'], sep='/'), **fresh}
    restored[item] = {**target, 'backbone': flax.traverse_util.unflatten_dict(
        {p: backbone[p] for p in flat}, sep='/')}   # the target's order of leaves
  return restored['params'], restored['batch_stats']


def _check_initialised(fresh: dict[str, Any]) -> None:
  """TransferError if a fresh LoRA adapter pair is all zero (A = B = 0: both gradients are zero forever)."""
  dead = [p for p, x in fresh.items() if p.endswith('/lora_a') and not bool(jax.device_get(jnp.any(x != 0)))]
  if dead:
    raise TransferError(f'LoRA adapter(s) backbone/{", backbone/".join(dead[:3])}'
                        + (f' (+{len(dead) - 3} more)' if len(dead) > 3 else '')
                        + ' are all zero: A must start random (an adapter with A = B = 0 never trains)')


def head_from_class_names(path: str, params: Any, class_names: list[str]) -> Any:
  """`params` with the head's output layer warm-started from the checkpoint's outputs of the same classes.

  For each target class, the column of the checkpoint's `head/out` kernel (and its bias) whose class has
  the same name is copied (task A's '0'…'9' outputs become task B's digit outputs): the head starts
  from A's answer instead of from noise. The rest of the head stays as initialised. A target class the
  checkpoint does not know, or an output layer of another width, is an error.
  """
  mngr, step = checkpoint.open_for_reading(path)
  source_names = list(checkpoint.read_meta(mngr, step).get('class_names') or [])
  missing = [n for n in class_names if n not in source_names]
  if missing:
    raise TransferError(f'transfer.head_init=class_names: class(es) {missing[:5]} not among the checkpoint\'s '
                        f'{len(source_names)} classes')
  stored = checkpoint.item_shapes(mngr, step, 'params')
  target = params['head'].get('out') if isinstance(params.get('head'), dict) else None
  if target is None or 'head/out/kernel' not in stored:
    raise TransferError('transfer.head_init=class_names needs a head with an output layer `out` on both sides')
  if stored['head/out/kernel'][0] != target['kernel'].shape[0]:
    raise TransferError(f'transfer.head_init=class_names: checkpoint head/out/kernel {stored["head/out/kernel"]} '
                        f'does not take the model\'s {target["kernel"].shape[0]} features')
  abstract = {'head': {'out': {k: jax.ShapeDtypeStruct(stored[f'head/out/{k}'], target[k].dtype, sharding=target[k].sharding)
                               for k in ('kernel', 'bias')}}}
  source = checkpoint.restore_subtree(mngr, step, 'params', abstract)['head']['out']
  columns = np.asarray([source_names.index(n) for n in class_names])
  out = {'kernel': jax.device_put(np.asarray(source['kernel'])[:, columns], target['kernel'].sharding),
         'bias': jax.device_put(np.asarray(source['bias'])[columns], target['bias'].sharding)}
  return {**params, 'head': {**params['head'], 'out': out}}
