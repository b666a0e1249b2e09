"""Losses: pure functions of logits and labels, with example weights for padding and unknowns.

Multi-task learning (issue #3, seed note 5): one network, ŷ has T outputs, and the loss sums the
per-task losses while labels an annotator left as '?' are left out. Conventions used everywhere:

* 'binary' / 'multilabel' tasks: sigmoid outputs, labels in {-1, 0, 1}, -1 = unknown.
* 'classification' tasks: softmax outputs, integer class labels, -1 = unknown.
* 'regression' tasks: float labels, NaN = unknown.

**Definition of the total.** Each task's loss is the mean over the examples whose label is known,
and the total is the sum of those per-task means. When every label is known this is exactly the
seed notes' "mean over examples of the sum over tasks" (Σ_t mean_i = mean_i Σ_t). With unknowns,
the literal form ``Σ_{i,t} known·ℓ / B`` would let a sparsely annotated task fade in proportion to
its label count, and would change a task's weight from batch to batch; the per-task mean keeps
every task on the same scale, and the per-task vector is what the weighting methods in
``jaxtransfer.weighting`` consume. A task with no known label in the batch contributes exactly 0
to the total and gets an exactly-zero gradient (the mask is applied with ``jnp.where`` before the
sum, and the count is guarded), so nothing is NaN.

**Validation.** A jitted function cannot raise on values, so labels are checked on the host with
``validate_multitask_labels`` (the data pipeline calls it on each example or batch; the training
loop may call it on the first batch). It raises a one-line ``errors.DataError`` naming the task.
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtransfer import errors

KINDS = ('binary', 'multilabel', 'classification', 'regression')


class Task(NamedTuple):
  """One task of a multi-task model.

  kind: 'binary' (one sigmoid output), 'multilabel' (K sigmoid outputs, summed like T binary
    tasks), 'classification' (softmax over `num_classes`), or 'regression' (squared error).
  num_classes: classes of a 'classification' task (required for validation); for 'multilabel'
    the number of labels, checked against the label shape when given.
  """
  kind: str
  num_classes: int | None = None


TaskSpec = Mapping[str, Task | str]


def as_task(task: Task | str) -> Task:
  """A `Task` from a `Task` or a bare kind string; raises on an unknown kind."""
  task = Task(task) if isinstance(task, str) else task
  if task.kind not in KINDS:
    raise errors.ConfigError(f'unknown task kind {task.kind!r}; expected one of {KINDS}')
  return task


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy over the examples whose weight is non-zero.

  `labels` are integer class indices; `weights` (0/1 per example, e.g. the padding mask of an
  evaluation batch) default to all ones. A batch with no weight returns 0, not NaN.
  """
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    weights = jnp.ones_like(per_example)
  return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _masked_mean(per_element: jax.Array, mask: jax.Array, axis) -> jax.Array:
  """Mean of `per_element` over `axis` where `mask` > 0; exactly 0 (and 0 gradient) if none."""
  count = jnp.sum(mask, axis=axis)
  total = jnp.sum(jnp.where(mask > 0, per_element * mask, 0.0), axis=axis)
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


@jax.jit
def masked_multilabel_loss(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Sigmoid cross-entropy of T binary tasks with unknown labels left out.

  Args:
    logits: (B, T) pre-sigmoid outputs.
    labels: (B, T) in {-1, 0, 1}; -1 = unknown ('?'). Validate with `validate_multitask_labels`.
    weights: optional (B,) example weights (e.g. 0 for the padding of an evaluation batch).

  Returns:
    `(total, per_task)`: `per_task[t]` is the mean loss over the known labels of task t (0 if the
    batch has none) and `total = per_task.sum()` (see the module docstring for why).

  Example:
    >>> total, per_task = masked_multilabel_loss(jnp.zeros((2, 2)), jnp.array([[1, -1], [0, -1]]))
    >>> per_task  # log 2 for task 0; task 1 has no known label
    Array([0.6931472, 0.       ], dtype=float32)
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  mask = (labels >= 0).astype(logits.dtype)
  if weights is not None:
    mask = mask * jnp.asarray(weights, logits.dtype)[:, None]
  per_element = optax.sigmoid_binary_cross_entropy(logits, (labels > 0).astype(logits.dtype))
  per_task = _masked_mean(per_element, mask, axis=0)
  return jnp.sum(per_task), per_task


def _task_loss(task: Task, output: jax.Array, label: jax.Array, weights: jax.Array | None) -> jax.Array:
  """The masked loss of one task (see `multitask_loss` for the per-kind definitions)."""
  if task.kind in ('binary', 'multilabel'):
    output, label = jnp.asarray(output), jnp.asarray(label)
    output = output.reshape(output.shape[0], -1)
    label = label.reshape(label.shape[0], -1)
    return masked_multilabel_loss(output, label, weights)[0]
  if task.kind == 'classification':
    label = jnp.asarray(label)
    if label.ndim == output.ndim:
      label = label[..., 0]
    known = (label >= 0).astype(output.dtype)
    if weights is not None:
      known = known * weights
    return softmax_cross_entropy(output, jnp.where(label >= 0, label, 0).astype(jnp.int32), known)
  # regression
  label = jnp.asarray(label, output.dtype).reshape(output.shape)
  known = ~jnp.isnan(label)
  mask = known.astype(output.dtype)
  if weights is not None:
    mask = mask * jnp.asarray(weights, output.dtype).reshape((-1,) + (1,) * (output.ndim - 1))
  squared = jnp.square(output - jnp.where(known, label, 0.0))
  return _masked_mean(squared.reshape(-1), mask.reshape(-1), axis=0)


def multitask_loss(
    outputs: Mapping[str, jax.Array],
    labels: Mapping[str, jax.Array],
    tasks: TaskSpec,
    weights: Mapping[str, jax.Array | float] | None = None,
    example_weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of heterogeneous, mask-aware task losses.

  Per kind (each a mean over the task's known labels, 0 with zero gradient if there are none):
  'binary' — sigmoid CE of a (B,) or (B, 1) output; 'multilabel' — `masked_multilabel_loss` total
  of a (B, K) output, i.e. the sum over its K labels, as if they were K binary tasks;
  'classification' — softmax CE of (B, C) logits and (B,) int labels; 'regression' — squared
  error over the known (non-NaN) entries of a (B,) or (B, D) output.

  Meant to be called inside the jitted train step (`tasks` is static Python data).

  Args:
    outputs, labels: dicts keyed by task name (extra keys are ignored).
    tasks: name -> `Task` (or kind string); its order is the task order of the per-task vector.
    weights: optional name -> scalar (Python float or traced array, e.g. from
      `jaxtransfer.weighting`); missing names weigh 1.
    example_weights: optional (B,) weights applied to every task (padding mask).

  Returns:
    `(total, per_task)` with `total = Σ_t weights[t] * per_task[t]`.
  """
  per_task = {}
  for name, task in tasks.items():
    per_task[name] = _task_loss(as_task(task), outputs[name], labels[name], example_weights)
  weights = weights or {}
  total = sum(jnp.asarray(weights.get(name, 1.0)) * loss for name, loss in per_task.items())
  return jnp.asarray(total), per_task


def present_tasks(
    labels: Mapping[str, jax.Array], tasks: TaskSpec, example_weights: jax.Array | None = None
) -> dict[str, jax.Array]:
  """name -> bool scalar: does the batch hold at least one known label of the task?

  This is the `present` mask the weighting methods take (stack it in task order).
  """
  present = {}
  for name, task in tasks.items():
    task = as_task(task)
    label = jnp.asarray(labels[name])
    known = ~jnp.isnan(label) if task.kind == 'regression' else label >= 0
    if example_weights is not None:
      known = known & (jnp.asarray(example_weights) > 0).reshape((-1,) + (1,) * (label.ndim - 1))
    present[name] = jnp.any(known)
  return present


def _first_bad(bad: np.ndarray) -> tuple[int, ...]:
  return tuple(int(i) for i in np.argwhere(bad)[0])


def _check_sigmoid_labels(name: str, label: np.ndarray) -> None:
  bad = ~np.isin(label, (-1, 0, 1))
  if bad.any():
    where = _first_bad(bad)
    raise errors.DataError(f'task {name!r}: label {label[where].item()!r} at index {where} is not in {{-1 (unknown), 0, 1}}')


def validate_multitask_labels(
    labels: Mapping[str, np.ndarray] | np.ndarray,
    tasks: TaskSpec | Sequence[str] | None = None,
) -> None:
  """Raise a one-line `errors.DataError` naming the task if any label is invalid; host-side (numpy).

  Two forms:
    * `labels` a (B, T) array (the `masked_multilabel_loss` layout): every value must be in
      {-1, 0, 1}; `tasks` may be the T column names (used in the message; default 'task <t>').
    * `labels` a dict name -> array and `tasks` a `TaskSpec`: each task must have labels;
      'binary'/'multilabel' in {-1, 0, 1} (a 'multilabel' task with `num_classes` must have that
      many columns); 'classification' integers in [-1, num_classes) (-1 = unknown);
      'regression' finite floats or NaN (= unknown).

  Example:
    >>> validate_multitask_labels(np.array([[1, 2]]), ['smiling', 'glasses'])
    Traceback (most recent call last):
    jaxtransfer.errors.DataError: task 'glasses': label 2 at index (0,) is not in {-1 (unknown), 0, 1}
  """
  if not isinstance(labels, Mapping):
    labels = np.asarray(labels)
    if labels.ndim != 2:
      raise errors.DataError(f'multi-label labels must be (batch, tasks), got shape {labels.shape}')
    names = list(tasks) if tasks is not None else [f'task {t}' for t in range(labels.shape[1])]
    if len(names) != labels.shape[1]:
      raise errors.DataError(f'{len(names)} task names for {labels.shape[1]} label columns')
    for t, name in enumerate(names):
      _check_sigmoid_labels(name, labels[:, t])
    return
  if tasks is None or not isinstance(tasks, Mapping):
    raise ValueError('dict labels need a task spec: name -> Task')
  for name in labels:
    if name not in tasks:
      raise errors.DataError(f'task {name!r}: labels given but the task is not in the spec {list(tasks)}')
  for name, task in tasks.items():
    task = as_task(task)
    if name not in labels:
      raise errors.DataError(f'task {name!r}: no labels in the batch (use -1 / NaN for unknown)')
    label = np.asarray(labels[name])
    if task.kind in ('binary', 'multilabel'):
      if task.kind == 'multilabel' and task.num_classes is not None and label.shape[-1] != task.num_classes:
        raise errors.DataError(f'task {name!r}: {label.shape[-1]} label columns, expected {task.num_classes}')
      _check_sigmoid_labels(name, label)
    elif task.kind == 'classification':
      if task.num_classes is None:
        raise errors.ConfigError(f'task {name!r}: a classification task needs num_classes')
      not_int = ~np.isfinite(label) | (label != np.round(label)) if label.dtype.kind == 'f' else None
      if label.dtype.kind not in 'iuf' or (not_int is not None and not_int.any()):
        where = _first_bad(not_int) if not_int is not None and not_int.any() else ()
        shown = label[where].item() if where else label.dtype
        raise errors.DataError(f'task {name!r}: class labels must be integers, got {shown!r} at index {where}')
      bad = (label < -1) | (label >= task.num_classes)
      if bad.any():
        where = _first_bad(bad)
        raise errors.DataError(
            f'task {name!r}: class index {label[where].item()!r} at index {where} is out of range '
            f'[0, {task.num_classes}) (-1 = unknown)')
    else:  # regression
      if label.dtype.kind not in 'iuf':
        raise errors.DataError(f'task {name!r}: regression labels must be numbers, got dtype {label.dtype}')
      bad = np.isinf(label)
      if bad.any():
        where = _first_bad(bad)
        raise errors.DataError(f'task {name!r}: label {label[where].item()!r} at index {where} is infinite (NaN = unknown)')
