"""THE training loop: pretraining, fine-tuning and multi-task training all run through `train`.

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
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtransfer import checkpoint, losses, objectives, optim, rules, sharding, transfer, weighting
from jaxtransfer.data import catalog, fewshot, pipeline, preprocess
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


def model_spec(config: ml_collections.ConfigDict, num_outputs: int) -> dict[str, Any]:
  """The model spec of a run: the config's backbone, or the `init_from` checkpoint's own (after surgery)."""
  if config.model.backbone:
    backbone = dict(config.model.backbone)
    if config.transfer.drop_last_blocks:
      backbone = model_lib.drop_last_blocks(backbone, config.transfer.drop_last_blocks)
  elif config.transfer.init_from:
    backbone = transfer.source_backbone_spec(config.transfer.init_from, config.transfer.drop_last_blocks)
  else:
    raise ValueError('config.model.backbone is empty and there is no transfer.init_from to take it from')
  head: dict[str, Any] = {'name': config.model.head, 'num_outputs': num_outputs}
  if config.model.head == 'multitask':  # one head per task: params head/<task>/…
    head = {'name': 'multitask', 'outputs': objectives.head_outputs(objectives.parse_tasks(config.tasks)),
            'hidden': list(config.mtl.head_hidden), 'dropout': config.model.head_dropout}
  if config.model.head == 'mlp':
    head.update(hidden=list(config.model.head_hidden), dropout=config.model.head_dropout)
  return {'backbone': jax.tree_util.tree_map(lambda x: x, backbone), 'head': head}


def check_labels(labels: np.ndarray, num_outputs: int, where: str) -> None:
  """Raise a one-line error when a class label does not fit the head."""
  bad = labels[(labels < 0) | (labels >= num_outputs)]
  if bad.size:
    raise ValueError(f'label {int(bad[0])} out of range for a head with {num_outputs} classes ({where})')


def multitask_indices(config: ml_collections.ConfigDict, objective: objectives.MultiTaskObjective,
                      data_dir: str | None, manual_dir: str | None) -> tuple[np.ndarray | None, int]:
  """Validate every training label of a multi-task run (host side, one line naming the task on error) and
  pick the training examples: all, or with `mtl.unknown_policy='drop'` only the fully labelled ones."""
  if config.input.per_class:
    raise ValueError('input.per_class (k per class) does not apply to multi-task runs; slice the split instead')
  keys = sorted({t.key for t in objective.tasks})
  arrays = catalog.label_arrays(config.data, config.input.train_split, keys, data_dir, manual_dir=manual_dir)
  task_labels = objectives.task_labels(objective.tasks, arrays)
  losses.validate_multitask_labels(task_labels, {t.name: t.task for t in objective.tasks})
  n = len(arrays[keys[0]])
  if config.mtl.unknown_policy != 'drop':
    return None, n
  known = np.ones(n, bool)
  for t in objective.tasks:
    lab = np.asarray(task_labels[t.name]).reshape(n, -1)
    known &= ~np.isnan(lab).any(1) if t.task.kind == 'regression' else (lab >= 0).all(1)
  if not known.any():
    raise ValueError(f'mtl.unknown_policy=drop: no fully labelled example in {config.data} '
                     f'split {config.input.train_split}')
  return np.flatnonzero(known), int(known.sum())


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  return {'params': params, 'batch_stats': batch_stats} if batch_stats else {'params': params}


def _train_forward(model: model_lib.Model, params: Any, batch_stats: Any, batch: dict[str, Any], key: jax.Array,
                   frozen: tuple[str, ...]) -> tuple[Any, Any]:
  """Training-mode outputs and the updated BatchNorm statistics (frozen blocks keep theirs)."""
  outputs, mutated = model.apply(_variables(params, batch_stats), batch['image'], train=True, frozen=frozen,
                                 rngs={'dropout': key}, mutable=['batch_stats'])
  return outputs, mutated.get('batch_stats', batch_stats)


def split_frozen(params: Any, frozen: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
  """(params without the frozen backbone blocks, the frozen blocks): the train step differentiates only
  the first, so no backward pass through frozen blocks is ever traced (not left to XLA to remove)."""
  if not frozen:
    return params, {}
  backbone = params['backbone']
  return ({**params, 'backbone': {k: v for k, v in backbone.items() if k not in frozen}},
          {k: v for k, v in backbone.items() if k in frozen})


def merge_frozen(params: Any, fixed: dict[str, Any]) -> Any:
  """Inverse of `split_frozen`."""
  return {**params, 'backbone': {**params['backbone'], **fixed}} if fixed else params


def make_train_step(model: model_lib.Model, tx: optax.GradientTransformation, frozen: tuple[str, ...],
                    objective: objectives.Objective | None = None,
                    weighting_method: weighting.Weighting | None = None,
                    task_gradients: str = 'features') -> Callable[..., Any]:
  """Pure (un-jitted) train step: (params, batch_stats, opt_state, batch, key) → (…, metrics).

  `objective` defaults to single-label classification. With a `weighting_method` (multi-task only) the
  gradients come from `weighting.weighted_grads` over the objective's per-task losses, and `opt_state` is
  `{'tx': optimizer state, 'weighting': method state}` — so the method's state is checkpointed and
  resumed with the optimizer's. `task_gradients`: where a gradient method takes the per-task gradients
  (see `_make_weighted_train_step`).
  """
  objective = objective or objectives.classification()
  if weighting_method is not None:
    return _make_weighted_train_step(model, tx, frozen, objective, weighting_method, task_gradients)

  def train_step(params, batch_stats, opt_state, batch, key):
    trainable, fixed = split_frozen(params, frozen)

    def loss_fn(p):
      outputs, new_stats = _train_forward(model, merge_frozen(p, fixed), batch_stats, batch, key, frozen)
      loss, metrics = objective.loss(outputs, batch)
      return loss, (metrics, new_stats)
    (loss, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    grads = merge_frozen(grads, jax.tree_util.tree_map(jnp.zeros_like, fixed))
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, new_stats, opt_state, {'loss': loss, **metrics}

  return train_step


def _make_weighted_train_step(model, tx, frozen, objective, method, task_gradients='features'):
  """The train step of a multi-task run whose task gradients are combined by a weighting method.

  `task_gradients` (gradient methods only): 'features' takes the Gram matrix of the per-task gradients
  at the backbone's output (one backbone backward pass, `weighting.weighted_grads_at_features`);
  'params' at the shared parameters (T backbone backward passes, `weighting.weighted_grads`).
  """
  names = [t.name for t in objective.tasks]
  if task_gradients not in ('features', 'params'):
    raise ValueError(f"mtl.task_gradients: expected 'features' or 'params', got {task_gradients!r}")

  def train_step(params, batch_stats, opt_state, batch, key):
    trainable, fixed = split_frozen(params, frozen)
    if task_gradients == 'features' and method.needs_gram:
      def features_fn(backbone):
        variables = _variables({'backbone': {**backbone, **fixed}}, batch_stats)
        z, mutated = model.apply(variables, batch['image'], train=True, frozen=frozen,
                                 method=model_lib.Model.features, mutable=['batch_stats'])
        return z, mutated.get('batch_stats', batch_stats)

      def heads_fn(head, z):
        outputs = model.apply({'params': {'head': head}}, z, method=lambda m, z: m.head(z, train=True),
                              rngs={'dropout': key})
        return objective.task_losses(outputs, batch)
      (g_backbone, g_head), w_state, info = weighting.weighted_grads_at_features(
          method, features_fn, heads_fn, trainable['backbone'], trainable['head'], opt_state['weighting'],
          objective.present(batch))
      grads = {'backbone': g_backbone, 'head': g_head}
      new_stats, metrics = info.aux
    else:
      def loss_fn(p):
        outputs, new_stats = _train_forward(model, merge_frozen(p, fixed), batch_stats, batch, key, frozen)
        per_task, metrics = objective.task_losses(outputs, batch)
        return per_task, (metrics, new_stats)
      grads, w_state, info = weighting.weighted_grads(method, loss_fn, trainable, opt_state['weighting'],
                                                      objective.present(batch), vectorize=False)
      metrics, new_stats = info.aux
    grads = merge_frozen(grads, jax.tree_util.tree_map(jnp.zeros_like, fixed))
    updates, tx_state = tx.update(grads, opt_state['tx'], params)
    params = optax.apply_updates(params, updates)
    metrics = {**metrics, **{f'weight_{n}': info.weights.shared[i] for i, n in enumerate(names)}}
    return params, new_stats, {'tx': tx_state, 'weighting': w_state}, {'loss': jnp.sum(info.losses), **metrics}

  return train_step


def make_eval_step(model: model_lib.Model, objective: objectives.Objective | None = None) -> Callable[..., Any]:
  """Pure eval step: the objective's per-example values, plus the padding mask."""
  objective = objective or objectives.classification()

  def eval_step(params, batch_stats, batch):
    outputs = model.apply(_variables(params, batch_stats), batch['image'], train=False)
    return {**objective.per_example(outputs, batch), 'mask': batch['mask']}

  return eval_step


def evaluate(eval_step: Callable[..., Any], objective: objectives.Objective, params: Any, batch_stats: Any,
             source: Any, batch_size: int, mesh: jax.sharding.Mesh,
             pre: preprocess.Preprocess | None = None) -> dict[str, float]:
  """The objective's metrics over a whole split, exact: padded rows of the last batch are dropped."""
  gathered: dict[str, list[np.ndarray]] = {}
  # Every process runs the same number of (padded) batches, each on its own rows of the global batch.
  for batch in pipeline.eval_batches(source, batch_size=batch_size, process_index=jax.process_index(),
                                     process_count=jax.process_count(), preprocess=pre):
    out = sharding.to_host(eval_step(params, batch_stats, sharding.shard_batch(batch, mesh)))
    keep = np.asarray(out.pop('mask')) > 0
    for k, v in out.items():
      gathered.setdefault(k, []).append(np.asarray(v)[keep])
  values = {k: np.concatenate(v) for k, v in gathered.items()}
  return {**objective.summarize(values), 'count': float(len(next(iter(values.values()))))}


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> Outcome:
  """Train as `config` says, writing checkpoints and metrics under `workdir`.

  `stop_after` ends the run after that many steps of this call without a final checkpoint or evaluation
  — a preemption, for tests of resumption.
  """
  os.makedirs(workdir, exist_ok=True)
  sharding.set_cpu_devices(config.mesh.get('cpu_devices', 0))   # before anything touches the devices
  sharding.initialize_distributed(config.get('distributed'))
  mesh = sharding.mesh_from_config(config.mesh)
  if not sharding.is_main_process():
    log.setLevel(logging.WARNING)     # only process 0 logs progress (and writes metrics, see MetricWriter)
  data_dir = config.input.data_dir or None
  manual_dir = config.input.manual_dir or None
  info = catalog.info(config.data, data_dir=data_dir, manual_dir=manual_dir)
  num_outputs = config.model.num_outputs or info.num_classes
  train_source = catalog.load(config.data, config.input.train_split, data_dir=data_dir, manual_dir=manual_dir)
  objective = objectives.from_config(config)
  if config.model.head == 'multitask':
    indices, n_examples = multitask_indices(config, objective, data_dir, manual_dir)
  else:
    train_labels = catalog.labels(config.data, config.input.train_split, data_dir=data_dir, manual_dir=manual_dir)
    check_labels(train_labels, num_outputs, f'{config.data} split {config.input.train_split}')
    indices = (fewshot.k_per_class_indices(train_labels, config.input.per_class, config.input.subset_seed)
               if config.input.per_class else None)
    n_examples = len(indices) if indices is not None else len(train_labels)

  mngr = checkpoint.manager(os.path.join(workdir, 'checkpoints'), keep=config.train.keep_checkpoints)
  start = mngr.latest_step()
  # On resume the model is the one this workdir saved; init_from is never opened again.
  spec = checkpoint.read_meta(mngr, start)['model_spec'] if start is not None else model_spec(config, num_outputs)
  model = model_lib.build(spec)
  key_init, key_train = jax.random.split(jax.random.key(config.seed))
  pre = preprocess.from_config(config.input)
  dummy = jnp.zeros((1, *pre.output_shape(info.image_shape)), jnp.float32)
  abstract = jax.eval_shape(lambda k: model.init(k, dummy), key_init)
  var_shardings = sharding.variable_shardings(config.mesh, abstract, mesh)
  variables = jax.jit(lambda k: model.init(k, dummy), out_shardings=var_shardings)(key_init)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  param_sh, stats_sh = var_shardings['params'], var_shardings.get('batch_stats', {})

  labels = rules.freeze_labels(config.trainable, params)
  frozen = rules.frozen_blocks(labels)
  tx = optim.make(config.optim, labels, config.train.steps)
  # Loss weighting other than 'equal' (multi-task): its state rides along in opt_state (checkpointed).
  w_method = (objectives.weighting_method(config.mtl.weighting)
              if config.model.head == 'multitask' and config.mtl.weighting != 'equal' else None)
  init_state = tx.init
  if w_method is not None:
    w_key = jax.random.PRNGKey(config.seed + 0x5747)  # raw uint32 key: checkpointable
    init_state = lambda p: {'tx': tx.init(p), 'weighting': w_method.init(len(objective.tasks), w_key)}
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
      raise ValueError(f"transfer.head_init: expected 'fresh' or 'class_names', got {config.transfer.head_init!r}")
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
  compile_step = lambda frozen: jax.jit(make_train_step(model, tx, frozen, objective, w_method,
                                                        config.mtl.task_gradients), donate_argnums=(0, 1, 2),
                                        out_shardings=(param_sh, stats_sh, opt_sh, sharding.replicated(mesh)))
  train_step = compile_step(optim.frozen_blocks_at(labels, starts, start) if changes else frozen)
  eval_step = jax.jit(make_eval_step(model, objective), out_shardings=sharding.replicated(mesh))
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
        writer.write(step, {f'eval/{k}': v for k, v in evaluate(eval_step, objective, params, batch_stats, eval_source,
                                                                 config.train.eval_batch_size, mesh, pre).items()})
      if step % config.train.checkpoint_every == 0 or step == config.train.steps:
        checkpoint.save(mngr, step, params=params, batch_stats=batch_stats, opt_state=opt_state, meta=meta)
      if stop_after is not None and step - start >= stop_after:
        return Outcome(params, batch_stats, opt_state, step, init, {})
    final = evaluate(eval_step, objective, params, batch_stats, eval_source, config.train.eval_batch_size, mesh,
                     pre)
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
