"""Orbax checkpoints: the bridge between training stages.

Layout of `<workdir>/checkpoints/<step>/`:
  params/       PyTree item {'backbone': …, 'head': …}
  batch_stats/  PyTree item, same shape of tree (only for backbones that normalise)
  opt_state/    PyTree item, the optax state (no leaves for frozen parameters)
  meta/         JSON: {'step', 'model_spec', 'config', 'class_names', 'items'}: a checkpoint alone is
                enough to rebuild its backbone.
Orbax writes each step to a temporary directory and renames it when complete (async, in a background
thread), so a process killed mid-save leaves no directory that `latest_step` would take for a checkpoint.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxtransfer import errors, rules

ITEMS = ('params', 'batch_stats', 'opt_state', 'meta')


class CheckpointError(errors.Error):
  """A checkpoint that is missing, incomplete or does not fit the model it is restored into."""


def _handlers() -> dict[str, ocp.CheckpointHandler]:
  return {'params': ocp.PyTreeCheckpointHandler(), 'batch_stats': ocp.PyTreeCheckpointHandler(),
          'opt_state': ocp.PyTreeCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}


def manager(directory: str, *, keep: int = 2, async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` (the `checkpoints/` dir of a workdir)."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                           max_to_keep=None, enable_async_checkpointing=False)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=_handlers())


def save(mngr: ocp.CheckpointManager, step: int, *, params: Any, batch_stats: Any, opt_state: Any,
         meta: dict[str, Any]) -> None:
  """Save one step (asynchronously when the manager is async)."""
  items = {'params': ocp.args.PyTreeSave(params), 'opt_state': ocp.args.PyTreeSave(opt_state)}
  if jax.tree_util.tree_leaves(batch_stats):
    items['batch_stats'] = ocp.args.PyTreeSave(batch_stats)
  meta = dict(meta, step=step, items=sorted(items) + ['meta'])
  items['meta'] = ocp.args.JsonSave(meta)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)


def _restore_args(abstract: Any) -> Any:
  return ocp.checkpoint_utils.construct_restore_args(abstract)


def restore(mngr: ocp.CheckpointManager, step: int, *, params: Any, batch_stats: Any,
            opt_state: Any) -> tuple[Any, Any, Any]:
  """Restore a full training state (resume) into the given abstract or concrete targets."""
  items = {'params': params, 'opt_state': opt_state}
  if jax.tree_util.tree_leaves(batch_stats):
    items['batch_stats'] = batch_stats
  args = {k: ocp.args.PyTreeRestore(item=v, restore_args=_restore_args(v)) for k, v in items.items()}
  out = mngr.restore(step, args=ocp.args.Composite(**args))
  return out['params'], out.get('batch_stats', batch_stats) if 'batch_stats' in items else batch_stats, out['opt_state']


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The JSON meta item of one step."""
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def item_shapes(mngr: ocp.CheckpointManager, step: int, item: str) -> dict[str, tuple[int, ...]]:
  """{'/'-joined path: shape} of one PyTree item as stored on disk (no array is read)."""
  md = mngr.item_metadata(step)[item]
  tree = md.tree if hasattr(md, 'tree') else md
  return {path: tuple(leaf.shape) for path, leaf in rules.flatten(tree).items()}


def locate(path: str) -> tuple[str, int | None]:
  """(checkpoints dir, step or None for the latest) for a workdir, a checkpoints dir or a step dir."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise CheckpointError(f'no checkpoint directory at {path}')
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return os.path.join(path, 'checkpoints'), None
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, 'params')):
    return os.path.dirname(path), int(base)
  return path, None


def open_for_reading(path: str) -> tuple[ocp.CheckpointManager, int]:
  """A read-only manager and the step to read for `path` (see `locate`); raises if there is none."""
  directory, step = locate(path)
  mngr = manager(directory, read_only=True, async_save=False)
  steps = mngr.all_steps()
  if step is None:
    if not steps:
      raise CheckpointError(f'no complete checkpoint in {directory}')
    step = max(steps)
  elif step not in steps:
    raise CheckpointError(f'step {step} is not a complete checkpoint in {directory} (have {sorted(steps)})')
  return mngr, step


def restore_subtree(mngr: ocp.CheckpointManager, step: int, item: str, abstract: Any | None) -> Any:
  """Restore only the part of item `item` that `abstract` names (Orbax partial restore).

  `abstract` leaves are `jax.ShapeDtypeStruct`s with shardings: arrays come back laid out as asked,
  whatever device layout saved them.
  """
  if abstract is None:  # Everything, as saved (single-process inspection, tests).
    return mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.PyTreeRestore()}))[item]
  args = ocp.args.PyTreeRestore(item=abstract, restore_args=_restore_args(abstract), partial_restore=True)
  return mngr.restore(step, args=ocp.args.Composite(**{item: args}))[item]
