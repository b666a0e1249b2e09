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

from jaxtransfer import checkpoint, losses, optim, rules, sharding, transfer
from jaxtransfer.data import catalog, fewshot, pipeline
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
  if config.model.head == 'mlp':
    head.update(hidden=list(config.model.head_hidden), dropout=config.model.head_dropout)
  return {'backbone': jax.tree_util.tree_map(lambda x: x, backbone), 'head': head}


def check_labels(labels: np.ndarray, num_outputs: int, where: str) -> None:
  """Raise a one-line error when a class label does not fit the head."""
  bad = labels[(labels < 0) | (labels >= num_outputs)]
  if bad.size:
    raise ValueError(f'label {int(bad[0])} out of range for a head with {num_outputs} classes ({where})')


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  return {'params': params, 'batch_stats': batch_stats} if batch_stats else {'params': params}


def make_train_step(model: model_lib.Model, tx: optax.GradientTransformation,
                    frozen: tuple[str, ...]) -> Callable[..., Any]:
  """Pure (un-jitted) train step of a single-label classifier: (params, stats, opt_state, batch, key) → …"""

  def train_step(params, batch_stats, opt_state, batch, key):
    def loss_fn(p):
      logits, mutated = model.apply(_variables(p, batch_stats), batch['image'], train=True, frozen=frozen,
                                    rngs={'dropout': key}, mutable=['batch_stats'])
      return losses.softmax_cross_entropy(logits, batch['label']), (logits, mutated.get('batch_stats', batch_stats))
    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return params, new_stats, opt_state, {'loss': loss, 'accuracy': accuracy}

  return train_step


def make_eval_step(model: model_lib.Model) -> Callable[..., Any]:
  """Pure eval step: sums of loss and correct predictions over the real (mask = 1) examples of a batch."""

  def eval_step(params, batch_stats, batch):
    logits = model.apply(_variables(params, batch_stats), batch['image'], train=False)
    mask = batch['mask']
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    return {'loss_sum': jnp.sum(nll * mask), 'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
            'count': jnp.sum(mask)}

  return eval_step


def evaluate(eval_step: Callable[..., Any], params: Any, batch_stats: Any, source: Any, batch_size: int,
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Exact accuracy and loss over a whole split (padded last batch masked out)."""
  totals = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  for batch in pipeline.eval_batches(source, batch_size=batch_size):
    out = jax.device_get(eval_step(params, batch_stats, sharding.shard_batch(batch, mesh)))
    totals = {k: totals[k] + float(out[k]) for k in totals}
  n = max(totals['count'], 1.0)
  return {'accuracy': totals['correct'] / n, 'loss': totals['loss_sum'] / n, 'count': totals['count']}


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> Outcome:
  """Train as `config` says, writing checkpoints and metrics under `workdir`.

  `stop_after` ends the run after that many steps of this call without a final checkpoint or evaluation
  — a preemption, for tests of resumption.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh.data)
  data_dir = config.data.data_dir or None
  manual_dir = config.data.manual_dir or None
  info = catalog.info(config.data.name, data_dir=data_dir)
  num_outputs = config.model.num_outputs or info['num_classes']
  train_source = catalog.load(config.data.name, config.data.train_split, data_dir=data_dir, manual_dir=manual_dir)
  train_labels = catalog.labels(config.data.name, config.data.train_split, data_dir=data_dir)
  check_labels(train_labels, num_outputs, f'{config.data.name} split {config.data.train_split}')
  indices = (fewshot.k_per_class_indices(train_labels, config.data.per_class, config.data.subset_seed)
             if config.data.per_class else None)

  spec = model_spec(config, num_outputs)
  model = model_lib.build(spec)
  key_init, key_train = jax.random.split(jax.random.key(config.seed))
  dummy = jnp.zeros((1, *info['image_shape']), jnp.float32)
  abstract = jax.eval_shape(lambda k: model.init(k, dummy), key_init)
  variables = jax.jit(lambda k: model.init(k, dummy), out_shardings=sharding.tree_replicated(abstract, mesh))(key_init)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})

  labels = rules.freeze_labels(config.trainable, params)
  frozen = rules.frozen_blocks(labels)
  tx = optim.make(config.optim, labels, config.train.steps)
  opt_state = jax.jit(tx.init, out_shardings=sharding.tree_replicated(jax.eval_shape(tx.init, params), mesh))(params)

  mngr = checkpoint.manager(os.path.join(workdir, 'checkpoints'), keep=config.train.keep_checkpoints)
  start = mngr.latest_step()
  if start is not None:
    init = 'resume'
    params, batch_stats, opt_state = checkpoint.restore(mngr, start, params=params, batch_stats=batch_stats,
                                                        opt_state=opt_state)
  elif config.transfer.init_from:
    init, start = 'init_from', 0
    params, batch_stats = transfer.init_from(config.transfer.init_from, params, batch_stats,
                                             drop_last=config.transfer.drop_last_blocks)
  else:
    init, start = 'scratch', 0
  n_train = sum(x.size for x in jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda p, l: p if l == rules.TRAIN else jnp.zeros(0), params, labels)))
  log.info('%s: init=%s at step %d, %d examples, %d trainable of %d parameters, frozen blocks %s', workdir, init,
           start, len(indices) if indices is not None else len(train_labels), n_train,
           sum(x.size for x in jax.tree_util.tree_leaves(params)), list(frozen) or 'none')

  train_step = jax.jit(make_train_step(model, tx, frozen), donate_argnums=(0, 1, 2))
  eval_step = jax.jit(make_eval_step(model))
  eval_source = catalog.load(config.data.get('eval_name') or config.data.name, config.data.eval_split,
                             data_dir=data_dir, manual_dir=manual_dir)
  meta = {'model_spec': spec, 'config': config.to_dict(), 'class_names': info['class_names']}
  writer = MetricWriter(workdir)
  progress = ProgressLog(start, config.train.steps, every=config.train.log_every)
  batches = pipeline.train_batches(train_source, batch_size=config.train.batch_size, seed=config.seed,
                                   start_step=start, indices=indices)
  step = start
  try:
    for step in range(start + 1, config.train.steps + 1):
      batch = sharding.shard_batch(next(batches), mesh)
      params, batch_stats, opt_state, metrics = train_step(params, batch_stats, opt_state, batch,
                                                           jax.random.fold_in(key_train, step))
      if progress.due(step):
        metrics = {f'train/{k}': float(v) for k, v in jax.device_get(metrics).items()}
        writer.write(step, metrics)
        progress.log(step, metrics)
      if config.train.eval_every and step % config.train.eval_every == 0 and step < config.train.steps:
        writer.write(step, {f'eval/{k}': v for k, v in evaluate(eval_step, params, batch_stats, eval_source,
                                                                 config.train.eval_batch_size, mesh).items()})
      if step % config.train.checkpoint_every == 0 or step == config.train.steps:
        checkpoint.save(mngr, step, params=params, batch_stats=batch_stats, opt_state=opt_state, meta=meta)
      if stop_after is not None and step - start >= stop_after:
        return Outcome(params, batch_stats, opt_state, step, init, {})
    final = evaluate(eval_step, params, batch_stats, eval_source, config.train.eval_batch_size, mesh)
    writer.write(step, {f'eval/{k}': v for k, v in final.items()})
    log.info('%s: step %d eval accuracy %.4f loss %.4f (%d examples)', workdir, step, final['accuracy'],
             final['loss'], final['count'])
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(config.to_dict(), f, indent=1, default=str)
    return Outcome(params, batch_stats, opt_state, step, init, final)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
