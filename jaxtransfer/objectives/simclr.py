"""SimCLR (Chen et al. 2020): a joint-embedding objective for every backbone — two random views of each image
should map close together and away from the other images' views.

Each step makes two views of every image inside the jitted step from the step key (`views.two_views`:
random resized crop, rotation, shear, translation, stroke width, contrast, brightness — `config.views`), so a
run is reproducible per (seed, step) and resumes bit-identically. Both views go through the backbone and the
projection head (an MLP: `simclr.proj_hidden` → `simclr.proj_dim`, the head, dropped at transfer like any
head) in one batch of 2B; the loss is NT-Xent (`optax.losses.ntxent`) at `simclr.temperature` with each view's
positive its twin and the other 2B − 2 views the negatives. BatchNorm backbones see the 2B views together.
Train metric `pair_accuracy`: how often a view's nearest other view (cosine) is its twin.

Evaluation makes the views with a key hashed from each image's pixels (the same every time) and scores each
eval batch's valid rows among themselves: `loss` (NT-Xent) and `pair_accuracy` — both depend on the eval batch
size (the number of negatives), so compare them at one `train.eval_batch_size`. What the features are worth
for a task is measured by transfer (a linear probe or fine-tune from the run).
No label is read: any image dataset pretrains without its labels.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtransfer import errors, online_probe, views
from jaxtransfer.models import model as model_lib
from jaxtransfer.objectives import base


def _similarities(z: jax.Array, valid: jax.Array, temperature: float) -> jax.Array:
  """(2B, 2B) cosine similarities / temperature, −inf on the diagonal and at invalid rows' columns."""
  z = z.astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  sim = z @ z.T / temperature
  n = z.shape[0]
  return jnp.where(jnp.eye(n, dtype=bool) | ~valid[None, :], -jnp.inf, sim)


def pair_terms(z: jax.Array, temperature: float, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per view of the 2B views [first views…, second views…]: (NT-Xent term −log softmax of its twin among the
  valid other views, whether its most similar other view is its twin); rows where `valid` is False get 0."""
  n = z.shape[0]
  b = n // 2
  valid = jnp.ones((n,), bool) if valid is None else valid
  sim = _similarities(z, valid, temperature)
  twin = jnp.concatenate([jnp.arange(b, n), jnp.arange(b)])
  log_p = jax.nn.log_softmax(sim, axis=-1)
  nll = -jnp.take_along_axis(log_p, twin[:, None], axis=1)[:, 0]
  top1 = (jnp.argmax(sim, axis=-1) == twin).astype(jnp.float32)
  return jnp.where(valid, nll, 0.0), jnp.where(valid, top1, 0.0)


@dataclasses.dataclass(frozen=True)
class SimCLR(online_probe.Probed, base.Objective):
  """The SimCLR objective (module docstring)."""
  temperature: float = 0.1
  proj_hidden: int = 256
  proj_dim: int = 64
  view_config: views.ViewConfig = views.ViewConfig()
  probe_classes: int = 0     # > 0: an online linear probe on the first views' features (online_probe.py)

  name = 'simclr'
  input_key = 'image'

  def num_classes(self, info: Any, tokenizer: Any | None) -> int:
    if tokenizer is not None or not info.image_shape:
      raise errors.ConfigError('objective simclr needs an image dataset')
    return self.proj_dim

  def head(self, config: ml_collections.ConfigDict, num_outputs: int) -> dict[str, Any]:
    return {'name': 'mlp', 'num_outputs': num_outputs, 'hidden': [self.proj_hidden] if self.proj_hidden else []}

  def grads(self, fwd, trainable, state, batch, key):
    k_views, k_dropout = jax.random.split(key)
    images = self.inputs(batch)
    v1, v2 = views.two_views(images, k_views, self.view_config)
    b = images.shape[0]
    labels = jnp.concatenate([jnp.arange(b), jnp.arange(b)])

    def loss_fn(p):
      (feats, z), new_stats = fwd.apply(p, jnp.concatenate([v1, v2]), k_dropout, method=model_lib.Model.embed)
      return optax.losses.ntxent(z.astype(jnp.float32), labels, self.temperature), (feats, z, new_stats)

    (loss, (feats, z, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    _, top1 = pair_terms(jax.lax.stop_gradient(z), self.temperature)
    state, metrics = self.with_probe(state, {'loss': loss, 'pair_accuracy': jnp.mean(top1)}, feats[:b],
                                     batch.get('label'))
    return grads, new_stats, state, metrics

  def probe_dim(self, params):
    head = params['head']
    return (head['layer_0'] if 'layer_0' in head else head['out'])['kernel'].shape[0]

  def predict(self, model, variables, batch):
    images = self.inputs(batch)
    v1, v2 = views.two_views(images, base.content_keys(images.reshape(1, -1), 0x73696D)[0],
                             self.view_config)
    return model.apply(variables, jnp.concatenate([v1, v2]), train=False)

  def per_example(self, outputs, batch):
    valid = batch['mask'] > 0
    nll, top1 = pair_terms(outputs, self.temperature, jnp.concatenate([valid, valid]))
    b = valid.shape[0]
    return {'nll': (nll[:b] + nll[b:]) / 2, 'pair_top1': (top1[:b] + top1[b:]) / 2}

  def loss(self, outputs, batch):   # not used: `grads` is overridden (the views need the step key)
    raise NotImplementedError

  def summarize(self, values):
    return {'loss': float(np.mean(values['nll'])), 'pair_accuracy': float(np.mean(values['pair_top1']))}


def from_config(config: ml_collections.ConfigDict) -> SimCLR:
  s = config.get('simclr', ml_collections.ConfigDict())
  return SimCLR(temperature=float(s.get('temperature', 0.1)), proj_hidden=int(s.get('proj_hidden', 256)),
                proj_dim=int(s.get('proj_dim', 64)), view_config=views.from_config(config.get('views', {})),
                probe_classes=online_probe.num_classes(config))
