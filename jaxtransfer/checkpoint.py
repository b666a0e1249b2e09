"""Orbax checkpoints: the bridge between training stages.

Layout of `<workdir>/checkpoints/<step>/`:
  params/       PyTree item {'backbone': …, 'head': …}
  batch_stats/  PyTree item, same shape of tree (only for backbones that normalise)
  opt_state/    PyTree item, the optax state (no leaves for frozen parameters)
  meta/         JSON: {'step', 'model_spec', 'config', 'class_names', 'items'}: a checkpoint alone is
                enough to rebuild its backbone.
Orbax writes each step to a temporary directory and renames it when complete (async, in a background
thread), so a process killed mid-save leaves no directory that `latest_step` would take for a checkpoint.

A step that was complete can still be damaged later (a truncated or deleted file). Every restore of a
PyTree item goes through `verify` first, which reads the stored bytes of each value one at a time: a
damaged step is reported as one `CheckpointError` naming the step and the file, before Orbax starts its
concurrent reads (whose failure would leave a ~150-line TensorStore traceback and stray tracebacks from
reads still in flight). Any other Orbax read failure is wrapped into the same one-line error. Resuming
falls back to the newest step that restores (`newest_restorable`).
"""

import contextlib
import logging
import os
import re
import time
from typing import Any, Iterator, Sequence

import jax
import orbax.checkpoint as ocp
import tensorstore as ts

from jaxtransfer import errors, rules

ITEMS = ('params', 'batch_stats', 'opt_state', 'meta')
RECHECK_SECONDS = 1.0        # pause before a step that failed to read is read once more
DAMAGED_SUFFIX = '.damaged'   # a damaged step set aside by `newest_restorable`: Orbax lists only `<step>` dirs

log = logging.getLogger('jaxtransfer')


class CheckpointError(errors.Error):
  """A checkpoint that is missing, incomplete or does not fit the model it is restored into."""


def _handlers() -> dict[str, ocp.CheckpointHandler]:
  return {'params': ocp.PyTreeCheckpointHandler(), 'batch_stats': ocp.PyTreeCheckpointHandler(),
          'opt_state': ocp.PyTreeCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}


def manager(directory: str, *, keep: int = 2, async_save: bool = True,
            read_only: bool = False) -> ocp.CheckpointManager:
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
  verify(mngr, step, list(items))
  args = {k: ocp.args.PyTreeRestore(item=v, restore_args=_restore_args(v)) for k, v in items.items()}
  with _reading(mngr, step):
    out = mngr.restore(step, args=ocp.args.Composite(**args))
  return out['params'], out.get('batch_stats', batch_stats) if 'batch_stats' in items else batch_stats, out['opt_state']


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The JSON meta item of one step."""
  with _reading(mngr, step, 'meta'):
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  if not isinstance(meta, dict):
    raise CheckpointError(f'checkpoint {step_dir(mngr, step)} is damaged: meta is not a JSON object')
  return meta


def step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
  """The directory of one step."""
  return os.path.join(os.fspath(mngr.directory), str(step))


def verify(mngr: ocp.CheckpointManager, step: int, items: Sequence[str]) -> None:
  """Raise a one-line `CheckpointError` unless every stored value of the PyTree `items` can be read.

  Reads the stored (compressed) bytes of each value one at a time through TensorStore's OCDBT key-value
  store — the layer Orbax writes PyTree items with — so a truncated, missing or undecodable file is found
  before Orbax starts its concurrent reads, whose failure would leave stray tracebacks of reads still in
  flight. Costs one extra read of the item's bytes (milliseconds for these models).
  """
  for item in items:
    item_dir = os.path.join(step_dir(mngr, step), item)
    if not os.path.isdir(item_dir):
      raise CheckpointError(f'checkpoint {step_dir(mngr, step)} is damaged: {item_dir} is missing')
    key = None
    try:
      store = ts.KvStore.open({'driver': 'ocdbt', 'base': {'driver': 'file', 'path': item_dir + '/'}}).result()
      keys = store.list().result()
      for key in keys:
        read = store.read(key).result()
        if read.state != 'value' or not read.value:  # A deleted data file reads as empty: no stored value is.
          where = _value_file(item_dir, key)
          raise CheckpointError(f'checkpoint {step_dir(mngr, step)} is damaged: cannot read {where} (missing)')
    except errors.Error:
      raise
    except Exception as e:  # TensorStore raises ValueError with a status line; anything else is damage too.
      where = _value_file(item_dir, key) if key is not None else item_dir
      raise CheckpointError(f'checkpoint {step_dir(mngr, step)} is damaged: cannot read {where} '
                            f'({_reason(e)})') from e
    if not keys:  # Orbax never writes an empty PyTree item, so no keys means no readable manifest.
      raise CheckpointError(f'checkpoint {step_dir(mngr, step)} is damaged: {item_dir} holds no readable value '
                            f'({os.path.join(item_dir, "manifest.ocdbt")} missing or empty)')


def _value_file(item_dir: str, key: bytes) -> str:
  """'<data file> (value <key>)': the file under `item_dir` that holds the stored value `key`.

  Best effort, from TensorStore's dump of the OCDBT B-tree (`tensorstore.ocdbt.dump`, public API), whose
  entries locate a value as 'value:<base>:<relative path>:<offset>:<length>'; if the tree itself cannot be
  read, '<item_dir> (value <key>)'.
  """
  name = f"(value '{key.decode(errors='replace')}')"
  try:
    base = ts.KvStore.open({'driver': 'file', 'path': item_dir + '/'}).result()
    pending = [ts.ocdbt.dump(base).result()['versions'][-1]['root']['location']]
    while pending:
      node = ts.ocdbt.dump(base, pending.pop()).result()
      for entry in node.get('entries', ()):
        if entry.get('key') == key and isinstance(entry.get('indirect_value'), str):
          prefix, _, _ = entry['indirect_value'].split(':', 1)[1].rsplit(':', 2)
          return f'{os.path.join(item_dir, *prefix.split(":", 1))} {name}'
        pending += [v for v in entry.values() if isinstance(v, str) and v.startswith('btreenode:')]
  except Exception:  # pylint: disable=broad-except  (only the message gets less precise)
    pass
  return f'{item_dir} {name}'


def newest_restorable(mngr: ocp.CheckpointManager) -> tuple[int | None, dict[str, Any] | None]:
  """(step, meta) of the newest checkpoint whose meta and items restore, or (None, None) if there is none.

  A damaged newer step is skipped with a one-line warning naming the step and why, and set aside as
  `<step>.damaged` (kept for inspection; Orbax ignores it), so the resumed run can save that step again.
  Raises `CheckpointError` if steps exist but none restores: starting over would silently discard them.
  """
  damaged: list[tuple[int, CheckpointError]] = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = _readable_meta(mngr, step)
    except CheckpointError:
      time.sleep(RECHECK_SECONDS)   # a transient read error (open-file limit, a network file system's hiccup)
      try:                          # must not discard a good newest step: it is damaged if it fails twice
        meta = _readable_meta(mngr, step)
      except CheckpointError as e:
        log.warning('skipping damaged checkpoint step %d: %s', step, e)
        damaged.append((step, e))
        continue
    for bad, _ in damaged:
      _set_aside(step_dir(mngr, bad))
    if damaged:
      if jax.process_count() > 1:   # every process must see the renames before Orbax lists the steps again
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices('jaxtransfer_checkpoint_set_aside')
      mngr.reload()
    return step, meta
  if damaged:
    raise CheckpointError(f'no checkpoint in {os.fspath(mngr.directory)} restores (newest: {damaged[0][1]}); '
                          'move the damaged step directories away to start over')
  return None, None


def _readable_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The step's meta, after checking that its meta and every item read (`CheckpointError` otherwise)."""
  meta = read_meta(mngr, step)
  items = meta.get('items') or [i for i in ITEMS if os.path.isdir(os.path.join(step_dir(mngr, step), i))]
  verify(mngr, step, [i for i in items if i != 'meta'])
  return meta


def _set_aside(path: str) -> None:
  target, n = path + DAMAGED_SUFFIX, 1
  while os.path.exists(target):
    target, n = f'{path}{DAMAGED_SUFFIX}.{n}', n + 1
  if jax.process_index() == 0:
    os.rename(path, target)
  log.warning('damaged checkpoint %s set aside as %s', path, target)


def _reason(e: BaseException) -> str:
  """'<type>: <first line>' of the innermost exception of e's chain (TensorStore's status line)."""
  seen = {id(e)}
  while (nxt := e.__cause__ or e.__context__) is not None and id(nxt) not in seen:
    e = nxt
    seen.add(id(e))
  line = (str(e).strip().splitlines() or [''])[0]
  return f'{type(e).__name__}: {line if len(line) <= 240 else line[:237] + "..."}'


def _named_file(e: BaseException, directory: str) -> str:
  """The first path under `directory` that e's chain of messages names, else ''.

  The message text is used for nothing else: it only makes the one-line error name the file.
  """
  x, hops = e, 0
  while x is not None and hops < 8:
    found = re.search(re.escape(directory) + r'/[^\s\'"\\]*', str(x))
    if found:
      return found.group(0).rstrip('.,:;')
    x, hops = x.__cause__ or x.__context__, hops + 1
  return ''


@contextlib.contextmanager
def _reading(mngr: ocp.CheckpointManager, step: int, item: str = '') -> Iterator[None]:
  """Turn an Orbax/TensorStore failure while reading `step` (`item` of it) into a one-line CheckpointError."""
  try:
    yield
  except errors.Error:
    raise
  except Exception as e:  # Orbax raises OSError, ValueError or a bare Exception (TensorStore read failures).
    if not isinstance(e, (OSError, ValueError)) and type(e) is not Exception:
      raise  # A bug (TypeError, …) stays a traceback.
    directory = step_dir(mngr, step)
    where = _named_file(e, directory) or os.path.join(directory, item)
    raise CheckpointError(f'checkpoint {directory}: cannot read {where} ({_reason(e)})') from e


def item_shapes(mngr: ocp.CheckpointManager, step: int, item: str) -> dict[str, tuple[int, ...]]:
  """{'/'-joined path: shape} of one PyTree item as stored on disk (no array is read)."""
  with _reading(mngr, step, item):
    md = mngr.item_metadata(step)[item]
  if md is None:
    raise CheckpointError(f'checkpoint {step_dir(mngr, step)} is damaged: no metadata for item {item!r}')
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
  verify(mngr, step, [item])
  if abstract is None:  # Everything, as saved (single-process inspection, tests).
    args = ocp.args.PyTreeRestore()
  else:
    args = ocp.args.PyTreeRestore(item=abstract, restore_args=_restore_args(abstract), partial_restore=True)
  with _reading(mngr, step, item):
    return mngr.restore(step, args=ocp.args.Composite(**{item: args}))[item]
