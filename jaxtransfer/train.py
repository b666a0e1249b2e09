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
"""

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxtransfer import checkpoint, errors, objectives, optim, rules, sharding, steps, transfer
from jaxtransfer.data import catalog, pipeline, preprocess
from jaxtransfer.models import model as model_lib
from jaxtransfer.progress import MetricWriter, ProgressLog

log = logging.getLogger('jaxtransfer')


@dataclasses.dataclass
class Outcome:
  """What a `train` call leaves behind (besides the workdir)."""
  params: Any
  batch_stats: Any
  opt_state: Any
  step: int
  init: str                      # 'resume' | 'init_from' | 'scratch'
  metrics: dict[str, float]      # the final evaluation


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> Outcome:
  """Train as `config` says, writing checkpoints and metrics under `workdir`.

  `stop_after` ends the run after that many steps of this call without a final checkpoint or evaluation
  — a preemption, for tests of resumption.
  """
  objective = objectives.from_config(config)   # first: an unknown objective fails before any work
  os.makedirs(workdir, exist_ok=True)
  sharding.set_cpu_devices(config.mesh.get('cpu_devices', 0))   # before anything touches the devices
  sharding.initialize_distributed(config.get('distributed'))
  mesh = sharding.mesh_from_config(config.mesh)
  if not sharding.is_main_process():
    log.setLevel(logging.WARNING)     # only process 0 logs progress (and writes metrics, see MetricWriter)
  data_dir = config.input.data_dir or None
  manual_dir = config.input.manual_dir or None
  info = catalog.info(config.data, data_dir=data_dir, manual_dir=manual_dir)
  num_outputs = steps.num_outputs(config, info.num_classes)
  train_source = catalog.load(config.data, config.input.train_split, data_dir=data_dir, manual_dir=manual_dir)
  indices = objective.train_examples(config, num_outputs)   # labels checked; None = every example
  n_examples = len(indices) if indices is not None else len(train_source)

  mngr = checkpoint.manager(os.path.join(workdir, 'checkpoints'), keep=config.train.keep_checkpoints)
  start = mngr.latest_step()
  # On resume the model is the one this workdir saved; init_from is never opened again.
  spec = (checkpoint.read_meta(mngr, start)['model_spec'] if start is not None
          else steps.model_spec(config, num_outputs, objective))
  model = model_lib.build(spec)
  key_init, key_train = jax.random.split(jax.random.key(config.seed))
  pre = preprocess.from_config(config.input)
  variables, var_shardings = steps.init_variables(model, key_init, steps.input_shape(config, info.image_shape),
                                                  config.mesh, mesh)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  param_sh, stats_sh = var_shardings['params'], var_shardings.get('batch_stats', {})

  labels = rules.freeze_labels(config.trainable, params)
  frozen = rules.frozen_blocks(labels)
  tx = optim.make(config.optim, labels, config.train.steps)
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
  # Freezing schedules (gradual unfreezing, LP-FT) change the frozen blocks at these optimizer steps; the
  # step is recompiled there so BatchNorm of a not-yet-trained block stays in inference mode.
  starts = optim.start_steps(config.optim, labels)
  changes = optim.schedule_changes(labels, starts)
  compile_step = lambda frozen: jax.jit(steps.make_train_step(model, tx, frozen, objective),
                                        donate_argnums=(0, 1, 2),
                                        out_shardings=(param_sh, stats_sh, opt_sh, sharding.replicated(mesh)))
  train_step = compile_step(optim.frozen_blocks_at(labels, starts, start) if changes else frozen)
  eval_step = jax.jit(steps.make_eval_step(model, objective), out_shardings=sharding.replicated(mesh))
  eval_source = catalog.load(config.input.eval_data or config.data, config.input.eval_split,
                             data_dir=data_dir, manual_dir=manual_dir)
  meta = {'model_spec': spec, 'config': config.to_dict(), 'class_names': list(info.class_names)}
  writer = MetricWriter(workdir)
  progress = ProgressLog(start, config.train.steps, every=config.train.log_every)
  batches = pipeline.train_batches(train_source, batch_size=config.train.batch_size, seed=config.seed,
                                   start_step=start, indices=indices, process_index=jax.process_index(),
                                   process_count=jax.process_count(), preprocess=pre)
  step = start
  try:
    for step in range(start + 1, config.train.steps + 1):
      if step - 1 in changes and step - 1 > start:
        train_step = compile_step(optim.frozen_blocks_at(labels, starts, step - 1))
      batch = sharding.shard_batch(next(batches), mesh)
      params, batch_stats, opt_state, metrics = train_step(params, batch_stats, opt_state, batch,
                                                           jax.random.fold_in(key_train, step))
      if progress.due(step):
        metrics = {f'train/{k}': float(v) for k, v in sharding.to_host(metrics).items()}
        writer.write(step, metrics)
        if sharding.is_main_process():
          progress.log(step, metrics)
      if config.train.eval_every and step % config.train.eval_every == 0 and step < config.train.steps:
        result = steps.evaluate(eval_step, objective, params, batch_stats, eval_source, config.train.eval_batch_size,
                                mesh, pre)
        writer.write(step, {f'eval/{k}': v for k, v in result.items()})
      if step % config.train.checkpoint_every == 0 or step == config.train.steps:
        checkpoint.save(mngr, step, params=params, batch_stats=batch_stats, opt_state=opt_state, meta=meta)
      if stop_after is not None and step - start >= stop_after:
        return Outcome(params, batch_stats, opt_state, step, init, {})
    final = steps.evaluate(eval_step, objective, params, batch_stats, eval_source, config.train.eval_batch_size,
                           mesh, pre)
    writer.write(step, {f'eval/{k}': v for k, v in final.items()})
    log.info('%s: step %d eval %s', workdir, step, ', '.join(
        f'{k} {v:.4f}' for k, v in final.items() if k in ('accuracy', 'mean_ap', 'loss', 'count')))
    if sharding.is_main_process():
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(config.to_dict(), f, indent=1, default=str)
    return Outcome(params, batch_stats, opt_state, step, init, final)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
