"""THE training loop: pretraining, fine-tuning and multi-task training all run through `train`.

What kind of run it is — the head, which examples train, the loss, the metrics, extra state — is the
business of the run's objective (`config.objective`, `jaxtransfer/objectives/`); the steps compiled here
come from `steps.py`, which the feature cache and checkpoint evaluation share.

Initialisation order (big_vision's, written down because getting it wrong silently wastes a run):
  1. resume: the workdir holds a checkpoint of its own → restore params, BatchNorm statistics and
     optimizer state, and continue at its step (a preempted fine-tune never reloads the pretrained
     weights);
  2. `config.transfer.init_from`: the backbone from a pretraining checkpoint, a fresh head;
  3. from scratch: the model's own initialisers.
Every step is a pure function of (state, batch, key) with `key = fold_in(PRNGKey(seed), step)` and the
batch at step s a pure function of (data seed, s), so a resumed run ends bit-identical to an
uninterrupted one.

Divergence (`config.train.on_nonfinite`): each compiled step also checks, on the device, that the loss and
the new training state are finite and keeps the first step where they were not (`guard_step`); the host
reads that at the moments it syncs anyway — log steps, evaluations, right before every checkpoint save and
at the end — and raises `NonFiniteError` naming the step and the last good checkpoint. So no checkpoint
holds a non-finite value. With 'skip' the optimizer is `optax.apply_if_finite`: a step with non-finite
gradients changes nothing (BatchNorm statistics and objective state included) and is counted
(`train/skipped`); `train.max_nonfinite` such steps in a row stop the run the same way.
"""

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtransfer import (checkpoint, config as config_lib, errors, features, memory, monitors, objectives,
                         optim, rules, sharding, steps, transfer)
from jaxtransfer.data import catalog, pipeline, preprocess
from jaxtransfer.models import model as model_lib
from jaxtransfer.text import inputs as text_inputs
from jaxtransfer.progress import MetricWriter, ProgressLog

log = logging.getLogger('jaxtransfer')

NONFINITE_POLICIES = ('stop', 'skip')
# Why `guard_step` flagged a step (the second entry of its device-side record).
_LOSS, _SKIPPED, _STATE = 1, 2, 3


class NonFiniteError(errors.Error):
  """The run diverged: its loss or training state became NaN/inf (see `config.train.on_nonfinite`)."""


@dataclasses.dataclass
class Outcome:
  """What a `train` call leaves behind (besides the workdir)."""
  params: Any
  batch_stats: Any
  opt_state: Any
  step: int
  init: str                      # 'resume' | 'init_from' | 'scratch'
  metrics: dict[str, float]      # the final evaluation


def _all_finite(tree: Any) -> jax.Array:
  """Whether every float leaf of `tree` is finite (a device scalar; integer leaves always are)."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def _changing(params: Any, batch_stats: Any, labels: Any, frozen: tuple[str, ...]) -> tuple[Any, Any]:
  """(the parameters labelled TRAIN, the BatchNorm statistics outside the frozen blocks): what a step changes."""
  if labels is not None:
    params = jax.tree_util.tree_map(lambda p, label: p if label == rules.TRAIN else None, params, labels)
  if frozen and isinstance(batch_stats, dict) and 'backbone' in batch_stats:
    batch_stats = {**batch_stats, 'backbone': {k: v for k, v in batch_stats['backbone'].items() if k not in frozen}}
  return params, batch_stats


def guard_step(train_step: Any, objective: objectives.Objective, policy: str, max_nonfinite: int,
               labels: Any = None, frozen: tuple[str, ...] = ()) -> Any:
  """`train_step` plus the divergence check, in the same program (no extra host sync).

  (params, batch_stats, opt_state, bad, batch, key, step) → (params, batch_stats, opt_state, bad, metrics):
  `bad` = [first flagged step or -1, why (_LOSS | _SKIPPED | _STATE)] is carried from step to step.
  'stop' flags a non-finite loss or training state. 'skip' (the optimizer wrapped in
  `optax.apply_if_finite`) keeps the old BatchNorm statistics and objective state on a skipped step,
  reports `skipped` (the total so far) and flags `max_nonfinite` skipped steps in a row or a non-finite state.
  Only what a step can change is checked: with `labels` (`rules.freeze_labels`) the parameters that train,
  and the BatchNorm statistics of the blocks not in `frozen` — frozen leaves cannot become non-finite, and
  reducing over them cost ~5 s of compilation for a head-only EfficientNet-Lite0 step (0.8 s without).
  """
  keep_if = lambda ok, new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)

  def guarded(params, batch_stats, opt_state, bad, batch, key, step):
    new_params, new_stats, new_opt, metrics = train_step(params, batch_stats, opt_state, batch, key)
    if policy == 'skip':
      state = steps.tx_state(new_opt, objective)           # optax.ApplyIfFiniteState
      new_stats = keep_if(state.last_finite, new_stats, batch_stats)
      if objective.has_state:
        new_opt = {k: v if k == 'tx' else keep_if(state.last_finite, v, opt_state[k]) for k, v in new_opt.items()}
      metrics = {**metrics, 'skipped': state.total_notfinite}
      why = jnp.where(state.notfinite_count >= max_nonfinite, _SKIPPED, 0)
    else:
      why = jnp.where(jnp.isfinite(metrics['loss']), 0, _LOSS) if 'loss' in metrics else jnp.array(0)
    why = jnp.where((why == 0) & ~_all_finite((_changing(new_params, new_stats, labels, frozen), new_opt)), _STATE, why)
    bad = jnp.where((bad[0] < 0) & (why > 0), jnp.stack([step, why]).astype(jnp.int32), bad)
    return new_params, new_stats, new_opt, bad, metrics

  return guarded


def _check_finite(bad: jax.Array, policy: str, max_nonfinite: int, mngr: Any) -> None:
  """Raise `NonFiniteError` when `guard_step` flagged a step (one host read of two integers)."""
  step, why = (int(x) for x in sharding.to_host(bad))
  if step < 0:
    return
  mngr.wait_until_finished()
  last = mngr.latest_step()
  good = f'{os.path.join(str(mngr.directory), str(last))} (step {last})' if last is not None else 'none'
  what = {_LOSS: 'the loss became non-finite (NaN/inf)',
          _SKIPPED: f'{max_nonfinite} steps in a row had non-finite gradients and were skipped',
          _STATE: 'the parameters, BatchNorm statistics or optimizer state became non-finite (NaN/inf)'}[why]
  raise NonFiniteError(f'step {step}: {what} (train.on_nonfinite={policy}); nothing later was saved; '
                       f'last good checkpoint: {good}')


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> Outcome:
  """Train as `config` says, writing checkpoints and metrics under `workdir`.

  `stop_after` ends the run after that many steps of this call without a final checkpoint or evaluation
  — a preemption, for tests of resumption.
  """
  config_lib.validate(config)                  # first: a value out of range fails before any work
  objective = objectives.from_config(config)   # an unknown objective too
  policy, max_nonfinite = config.train.get('on_nonfinite', 'stop'), config.train.get('max_nonfinite', 10)
  if policy not in NONFINITE_POLICIES:
    raise errors.ConfigError(f'train.on_nonfinite: expected one of {NONFINITE_POLICIES}, got {policy!r}')
  if policy == 'skip' and max_nonfinite < 1:
    raise errors.ConfigError(f'train.max_nonfinite: expected ≥ 1 (skipped steps in a row), got {max_nonfinite}')
  os.makedirs(workdir, exist_ok=True)
  sharding.set_cpu_devices(config.mesh.get('cpu_devices', 0))   # before anything touches the devices
  sharding.initialize_distributed(config.get('distributed'))
  mesh = sharding.mesh_from_config(config.mesh)
  if not sharding.is_main_process():
    log.setLevel(logging.WARNING)     # only process 0 logs progress (and writes metrics, see MetricWriter)
  data_dir = config.input.data_dir or None
  manual_dir = config.input.manual_dir or None
  info = catalog.info(config.data, data_dir=data_dir, manual_dir=manual_dir)
  train_source = catalog.load(config.data, config.input.train_split, data_dir=data_dir, manual_dir=manual_dir)

  mngr = checkpoint.manager(os.path.join(workdir, 'checkpoints'), keep=config.train.keep_checkpoints)
  # Resume from the newest checkpoint that restores; damaged newer ones are set aside with a warning.
  start, resume_meta = checkpoint.newest_restorable(mngr)
  if start is not None:   # 'skip' wraps the optimizer state (optax.apply_if_finite): it cannot change on resume
    saved = resume_meta.get('config', {}).get('train', {}).get('on_nonfinite', 'stop')
    if (saved == 'skip') != (policy == 'skip'):
      raise errors.ConfigError(f'train.on_nonfinite={policy!r}, but the checkpoints in {workdir} were written with '
                               f"{saved!r}: the optimizer state differs; resume with that value or use a new workdir")
  # A text dataset (no image): its tokenizer — the resumed checkpoint's, init_from's or the config's — makes
  # the model inputs and travels in every checkpoint's meta (text/inputs.py).
  tokenizer = None
  if not info.image_shape:
    init_meta = (checkpoint.read_meta(*checkpoint.open_for_reading(config.transfer.init_from))
                 if config.transfer.init_from and start is None else None)
    tokenizer = text_inputs.tokenizer_for_run(config, resume_meta=resume_meta if start is not None else None,
                                              init_meta=init_meta, texts=lambda: text_inputs.source_texts(train_source))
    objective = objective.for_tokenizer(tokenizer)
  num_outputs = steps.num_outputs(config, objective.num_classes(info, tokenizer))
  indices = objective.train_examples(config, num_outputs)   # labels checked; None = every example
  train_source = objective.train_source(config, train_source)
  n_examples = len(indices) if indices is not None else len(train_source)
  # On resume the model is the one this workdir saved; init_from is never opened again.
  spec = (resume_meta['model_spec'] if start is not None
          else steps.model_spec(config, num_outputs, objective))
  if tokenizer is not None and start is None:
    spec = {**spec, 'backbone': text_inputs.fit_backbone(spec['backbone'], tokenizer)}
  model = model_lib.build(spec)
  key_init, key_train = jax.random.split(jax.random.key(config.seed))
  pre = (text_inputs.from_config(config.text, tokenizer) if tokenizer is not None
         else preprocess.from_config(config.input))
  # A backbone that init_from is about to overwrite is not randomly initialised (the head's values are the same).
  variables, var_shardings = steps.init_variables(model, key_init, steps.input_shape(config, info.image_shape, pre),
                                                  config.mesh, mesh,
                                                  random_backbone=start is not None or not config.transfer.init_from)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  param_sh, stats_sh = var_shardings['params'], var_shardings.get('batch_stats', {})

  labels = rules.freeze_labels(config.trainable, params)
  frozen = rules.frozen_blocks(labels)
  tx = optim.make(config.optim, labels, config.train.steps)
  if policy == 'skip':   # a step with non-finite gradients leaves the parameters and optimizer state as they are
    tx = optax.apply_if_finite(tx, max_nonfinite)
  # The objective's own state, if any, rides along in opt_state (checkpointed): {'tx': …, **state}.
  init_state = steps.opt_init(tx, objective)
  opt_sh = sharding.mirror_specs(jax.eval_shape(init_state, params), params, param_sh)
  opt_state = jax.jit(init_state, out_shardings=opt_sh)(params)

  if start is not None:
    init = 'resume'
    params, batch_stats, opt_state = checkpoint.restore(mngr, start, params=params, batch_stats=batch_stats,
                                                        opt_state=opt_state)
  elif config.transfer.init_from:
    init, start = 'init_from', 0
    params, batch_stats = transfer.init_from(config.transfer.init_from, params, batch_stats,
                                             drop_last=config.transfer.drop_last_blocks)
    if config.transfer.head_init == 'class_names':
      params = transfer.head_from_class_names(config.transfer.init_from, params, list(info.class_names))
    elif config.transfer.head_init != 'fresh':
      raise errors.ConfigError(f"transfer.head_init: expected 'fresh' or 'class_names', got "
                               f"{config.transfer.head_init!r}")
    # Optimizer state from the loaded weights: L2-SP keeps them as its anchor (Adam's zeros are unchanged).
    opt_state = jax.jit(init_state, out_shardings=opt_sh)(params)
  else:
    init, start = 'scratch', 0
  n_train = sum(x.size for x in jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda p, l: p if l == rules.TRAIN else jnp.zeros(0), params, labels)))
  log.info('%s: init=%s at step %d, %d examples, %d trainable of %d parameters, frozen blocks %s', workdir, init,
           start, n_examples, n_train,
           sum(x.size for x in jax.tree_util.tree_leaves(params)), list(frozen) or 'none')

  log.info('mesh %s: %s', dict(mesh.shape), sharding.describe(param_sh, params))
  eval_source = catalog.load(config.input.eval_data or config.data, config.input.eval_split,
                             data_dir=data_dir, manual_dir=manual_dir)
  # A head on a frozen backbone trains on the backbone's features, extracted once (features.for_run): the
  # same steps, optimizer and state trees, on a model whose backbone is the identity.
  cached = features.for_run(config, objective, model, params, batch_stats, labels, train_source, eval_source,
                            indices, pre, mesh)
  if cached is not None:
    model, train_source, eval_source, indices, pre = cached.model, cached.train_source, cached.eval_source, None, None
  # config.monitor: a k-NN probe of the backbone's features at every evaluation (a frozen backbone's never change).
  monitor = monitors.from_config(config, info.image_shape) if info.image_shape and cached is None else None
  evaluate = lambda: {**steps.evaluate(eval_step, objective, params, batch_stats, eval_source, eval_batch_size, mesh,
                                       pre), **(monitor(spec, params, batch_stats) if monitor is not None else {})}
  # Freezing schedules (gradual unfreezing, LP-FT) change the frozen blocks at these optimizer steps; the
  # step is recompiled there so BatchNorm of a not-yet-trained block stays in inference mode.
  starts = optim.start_steps(config.optim, labels)
  changes = optim.schedule_changes(labels, starts)
  rep = sharding.replicated(mesh)
  compile_step = lambda frozen: jax.jit(
      guard_step(steps.make_train_step(model, tx, frozen, objective), objective, policy, max_nonfinite, labels,
                 frozen),
      donate_argnums=(0, 1, 2, 3), out_shardings=(param_sh, stats_sh, opt_sh, rep, rep))
  train_step = compile_step(optim.frozen_blocks_at(labels, starts, start) if changes else frozen)
  eval_step = jax.jit(steps.make_eval_step(model, objective), out_shardings=sharding.replicated(mesh))
  eval_batch_size = memory.eval_batch_size(config.train, eval_step, (params, batch_stats), eval_source, mesh, pre)
  meta = {'model_spec': spec, 'config': config.to_dict(), 'class_names': list(info.class_names)}
  if tokenizer is not None:
    meta['tokenizer'] = tokenizer.to_meta()
  writer = MetricWriter(workdir)
  progress = ProgressLog(start, config.train.steps, every=config.train.log_every)
  batches = pipeline.train_batches(train_source, batch_size=config.train.batch_size, seed=config.seed,
                                   start_step=start, indices=indices, process_index=jax.process_index(),
                                   process_count=jax.process_count(), preprocess=pre,
                                   group_by_length=int(config.text.get('group_by_length', 0)))
  bad = jax.device_put(np.array([-1, 0], np.int32), rep)    # guard_step's record: no step flagged yet
  check_finite = lambda: _check_finite(bad, policy, max_nonfinite, mngr)
  step = start
  try:
    for step in range(start + 1, config.train.steps + 1):
      if step - 1 in changes and step - 1 > start:
        train_step = compile_step(optim.frozen_blocks_at(labels, starts, step - 1))
      batch = sharding.shard_batch(next(batches), mesh)
      params, batch_stats, opt_state, bad, metrics = train_step(
          params, batch_stats, opt_state, bad, batch, jax.random.fold_in(key_train, step), np.int32(step))
      if progress.due(step):
        check_finite()
        metrics = {f'train/{k}': float(v) for k, v in sharding.to_host(metrics).items()}
        writer.write(step, metrics)
        if sharding.is_main_process():
          progress.log(step, metrics)
      if config.train.eval_every and step % config.train.eval_every == 0 and step < config.train.steps:
        check_finite()
        result = evaluate()
        writer.write(step, {f'eval/{k}': v for k, v in result.items()})
      if step % config.train.checkpoint_every == 0 or step == config.train.steps:
        check_finite()                                  # never save a non-finite state
        checkpoint.save(mngr, step, params=params, batch_stats=batch_stats, opt_state=opt_state, meta=meta)
      if stop_after is not None and step - start >= stop_after:
        check_finite()
        return Outcome(params, batch_stats, opt_state, step, init, {})
    check_finite()
    final = evaluate()
    writer.write(step, {f'eval/{k}': v for k, v in final.items()})
    log.info('%s: step %d eval %s', workdir, step, ', '.join(
        f'{k} {v:.4f}' for k, v in final.items()
        if k in ('accuracy', 'mean_ap', 'masked_accuracy', 'perplexity', 'loss', 'knn_accuracy', 'count')))
    if sharding.is_main_process():
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(config.to_dict(), f, indent=1, default=str)
    return Outcome(params, batch_stats, opt_state, step, init, final)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
