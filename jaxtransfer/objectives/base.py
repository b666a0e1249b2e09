"""The interface every objective implements, and the model as the train step hands it to an objective.

An objective is what a run optimises and how it is measured; the training loop (`train.train`) and the
steps it compiles (`steps.py`) call it the same way whatever it is. Jitted inside the steps:
  grads(fwd, trainable, state, batch, key) → (grads, new batch_stats, new state, {'loss': …, metric: …})
      default: `jax.value_and_grad` of `loss` on the training forward pass of `inputs(batch)`;
  loss(outputs, batch)          → (scalar loss, {name: scalar}), used by the default `grads`;
  predict(model, variables, batch) → outputs in inference mode; default `model.apply(inputs(batch))`;
  per_example(outputs, batch)   → {name: (B, …) array} — gathered on the host over a whole split.
On the host:
  head(config, num_outputs)     → the head spec of a run (`models/heads.py`);
  train_examples(config, num_outputs) → the indices of the training examples (None = all of them),
      after validating their labels (one-line `errors.DataError` / `errors.ConfigError`);
  train_source(config, source)  → the training source as this objective reads it (default: unchanged);
  summarize({name: array})      → {metric: float} over a whole split without padding;
  init_state(params)            → {name: pytree} of extra state (`has_state`), carried next to the optimizer
      state in `opt_state` = {'tx': optax state, **state} and so checkpointed and resumed with it;
  num_classes(info, tokenizer)  → the width of what it predicts (default: the dataset's classes);
  for_tokenizer(tokenizer)      → the objective bound to a text run's tokenizer (default: itself).
The model input is `inputs(batch)`: batch['tokens'] for text (the pipeline tokenizes), else batch['image'],
or `batch[input_key]` when an objective names its own.
Gathering per-example values (not running sums) keeps metrics such as AUC and average precision exact.

What an objective may need beyond classification, without a change to the loop: another input
(`input_key`); randomness drawn inside the step from `key` (which tokens to
mask: override `grads` and split `key`); outputs that are not a head's logits on pooled features (call
`fwd.apply(..., method=...)` in `grads` and `model.apply(..., method=...)` in `predict`); extra state
such as an EMA teacher (`init_state` + `grads`).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtransfer.models import model as model_lib

Batch = dict[str, Any]
PyTree = Any


def content_keys(rows: jax.Array, salt: int) -> jax.Array:
  """One PRNG key per row of `rows` (B, …) that depends only on that row's values (and `salt`): the
  randomness of an evaluation (which tokens or patches to hide, which views to make), so a split scores the
  same at every evaluation whatever the batch it lands in. Integer rows hash their values, float rows their
  bits."""
  flat = rows.reshape(rows.shape[0], -1)
  bits = (jax.lax.bitcast_convert_type(flat.astype(jnp.float32), jnp.uint32)
          if jnp.issubdtype(flat.dtype, jnp.floating) else flat.astype(jnp.uint32))
  weights = jnp.arange(1, bits.shape[1] + 1, dtype=jnp.uint32) * jnp.uint32(2654435761)
  return jax.vmap(lambda h: jax.random.fold_in(jax.random.key(salt), h))(jnp.sum(bits * weights, axis=1))


@dataclasses.dataclass(frozen=True)
class Forward:
  """The model inside one train step, as a function of the trainable parameters.

  `fixed` holds the frozen backbone blocks (`model_lib.split_frozen`): they enter the forward pass but are
  never differentiated, so no backward pass through them is traced.
  """
  model: model_lib.Model
  batch_stats: PyTree
  frozen: tuple[str, ...]
  fixed: dict[str, Any]

  def apply(self, trainable: PyTree, x: jax.Array, key: jax.Array | None, *,
            method: Callable[..., Any] | None = None, **method_kwargs: Any) -> tuple[Any, PyTree]:
    """Training-mode outputs of `method` (default: the whole model; `method_kwargs` go to it) and the updated
    BatchNorm statistics (frozen blocks keep theirs); `key` feeds dropout (None: no dropout randomness)."""
    variables = model_lib.variables(model_lib.merge_frozen(trainable, self.fixed), self.batch_stats)
    kwargs = {'rngs': {'dropout': key}, **method_kwargs} if key is not None else dict(method_kwargs)
    if method is not None:
      kwargs['method'] = method
    outputs, mutated = self.model.apply(variables, x, train=True, frozen=self.frozen, mutable=['batch_stats'],
                                        **kwargs)
    return outputs, mutated.get('batch_stats', self.batch_stats)


class Objective:
  """Base class of the objectives: override `loss`, `per_example`, `summarize` and `head`; the other
  hooks have defaults (see the module docstring). Instances are immutable and hold their settings."""

  name: str = 'objective'
  input_key: str | None = None    # None: 'tokens' when the batch has them, else 'image'

  def inputs(self, batch: Batch) -> Any:
    """The model input of `batch` (class docstring)."""
    if self.input_key is not None:
      return batch[self.input_key]
    return batch['tokens'] if 'tokens' in batch else batch['image']

  # --- jitted inside the train and eval steps ---

  def loss(self, outputs: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    raise NotImplementedError

  def grads(self, fwd: Forward, trainable: PyTree, state: dict[str, PyTree], batch: Batch,
            key: jax.Array) -> tuple[PyTree, PyTree, dict[str, PyTree], dict[str, jax.Array]]:
    """Gradients of the trainable parameters, the new BatchNorm statistics and objective state, and the
    train metrics (with 'loss'). Default: one backward pass of `loss` on the training forward pass."""

    def loss_fn(p):
      outputs, new_stats = fwd.apply(p, self.inputs(batch), key)
      loss, metrics = self.loss(outputs, batch)
      return loss, (metrics, new_stats)

    (loss, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    return grads, new_stats, state, {'loss': loss, **metrics}

  def predict(self, model: model_lib.Model, variables: dict[str, Any], batch: Batch) -> Any:
    """Inference-mode outputs for `per_example`."""
    return model.apply(variables, self.inputs(batch), train=False)

  def per_example(self, outputs: Any, batch: Batch) -> dict[str, jax.Array]:
    raise NotImplementedError

  # --- host side ---

  def summarize(self, values: dict[str, np.ndarray]) -> dict[str, float]:
    raise NotImplementedError

  def head(self, config: ml_collections.ConfigDict, num_outputs: int) -> dict[str, Any]:
    raise NotImplementedError

  def train_examples(self, config: ml_collections.ConfigDict, num_outputs: int) -> np.ndarray | None:
    """Indices of the examples of `config.input.train_split` to train on (None = all), labels checked."""
    del config, num_outputs
    return None

  def train_source(self, config: ml_collections.ConfigDict, source: Any) -> Any:
    """The training data source as the objective trains on it (e.g. with some labels permuted as a control)."""
    del config
    return source

  @property
  def has_state(self) -> bool:
    """Whether `init_state` returns state (then `opt_state` is {'tx': optax state, **state})."""
    return False

  def init_state(self, params: PyTree) -> dict[str, PyTree]:
    del params
    return {}

  def num_classes(self, info: Any, tokenizer: Any | None) -> int:
    """How many classes the head predicts before `config.model.num_outputs` overrides: the dataset's."""
    del tokenizer
    return info.num_classes

  def for_tokenizer(self, tokenizer: Any) -> 'Objective':
    """This objective for a text run tokenized by `tokenizer` (e.g. which id is [MASK])."""
    del tokenizer
    return self
