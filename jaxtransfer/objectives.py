"""Objectives: what a run optimises and how it is measured, separate from the one training loop.

An `Objective` is three pure functions:
  loss(outputs, batch)          → (scalar loss, {name: scalar}) — jitted inside the train step;
  per_example(outputs, batch)   → {name: (B, …) array} — jitted inside the eval step, gathered on host;
  summarize({name: array})      → {metric: float} — host side, over a whole split without padding.
Gathering per-example values (not running sums) keeps metrics such as AUC and average precision exact.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtransfer import losses, metrics, weighting

Batch = dict[str, Any]


class Objective(NamedTuple):
  loss: Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]
  per_example: Callable[[Any, Batch], dict[str, jax.Array]]
  summarize: Callable[[dict[str, np.ndarray]], dict[str, float]]


def classification() -> Objective:
  """Single-label classification: softmax cross-entropy, accuracy."""

  def loss(logits, batch):
    value = losses.softmax_cross_entropy(logits, batch['label'])
    return value, {'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}

  def per_example(logits, batch):
    return {'nll': optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']),
            'correct': (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)}

  def summarize(values):
    return {'accuracy': float(np.mean(values['correct'])), 'loss': float(np.mean(values['nll']))}

  return Objective(loss, per_example, summarize)


# --- multi-task (issue #3) -----------------------------------------------------------------------


class TaskDef(NamedTuple):
  """One task of a multi-task run, as declared in `config.tasks[name]`.

  kind / num_classes: see `losses.Task`. key: the batch feature holding the labels; index: the column
  of that feature (None = the whole feature, e.g. a 'multilabel' task's (B, K) array or a scalar
  feature). outputs: the head's width (binary 1, multilabel / classification num_classes, regression
  `num_outputs`, default 1).
  """
  name: str
  task: losses.Task
  key: str
  index: int | None
  outputs: int


UNKNOWN_POLICIES = ('mask', 'negative', 'drop')


def parse_tasks(tasks: Any) -> tuple[TaskDef, ...]:
  """`config.tasks` (name → {'kind', 'num_classes'?, 'key'?, 'index'?, 'num_outputs'?}) → TaskDefs.

  Example (the scenes presence tasks and the object count as a softmax task):
    {'has_0': {'kind': 'binary', 'key': 'labels', 'index': 0}, …,
     'count': {'kind': 'classification', 'num_classes': 5, 'key': 'count'}}
  """
  if not tasks:
    raise ValueError('a multi-task run needs config.tasks: name -> {kind, key, index, num_classes}')
  out = []
  for name, spec in dict(tasks).items():
    spec = dict(spec)
    unknown_keys = set(spec) - {'kind', 'num_classes', 'key', 'index', 'num_outputs'}
    if unknown_keys:
      raise ValueError(f'task {name!r}: unknown keys {sorted(unknown_keys)}')
    task = losses.as_task(losses.Task(spec['kind'], spec.get('num_classes')))
    if task.kind in ('multilabel', 'classification') and not task.num_classes:
      raise ValueError(f'task {name!r}: a {task.kind} task needs num_classes')
    outputs = {'binary': 1, 'multilabel': task.num_classes, 'classification': task.num_classes,
               'regression': spec.get('num_outputs', 1)}[task.kind]
    index = spec.get('index')
    out.append(TaskDef(name, task, spec.get('key', name), None if index is None else int(index), int(outputs)))
  return tuple(out)


def head_outputs(tasks: Sequence[TaskDef]) -> dict[str, int]:
  """name → output width, the `outputs` of a `MultiTaskHead` spec."""
  return {t.name: t.outputs for t in tasks}


def task_labels(tasks: Sequence[TaskDef], batch: Batch, *, true: bool = False) -> dict[str, Any]:
  """name → the task's labels taken from the batch ('true_<key>' when `true` and the batch has it).

  Regression labels come as float (NaN = unknown); the others as they are stored.
  """
  out = {}
  for t in tasks:
    key = f'true_{t.key}' if true and f'true_{t.key}' in batch else t.key
    if key not in batch:
      raise ValueError(f'task {t.name!r}: the batch has no feature {key!r} (features: {", ".join(batch)})')
    label = batch[key] if t.index is None else batch[key][:, t.index]
    out[t.name] = label.astype(jnp.float32) if t.task.kind == 'regression' else label
  return out


class MultiTaskObjective(NamedTuple):
  """An `Objective` (same first three fields) plus what loss weighting needs.

  task_losses(outputs, batch) → ((T,) per-task losses in task order, {name: scalar} metrics);
  present(batch) → (T,) bool, tasks with at least one known (training) label in the batch.
  """
  loss: Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]
  per_example: Callable[[Any, Batch], dict[str, jax.Array]]
  summarize: Callable[[dict[str, np.ndarray]], dict[str, float]]
  task_losses: Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]
  present: Callable[[Batch], jax.Array]
  tasks: tuple[TaskDef, ...]


def _per_example_loss(task: losses.Task, output: jax.Array, label: jax.Array) -> jax.Array:
  """(B,) loss of each example on one task, NaN where the label is unknown (host-side averaging)."""
  if task.kind in ('binary', 'multilabel'):
    output, label = output.reshape(output.shape[0], -1), label.reshape(label.shape[0], -1)
    known = label >= 0
    bce = optax.sigmoid_binary_cross_entropy(output, (label > 0).astype(output.dtype))
    total = jnp.sum(jnp.where(known, bce, 0.0), axis=1) / jnp.maximum(jnp.sum(known, axis=1), 1)
    return jnp.where(jnp.any(known, axis=1), total, jnp.nan)
  if task.kind == 'classification':
    label = label.reshape(-1)
    ce = optax.softmax_cross_entropy_with_integer_labels(output, jnp.where(label >= 0, label, 0).astype(jnp.int32))
    return jnp.where(label >= 0, ce, jnp.nan)
  label = label.reshape(output.shape)
  return jnp.nanmean(jnp.square(output - label).reshape(output.shape[0], -1), axis=1)


def multitask(tasks: Any, weights: Mapping[str, float] | None = None, unknown_policy: str = 'mask') -> MultiTaskObjective:
  """Heterogeneous multi-task objective over a dict of heads (`MultiTaskHead`).

  loss: `losses.multitask_loss` (each task's mean over its known labels, summed with `weights`, default
  1), train metrics `loss/<task>`. `unknown_policy`: 'mask' leaves unknown labels out (the seed notes'
  loss); 'negative' treats an unknown sigmoid label as 0 (the naive baseline of experiment 6a); 'drop'
  is done by the training loop (it trains only on fully labelled examples), so the loss is 'mask'.
  per_example: the outputs ('score/<task>') and the labels to evaluate on ('label/<task>': the TRUE
  labels when the batch carries 'true_<key>', so a split with hidden labels is scored on all of them),
  plus the per-example loss ('nll/<task>', NaN where unknown). summarize: `metrics.multitask_metrics`
  (per-task accuracy / auc / ap / mse and `mean_ap`) and `loss` = Σ_t mean nll.

  `tasks` is `config.tasks` or a sequence of `TaskDef`s.
  """
  defs = tuple(tasks) if tasks and isinstance(next(iter(tasks)), TaskDef) else parse_tasks(tasks)
  if unknown_policy not in UNKNOWN_POLICIES:
    raise ValueError(f'mtl.unknown_policy: {unknown_policy!r} is not one of {UNKNOWN_POLICIES}')
  spec = {t.name: t.task for t in defs}
  names = [t.name for t in defs]

  def train_labels(batch):
    labels = task_labels(defs, batch)
    if unknown_policy == 'negative':
      labels = {n: jnp.maximum(v, 0) if spec[n].kind in ('binary', 'multilabel') else v for n, v in labels.items()}
    return labels

  def task_losses(outputs, batch):
    _, per_task = losses.multitask_loss(outputs, train_labels(batch), spec)
    return jnp.stack([per_task[n] for n in names]), {f'loss/{n}': per_task[n] for n in names}

  def loss(outputs, batch):
    total, per_task = losses.multitask_loss(outputs, train_labels(batch), spec, weights)
    return total, {f'loss/{n}': v for n, v in per_task.items()}

  def present(batch):
    return jnp.stack(list(losses.present_tasks(train_labels(batch), spec).values()))

  def per_example(outputs, batch):
    labels = task_labels(defs, batch, true=True)
    out = {}
    for t in defs:
      out[f'score/{t.name}'] = outputs[t.name]
      out[f'label/{t.name}'] = labels[t.name]
      out[f'nll/{t.name}'] = _per_example_loss(t.task, outputs[t.name], labels[t.name])
    return out

  def summarize(values):
    result = metrics.multitask_metrics({n: values[f'score/{n}'] for n in names},
                                       {n: values[f'label/{n}'] for n in names}, spec)
    nll = {n: values[f'nll/{n}'] for n in names}
    result['loss'] = float(sum(np.nanmean(v) if np.isfinite(v).any() else 0.0 for v in nll.values()))
    return result

  return MultiTaskObjective(loss, per_example, summarize, task_losses, present, defs)


def from_config(config: Any) -> Objective | MultiTaskObjective:
  """The objective a run's config trains (and its checkpoints are evaluated) with."""
  if config.model.head == 'multitask':
    return multitask(config.tasks, unknown_policy=config.mtl.unknown_policy)
  return classification()


WEIGHTINGS = {'equal': weighting.equal, 'uncertainty': weighting.uncertainty, 'gradnorm': weighting.gradnorm,
              'pcgrad': weighting.pcgrad, 'cagrad': weighting.cagrad}


def weighting_method(name: str) -> weighting.Weighting:
  """The `jaxtransfer.weighting` method named by `config.mtl.weighting` (default hyper-parameters)."""
  if name not in WEIGHTINGS:
    raise ValueError(f'mtl.weighting: unknown method {name!r}; known: {", ".join(WEIGHTINGS)}')
  return WEIGHTINGS[name]()
