"""Single-label classification: softmax cross-entropy on one head, accuracy; k examples per class.

With `input.augment` each training image is replaced, inside the jitted step, by a random view of itself
(`views.random_views` at `config.views`: random resized crop, rotation, shear, translation, stroke width,
contrast) drawn from the step key — reproducible per (seed, step), resumable bit-identically; evaluation sees
the plain images. For supervised pretraining that should not depend on one framing of its images.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtransfer import errors, losses, views
from jaxtransfer.data import catalog, fewshot
from jaxtransfer.objectives import base


def check_labels(labels: np.ndarray, num_outputs: int, where: str) -> None:
  """Raise a one-line `errors.DataError` when a class label does not fit a head of `num_outputs` classes."""
  bad = labels[(labels < 0) | (labels >= num_outputs)]
  if bad.size:
    raise errors.DataError(f'label {int(bad[0])} out of range for a head with {num_outputs} classes ({where})')


def select_examples(labels: np.ndarray, num_outputs: int, per_class: int, subset_seed: int,
                    where: str) -> np.ndarray | None:
  """Check the training labels and pick the examples: all (None), or `per_class` per class."""
  check_labels(labels, num_outputs, where)
  return fewshot.k_per_class_indices(labels, per_class, subset_seed) if per_class else None


class Classification(base.Objective):
  """Softmax cross-entropy over `batch['label']`; train metric `accuracy`, eval `accuracy` and `loss`."""

  name = 'classification'

  def loss(self, logits, batch):
    value = losses.softmax_cross_entropy(logits, batch['label'])
    return value, {'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}

  def per_example(self, logits, batch):
    return {'nll': optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']),
            'correct': (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)}

  def summarize(self, values):
    return {'accuracy': float(np.mean(values['correct'])), 'loss': float(np.mean(values['nll']))}

  def head(self, config: ml_collections.ConfigDict, num_outputs: int) -> dict[str, Any]:
    """`config.model.head` ('linear' | 'mlp', with `model.head_hidden`, `model.head_dropout`)."""
    if config.model.head == 'multitask':
      raise errors.ConfigError("model.head='multitask' is the head of the multi-task objective: set "
                               "objective='multitask'")
    head: dict[str, Any] = {'name': config.model.head, 'num_outputs': num_outputs}
    if config.model.head == 'mlp':
      head.update(hidden=list(config.model.head_hidden), dropout=config.model.head_dropout)
    return head

  def train_examples(self, config: ml_collections.ConfigDict, num_outputs: int) -> np.ndarray | None:
    """Every label of the training split checked against the head; `input.per_class` examples per class."""
    labels = catalog.labels(config.data, config.input.train_split, data_dir=config.input.data_dir or None,
                            manual_dir=config.input.manual_dir or None)
    return select_examples(labels, num_outputs, config.input.per_class, config.input.subset_seed,
                           f'{config.data} split {config.input.train_split}')


@dataclasses.dataclass(frozen=True)
class AugmentedClassification(Classification):
  """Classification on a random view of each training image (module docstring)."""
  view_config: views.ViewConfig = views.ViewConfig()

  def grads(self, fwd, trainable, state, batch, key):
    k_views, key = jax.random.split(key)
    batch = {**batch, 'image': views.random_views(batch['image'], k_views, self.view_config)}
    return super().grads(fwd, trainable, state, batch, key)


def classification() -> Classification:
  """Single-label classification: softmax cross-entropy, accuracy."""
  return Classification()


def from_config(config: ml_collections.ConfigDict) -> Classification:
  """Classification; with `input.augment`, on random views of the training images (`config.views`)."""
  if config.input.get('augment', False):
    return AugmentedClassification(views.from_config(config.get('views', {})))
  return Classification()
