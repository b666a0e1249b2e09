"""Multi-task learning (issue #3): a dict of heads over one backbone, one masked loss per task.

Tasks come from `config.tasks` (`parse_tasks`); unknown labels are left out of the loss ('mask'), counted
as negatives ('negative'), their examples dropped from training ('drop', done by `train_examples`), or
filled with an EMA teacher's confident predictions ('pseudo', `pseudo_labels`; issue #18).
With `config.mtl.weighting` other than 'equal' the task gradients are combined by a `jaxtransfer.weighting`
method, whose state is this objective's state: `opt_state = {'tx': …, 'weighting': …}`, checkpointed
and resumed with the optimizer's.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtransfer import errors, losses, metrics, weighting
from jaxtransfer.data import catalog, shuffled_labels
from jaxtransfer.data.builders import multilabel
from jaxtransfer.models import model as model_lib
from jaxtransfer.objectives import base

Batch = base.Batch


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


UNKNOWN_POLICIES = ('mask', 'negative', 'drop', 'pseudo')
TASK_GRADIENTS = ('features', 'params')
WEIGHTINGS = {'equal': weighting.equal, 'uncertainty': weighting.uncertainty, 'gradnorm': weighting.gradnorm,
              'pcgrad': weighting.pcgrad, 'cagrad': weighting.cagrad, 'dwa': weighting.dwa, 'rlw': weighting.rlw,
              'famo': weighting.famo, 'nashmtl': weighting.nash_mtl, 'upgrad': weighting.upgrad}
_WEIGHTING_SEED = 0x5747      # the weighting state's key: PRNGKey(config.seed + this), a raw uint32 key


def parse_tasks(tasks: Any) -> tuple[TaskDef, ...]:
  """`config.tasks` (name → {'kind', 'num_classes'?, 'key'?, 'index'?, 'num_outputs'?}) → TaskDefs.

  Example (the scenes presence tasks and the object count as a softmax task):
    {'has_0': {'kind': 'binary', 'key': 'labels', 'index': 0}, …,
     'count': {'kind': 'classification', 'num_classes': 5, 'key': 'count'}}
  """
  if not tasks:
    raise errors.ConfigError('a multi-task run needs config.tasks: name -> {kind, key, index, num_classes}')
  out = []
  for name, spec in dict(tasks).items():
    spec = dict(spec)
    unknown_keys = set(spec) - {'kind', 'num_classes', 'key', 'index', 'num_outputs'}
    if unknown_keys:
      raise errors.ConfigError(f'tasks.{name}: unknown keys {sorted(unknown_keys)}')
    try:
      task = losses.as_task(losses.Task(spec['kind'], spec.get('num_classes')))
    except (KeyError, ValueError) as e:
      raise errors.ConfigError(f'tasks.{name}: {e}') from None
    if task.kind in ('multilabel', 'classification') and not task.num_classes:
      raise errors.ConfigError(f'tasks.{name}: a {task.kind} task needs num_classes')
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
      raise errors.DataError(f'task {t.name!r}: the batch has no feature {key!r} (features: {", ".join(batch)})')
    label = batch[key] if t.index is None else batch[key][:, t.index]
    out[t.name] = label.astype(jnp.float32) if t.task.kind == 'regression' else label
  return out


def pseudo_labels(task: losses.Task, labels: jax.Array, teacher_output: jax.Array, threshold: float) -> jax.Array:
  """`labels` with each unknown entry (−1) replaced by the teacher's confident prediction; a known label is
  never changed, and an entry the teacher is not sure about stays unknown.

  binary / multilabel: 1 where sigmoid(output) ≥ threshold, 0 where ≤ 1 − threshold; classification: the
  argmax class where its softmax probability ≥ threshold; regression: never pseudo-labelled.
  """
  if task.kind in ('binary', 'multilabel'):
    p = jax.nn.sigmoid(teacher_output.astype(jnp.float32)).reshape(labels.shape)
    guess = jnp.where(p >= threshold, 1, jnp.where(p <= 1.0 - threshold, 0, -1))
  elif task.kind == 'classification':
    p = jax.nn.softmax(teacher_output.astype(jnp.float32), axis=-1)
    guess = jnp.where(jnp.max(p, -1) >= threshold, jnp.argmax(p, -1), -1).reshape(labels.shape)
  else:
    return labels
  return jnp.where(labels < 0, guess, labels).astype(labels.dtype)


def weighting_method(name: str) -> weighting.Weighting:
  """The `jaxtransfer.weighting` method named by `config.mtl.weighting` (default hyper-parameters)."""
  if name not in WEIGHTINGS:
    raise errors.ConfigError(f'mtl.weighting: unknown method {name!r}; known: {", ".join(WEIGHTINGS)}')
  return WEIGHTINGS[name]()


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


@dataclasses.dataclass(frozen=True, eq=False)
class MultiTask(base.Objective):
  """Heterogeneous multi-task objective over a dict of heads (`MultiTaskHead`).

  loss: `losses.multitask_loss` (each task's mean over its known labels, summed with `weights`, default
  1), train metrics `loss/<task>`. `unknown_policy`: 'mask' leaves unknown labels out (the seed notes'
  loss); 'negative' treats an unknown sigmoid label as 0 (the naive baseline of experiment 6a); 'drop'
  trains only on fully labelled examples (`train_examples`), so the loss is 'mask'; 'pseudo' (self-training
  with a mean teacher) fills unknown labels with the confident predictions (`pseudo_threshold`) of an EMA of
  the weights (`ema_decay`, kept in the objective state) from step `pseudo_start` on — before that it is
  'mask'. A pseudo-labelled entry counts in the loss like a known one; a known label is never overridden.
  Why an EMA teacher and not the model itself: its predictions change slowly, so the model is not trained
  on its own latest mistakes; and not consistency between augmented views: the scenes have none to offer
  that keeps the presence answers (a crop can cut a digit out).
  per_example: the outputs ('score/<task>') and the labels to evaluate on ('label/<task>': the TRUE
  labels when the batch carries 'true_<key>', so a split with hidden labels is scored on all of them),
  plus the per-example loss ('nll/<task>', NaN where unknown). summarize: `metrics.multitask_metrics`
  (per-task accuracy / auc / ap / mse and `mean_ap`) and `loss` = Σ_t mean nll.
  `method` (None = equal weights, plain sum): a `weighting.Weighting` whose task weights come from the
  per-task losses or gradients (`grads`), its state under `opt_state['weighting']`, initialised with
  `weighting_key`; `task_gradients`: where a gradient method takes them ('features' | 'params', see `grads`).
  """
  tasks: tuple[TaskDef, ...]
  weights: Mapping[str, float] | None = None
  unknown_policy: str = 'mask'
  method: weighting.Weighting | None = None
  task_gradients: str = 'features'
  weighting_key: Any = None
  pseudo_threshold: float = 0.9
  ema_decay: float = 0.99
  pseudo_start: int = 100

  name = 'multitask'

  def __post_init__(self):
    if self.unknown_policy not in UNKNOWN_POLICIES:
      raise errors.ConfigError(f'mtl.unknown_policy: {self.unknown_policy!r} is not one of {UNKNOWN_POLICIES}')
    if self.task_gradients not in TASK_GRADIENTS:
      raise errors.ConfigError(f"mtl.task_gradients: expected 'features' or 'params', got {self.task_gradients!r}")

  @property
  def spec(self) -> dict[str, losses.Task]:
    return {t.name: t.task for t in self.tasks}

  @property
  def names(self) -> list[str]:
    return [t.name for t in self.tasks]

  def _train_labels(self, batch):
    labels = task_labels(self.tasks, batch)
    labels = {n: batch.get(f'pseudo/{n}', v) for n, v in labels.items()}   # 'pseudo': filled by `grads`
    if self.unknown_policy == 'negative':
      spec = self.spec
      labels = {n: jnp.maximum(v, 0) if spec[n].kind in ('binary', 'multilabel') else v for n, v in labels.items()}
    return labels

  def task_losses(self, outputs: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """((T,) per-task losses in task order, {'loss/<task>': scalar})."""
    _, per_task = losses.multitask_loss(outputs, self._train_labels(batch), self.spec)
    return jnp.stack([per_task[n] for n in self.names]), {f'loss/{n}': per_task[n] for n in self.names}

  def present(self, batch: Batch) -> jax.Array:
    """(T,) bool: the tasks with at least one known (training) label in the batch."""
    return jnp.stack(list(losses.present_tasks(self._train_labels(batch), self.spec).values()))

  def loss(self, outputs, batch):
    total, per_task = losses.multitask_loss(outputs, self._train_labels(batch), self.spec, self.weights)
    return total, {f'loss/{n}': v for n, v in per_task.items()}

  def per_example(self, outputs, batch):
    labels = task_labels(self.tasks, batch, true=True)
    out = {}
    for t in self.tasks:
      out[f'score/{t.name}'] = outputs[t.name]
      out[f'label/{t.name}'] = labels[t.name]
      out[f'nll/{t.name}'] = _per_example_loss(t.task, outputs[t.name], labels[t.name])
    return out

  def summarize(self, values):
    names = self.names
    result = metrics.multitask_metrics({n: values[f'score/{n}'] for n in names},
                                       {n: values[f'label/{n}'] for n in names}, self.spec)
    nll = {n: values[f'nll/{n}'] for n in names}
    result['loss'] = float(sum(np.nanmean(v) if np.isfinite(v).any() else 0.0 for v in nll.values()))
    return result

  def head(self, config: ml_collections.ConfigDict, num_outputs: int) -> dict[str, Any]:
    """One head per task (params head/<task>/…), `mtl.head_hidden` hidden layers each."""
    del num_outputs
    return {'name': 'multitask', 'outputs': head_outputs(self.tasks), 'hidden': list(config.mtl.head_hidden),
            'dropout': config.model.head_dropout}

  def train_examples(self, config: ml_collections.ConfigDict, num_outputs: int) -> np.ndarray | None:
    """Validate every training label (host side, one line naming the task on error) and pick the training
    examples: all, or with `mtl.unknown_policy='drop'` only the fully labelled ones."""
    del num_outputs
    if config.input.per_class:
      raise errors.ConfigError('input.per_class (k per class) does not apply to multi-task runs; slice the split '
                               'instead')
    keys = sorted({t.key for t in self.tasks})
    arrays = catalog.label_arrays(config.data, config.input.train_split, keys, config.input.data_dir or None,
                                  manual_dir=config.input.manual_dir or None)
    labels = task_labels(self.tasks, arrays)
    losses.validate_multitask_labels(labels, self.spec)
    if self.unknown_policy != 'drop':
      return None
    n = len(arrays[keys[0]])
    known = np.ones(n, bool)
    for t in self.tasks:
      lab = np.asarray(labels[t.name]).reshape(n, -1)
      known &= ~np.isnan(lab).any(1) if t.task.kind == 'regression' else (lab >= 0).all(1)
    if not known.any():
      raise errors.NoTrainingExamples(f'mtl.unknown_policy=drop: no fully labelled example in {config.data} '
                                      f'split {config.input.train_split}')
    return np.flatnonzero(known)

  def train_source(self, config: ml_collections.ConfigDict, source: Any) -> Any:
    """With `mtl.shuffled_tasks`: those tasks' training labels permuted across the training split (one seeded
    permutation per task, `input.subset_seed`), so they carry no information about the image — the
    unrelated-tasks control (`data/shuffled_labels.py`)."""
    names = list(config.mtl.get('shuffled_tasks', ()) or ())
    if not names:
      return source
    by_name = {t.name: (i, t) for i, t in enumerate(self.tasks)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
      raise errors.ConfigError(f'mtl.shuffled_tasks: {", ".join(map(repr, unknown))} not among the tasks '
                               f'({", ".join(self.names)})')
    keys = sorted({by_name[n][1].key for n in names})
    arrays = catalog.label_arrays(config.data, config.input.train_split, keys, config.input.data_dir or None,
                                  manual_dir=config.input.manual_dir or None)
    columns = {(by_name[n][1].key, by_name[n][1].index):
               shuffled_labels.permutation(len(source), config.input.subset_seed, by_name[n][0]) for n in names}
    return shuffled_labels.ShuffledLabels(source, {k: np.asarray(v) for k, v in arrays.items()}, columns)

  @property
  def has_state(self) -> bool:
    return self.method is not None or self.unknown_policy == 'pseudo'

  def init_state(self, params):
    state = {}
    if self.method is not None:
      state['weighting'] = self.method.init(len(self.tasks), self.weighting_key)
    if self.unknown_policy == 'pseudo':   # the teacher starts as the initial weights
      state['teacher'] = jax.tree_util.tree_map(jnp.asarray, params)
      state['pseudo_step'] = jnp.zeros((), jnp.int32)
    return state

  def _with_pseudo_labels(self, fwd, trainable, state, batch):
    """(batch + 'pseudo/<task>' labels from the EMA teacher, the new state, metrics)."""
    teacher = state['teacher']
    outputs = jax.lax.stop_gradient(
        fwd.model.apply(model_lib.variables(teacher, fwd.batch_stats), self.inputs(batch), train=False))
    active = state['pseudo_step'] >= self.pseudo_start
    labels = task_labels(self.tasks, batch)
    filled, unknown, got = {}, 0.0, 0.0
    for t in self.tasks:
      new = pseudo_labels(t.task, labels[t.name], outputs[t.name], self.pseudo_threshold)
      new = jnp.where(active, new, labels[t.name])
      filled[f'pseudo/{t.name}'] = new
      if t.task.kind != 'regression':
        unknown += jnp.sum(labels[t.name] < 0)
        got += jnp.sum((labels[t.name] < 0) & (new >= 0))
    student = model_lib.merge_frozen(trainable, fwd.fixed)
    d = self.ema_decay
    new_teacher = jax.tree_util.tree_map(lambda a, b: d * a + (1.0 - d) * jax.lax.stop_gradient(b), teacher, student)
    state = {**state, 'teacher': new_teacher, 'pseudo_step': state['pseudo_step'] + 1}
    return {**batch, **filled}, state, {'pseudo_labelled': got / jnp.maximum(unknown, 1.0)}

  def grads(self, fwd, trainable, state, batch, key):
    """Equal weights: the default (one backward pass of the summed loss). With a weighting method:
    `task_gradients='features'` takes the Gram matrix of the per-task gradients at the backbone's output
    (one backbone backward pass, `weighting.weighted_grads_at_features`); 'params' at the shared
    parameters (T backbone backward passes, `weighting.weighted_grads`)."""
    extra = {}
    if self.unknown_policy == 'pseudo':
      batch, state, extra = self._with_pseudo_labels(fwd, trainable, state, batch)
    if self.method is None:
      grads, new_stats, state, metrics_ = super().grads(fwd, trainable, state, batch, key)
      return grads, new_stats, state, {**metrics_, **extra}
    method, x = self.method, self.inputs(batch)
    if self.task_gradients == 'features' and method.needs_gram:
      def features_fn(backbone):
        return fwd.apply({'backbone': backbone}, x, None, method=model_lib.Model.features)

      def heads_fn(head, z):
        outputs = fwd.model.apply({'params': {'head': head}}, z, method=lambda m, z: m.head(z, train=True),
                                  rngs={'dropout': key})
        return self.task_losses(outputs, batch)
      (g_backbone, g_head), w_state, info = weighting.weighted_grads_at_features(
          method, features_fn, heads_fn, trainable['backbone'], trainable['head'], state['weighting'],
          self.present(batch))
      grads = {'backbone': g_backbone, 'head': g_head}
      new_stats, metrics_ = info.aux
    else:
      def loss_fn(p):
        outputs, new_stats = fwd.apply(p, x, key)
        per_task, metrics_ = self.task_losses(outputs, batch)
        return per_task, (metrics_, new_stats)
      grads, w_state, info = weighting.weighted_grads(method, loss_fn, trainable, state['weighting'],
                                                      self.present(batch), vectorize=False)
      metrics_, new_stats = info.aux
    metrics_ = {**metrics_, **{f'weight_{n}': info.weights.shared[i] for i, n in enumerate(self.names)}}
    return grads, new_stats, {**state, 'weighting': w_state}, {'loss': jnp.sum(info.losses), **metrics_, **extra}


def multitask(tasks: Any, weights: Mapping[str, float] | None = None, unknown_policy: str = 'mask',
              method: weighting.Weighting | None = None, task_gradients: str = 'features',
              weighting_key: Any = None, **pseudo: Any) -> MultiTask:
  """The multi-task objective of `tasks` (`config.tasks` or a sequence of `TaskDef`s); see `MultiTask`.
  `pseudo`: pseudo_threshold, ema_decay, pseudo_start (unknown_policy='pseudo')."""
  defs = tuple(tasks) if tasks and isinstance(next(iter(tasks)), TaskDef) else parse_tasks(tasks)
  return MultiTask(defs, weights, unknown_policy, method, task_gradients, weighting_key, **pseudo)


def tasks_of(config: ml_collections.ConfigDict) -> Any:
  """`config.tasks`; when it is empty and `config.data` is a `multilabel:` dataset, the tasks its table header or
  class names declare (`multilabel.task_config`, which prepares the dataset first if needed)."""
  if not config.tasks and config.data.startswith(multilabel.PREFIX):
    return multilabel.task_config(config.data, data_dir=config.input.data_dir or None)
  return config.tasks


def from_config(config: ml_collections.ConfigDict) -> MultiTask:
  """`config.tasks`, `config.mtl.unknown_policy`, `.weighting` ('equal' = no method) and `.task_gradients`."""
  name = config.mtl.weighting
  method = None if name == 'equal' else weighting_method(name)
  key = jax.random.PRNGKey(config.seed + _WEIGHTING_SEED) if method is not None else None
  m = config.mtl
  pseudo = {k: m[k] for k in ('pseudo_threshold', 'ema_decay', 'pseudo_start') if k in m}
  return multitask(tasks_of(config), unknown_policy=m.unknown_policy, method=method,
                   task_gradients=m.task_gradients, weighting_key=key, **pseudo)
