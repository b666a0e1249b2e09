"""LoRA adapters after training: fold them into plain kernels, export a run as a plain encoder checkpoint.

    params, spec = lora.merge(params, spec)          # W ← W + (alpha/R)·A·B for every adapted kernel
    lora.export('runs/lora_ft', 'runs/lora_merged')  # = jaxtransfer export --workdir=runs/lora_ft --out=… --merge

The adapters themselves are parameters of the Transformer encoder (`lora_a` (in, R) and `lora_b` (R, out)
next to the `kernel` they adapt, models/transformer.py); `trainable='lora:R'` (rules.py) trains only them
and the head. A merged model computes what the unmerged one does (up to float rounding) with no adapter
left: its spec has `lora_rank` 0, so `transfer.init_from` takes the exported checkpoint like any other and
a later fine-tune can put fresh adapters on top of it.

Export is merge-only, and not merge-on-save: a training run keeps its adapters (its checkpoints resume
exactly, optimizer state included), and the merged checkpoint is written once, on request, elsewhere.
"""

import copy
import os
from collections.abc import Mapping
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxtransfer import checkpoint, errors, rules
from jaxtransfer.models import transformer

LORA_KEYS = ('lora_rank', 'lora_targets', 'lora_alpha')   # backbone spec fields of the adapters


class LoRAError(errors.Error):
  """Adapters that do not fit their spec or their kernel, or a run with no adapters to merge."""


def scale(backbone_spec: Mapping[str, Any]) -> float:
  """alpha / R: the factor of the adapter product (x·A)·B in the encoder's layers."""
  rank = int(backbone_spec.get('lora_rank', 0) or 0)
  if rank < 1:
    raise LoRAError(f'backbone spec has lora_rank={rank}: no adapters')
  return float(backbone_spec.get('lora_alpha', transformer.LORA_ALPHA)) / rank


def with_adapters(backbone_spec: Mapping[str, Any], trainable: str, *, targets: str = transformer.LORA_TARGETS,
                  alpha: float = transformer.LORA_ALPHA) -> dict[str, Any]:
  """The backbone spec a run with `trainable` builds: for `'lora:R'` on the Transformer encoder, `backbone_spec`
  with `lora_rank=R`, `lora_targets=targets`, `lora_alpha=alpha`; otherwise `backbone_spec` unchanged.

  Other backbones are left as they are (`rules.freeze_rules` then says they have no adapters). A spec that
  already carries adapters of another rank (an unmerged LoRA checkpoint) is a ConfigError.
  """
  out = copy.deepcopy(dict(backbone_spec))
  rank = rules.lora_rank(trainable)
  if rank is None or out.get('name') != 'transformer':
    return out
  if out.get('lora_rank', 0) not in (0, rank):
    raise errors.ConfigError(f'trainable={trainable!r}, but the backbone spec already has lora_rank={out["lora_rank"]} '
                             '(merge its adapters first: jaxtransfer export --merge)')
  out.update(lora_rank=rank, lora_targets=targets, lora_alpha=alpha)
  return out


def adapters(tree: Any) -> dict[str, Any]:
  """{'/'-joined path: leaf} of every LoRA adapter leaf (`…/lora_a`, `…/lora_b`) of a nested-dict `tree`."""
  return {p: x for p, x in flax.traverse_util.flatten_dict(tree, sep='/').items() if rules.is_adapter(p)}


def replace(tree: Any, leaves: Mapping[str, Any]) -> Any:
  """`tree` with the leaves at the '/'-joined paths of `leaves` replaced (every path must exist)."""
  if not leaves:
    return tree
  flat = flax.traverse_util.flatten_dict(tree, sep='/')
  unknown = [p for p in leaves if p not in flat]
  if unknown:
    raise LoRAError(f'no leaf {unknown[0]} to replace')
  return flax.traverse_util.unflatten_dict({**flat, **leaves}, sep='/')


def merge(params: Any, spec: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
  """(params with every adapter folded into its kernel and removed, the spec with `lora_rank` 0).

  `spec` is the model spec (`{'backbone': …, 'head': …}`) that built `params`; each `kernel` with
  `lora_a` (in, R) and `lora_b` (R, out) beside it becomes kernel + (alpha/R)·A·B reshaped to the kernel's
  shape (in float32 at full precision, then the kernel's dtype). Pure (also under `jax.jit` with a static
  spec). A spec without adapters and params without adapter leaves come back unchanged; adapters whose rank
  or shapes do not fit the spec or their kernel are a LoRAError.
  """
  backbone = spec['backbone']
  rank = int(backbone.get('lora_rank', 0) or 0)
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  modules = sorted({p.rsplit('/', 1)[0] for p in flat if rules.is_adapter(p)})
  if not rank:
    if modules:
      raise LoRAError(f'params hold LoRA adapters ({modules[0]}/…) but the spec has lora_rank 0')
    return params, copy.deepcopy(dict(spec))
  if not modules:
    raise LoRAError(f'the spec has lora_rank={rank} but the params hold no LoRA adapters (…/lora_a, …/lora_b)')
  s = scale(backbone)
  out = dict(flat)
  for module in modules:
    kernel, a, b = (flat.get(f'{module}/{k}') for k in ('kernel', 'lora_a', 'lora_b'))
    if kernel is None or a is None or b is None:
      raise LoRAError(f'{module}: an adapter needs kernel, lora_a and lora_b side by side')
    n_in, n_out = a.shape[0], b.shape[-1]
    if a.shape != (n_in, rank) or b.shape != (rank, n_out) or n_in * n_out != kernel.size:
      raise LoRAError(f'{module}: lora_a {tuple(a.shape)} and lora_b {tuple(b.shape)} do not fit rank {rank} and '
                      f'kernel {tuple(kernel.shape)}')
    delta = s * jnp.matmul(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                           precision=jax.lax.Precision.HIGHEST)
    folded = jnp.reshape(kernel, (n_in, n_out)).astype(jnp.float32) + delta
    out[f'{module}/kernel'] = jnp.reshape(folded, kernel.shape).astype(kernel.dtype)
    del out[f'{module}/lora_a'], out[f'{module}/lora_b']
  merged_spec = copy.deepcopy(dict(spec))
  merged_spec['backbone'] = {k: v for k, v in backbone.items() if k not in LORA_KEYS[1:]}
  merged_spec['backbone']['lora_rank'] = 0
  return flax.traverse_util.unflatten_dict(out, sep='/'), merged_spec


def export(path: str, out: str) -> dict[str, Any]:
  """Write the newest checkpoint of run `path` with its adapters merged as a plain checkpoint under `out`.

  `<out>/checkpoints/<step>/` holds `params` (merged), `batch_stats` if the run has them, and `meta`: the
  run's meta (config, class names, tokenizer …) with `model_spec` at lora_rank 0 and an `export` record
  (source step directory, the merged rank/alpha/targets). No optimizer state: it belongs to the adapters.
  Orbax writes the step to a temporary directory and renames it when complete, so a killed export leaves
  no checkpoint. A run without adapters, or an `out` that already holds a checkpoint, is a one-line error.
  Returns a summary.
  """
  mngr, step = checkpoint.open_for_reading(path)
  source = checkpoint.step_dir(mngr, step)
  meta = checkpoint.read_meta(mngr, step)
  spec = meta.get('model_spec') or {}
  backbone = spec.get('backbone') or {}
  if not backbone.get('lora_rank'):
    raise LoRAError(f'checkpoint {source} has no LoRA adapters to merge (model_spec lora_rank 0)')
  out_dir = os.path.join(os.path.abspath(os.path.expanduser(out)), 'checkpoints')
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise LoRAError(f'{out_dir} is not empty (a checkpoint is there already): export to a new --out')
  params, merged_spec = merge(checkpoint.restore_subtree(mngr, step, 'params', None), spec)
  items = {'params': ocp.args.PyTreeSave(params)}
  if 'batch_stats' in meta.get('items', ()):
    items['batch_stats'] = ocp.args.PyTreeSave(checkpoint.restore_subtree(mngr, step, 'batch_stats', None))
  record = {'from': source, 'merged': {k: backbone[k] for k in LORA_KEYS if k in backbone}}
  meta = dict(meta, model_spec=merged_spec, step=step, items=sorted(items) + ['meta'], export=record)
  items['meta'] = ocp.args.JsonSave(meta)
  writer = checkpoint.manager(out_dir, keep=1, async_save=False)
  writer.save(step, args=ocp.args.Composite(**items), force=True)
  writer.wait_until_finished()
  writer.close()
  n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
  return {'checkpoint': os.path.join(out_dir, str(step)), 'from': source, 'lora_rank': backbone['lora_rank'],
          'parameters': n_params}
