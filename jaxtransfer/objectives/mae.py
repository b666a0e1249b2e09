"""Masked autoencoding (MAE, He et al. 2022): reconstruct hidden image patches from the visible ones.

An image's N patches are the encoder's own (the transformer's patch stem, p×p). Masking is drawn inside the
jitted train step from the step key (`random_masking`), so a resumed run is bit-identical: per image,
exactly `num_masked` = round(`mae.mask_ratio` × N) patches (75 %; at least one masked and one visible) are
hidden, uniformly at random. The encoder runs on the visible patches only (`TransformerEncoder.encode(keep=…)`:
its layers cost ~25 % of a full pass), the light decoder (`heads.MAEHead`) on all N, with a learned [MASK]
vector at the hidden ones. Loss: mean squared error over the hidden patches only — a visible patch carries
no loss — against targets normalised per patch by their own pixel mean and variance (`mae.norm_pix`, the
paper's better variant). The decoder is the head: transfer drops it like any head.

Evaluation masks with a key made from each image's own pixels (not the step), so a split scores the same at
every evaluation and in `jaxtransfer evaluate`: metric `loss` (mean squared error per hidden patch).
No label is read: any image dataset pretrains without its labels.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtransfer import errors, online_probe
from jaxtransfer.models import model as model_lib
from jaxtransfer.objectives import base


def num_masked(n: int, ratio: float) -> int:
  """How many of an image's n patches are hidden: round(ratio × n), at least 1 and at most n − 1."""
  if n < 2:
    raise errors.ConfigError(f'objective mae: an image of {n} patch(es) cannot be split into visible and hidden')
  return int(min(n - 1, max(1, round(ratio * n))))


def random_masking(key: jax.Array, batch: int, n: int, ratio: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(keep (B, V) int32: the visible patches in a random order, restore (B, N) int32: the position of each
  patch in [kept…, hidden…], hidden (B, N) bool), V = n − num_masked(n, ratio), uniform per row."""
  shuffle = jnp.argsort(jax.random.uniform(key, (batch, n)), axis=1)
  restore = jnp.argsort(shuffle, axis=1).astype(jnp.int32)
  visible = n - num_masked(n, ratio)
  return shuffle[:, :visible].astype(jnp.int32), restore, restore >= visible


def patchify(images: jax.Array, p: int) -> jax.Array:
  """(B, H, W, C) → (B, N, p·p·C) in the patch stem's order (row-major over the grid; a remainder dropped)."""
  b, h, w, c = images.shape
  gh, gw = h // p, w // p
  x = images[:, :gh * p, :gw * p].reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * gw, p * p * c)


def patch_targets(images: jax.Array, p: int, norm_pix: bool) -> jax.Array:
  """The reconstruction targets: each patch's pixels, normalised by the patch's own mean and variance."""
  t = patchify(images.astype(jnp.float32), p)
  if not norm_pix:
    return t
  mean, var = jnp.mean(t, -1, keepdims=True), jnp.var(t, -1, keepdims=True)
  return (t - mean) / jnp.sqrt(var + 1e-6)


def masked_errors(pred: jax.Array, target: jax.Array, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum over each image's hidden patches of the per-patch mean squared error (B,), hidden patches (B,))."""
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  return jnp.sum(jnp.where(hidden, per_patch, 0.0), axis=1), jnp.sum(hidden, axis=1).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class MaskedAutoencoder(online_probe.Probed, base.Objective):
  """The MAE objective (module docstring). `patch_size` is the encoder's; the head predicts p·p·C pixels."""
  patch_size: int = 4
  mask_ratio: float = 0.75
  norm_pix: bool = True
  decoder_width: int = 64
  decoder_depth: int = 1
  decoder_heads: int = 4
  probe_classes: int = 0     # > 0: an online linear probe on the visible patches' mean output (online_probe.py)

  name = 'mae'
  input_key = 'image'

  def num_classes(self, info: Any, tokenizer: Any | None) -> int:
    if tokenizer is not None or not info.image_shape:
      raise errors.ConfigError('objective mae needs an image dataset')
    return self.patch_size * self.patch_size * int(info.image_shape[-1])

  def head(self, config: ml_collections.ConfigDict, num_outputs: int) -> dict[str, Any]:
    return {'name': 'mae', 'num_outputs': num_outputs, 'width': self.decoder_width, 'depth': self.decoder_depth,
            'num_heads': self.decoder_heads}

  def _num_patches(self, shape: tuple[int, ...]) -> int:
    return (shape[1] // self.patch_size) * (shape[2] // self.patch_size)

  def grads(self, fwd, trainable, state, batch, key):
    k_mask, k_dropout = jax.random.split(key)
    images = self.inputs(batch)
    keep, restore, hidden = random_masking(k_mask, images.shape[0], self._num_patches(images.shape),
                                           self.mask_ratio)
    target = patch_targets(images, self.patch_size, self.norm_pix)

    def loss_fn(p):
      (pred, feats), new_stats = fwd.apply(p, images, k_dropout, method=model_lib.Model.reconstruct, keep=keep,
                                           restore=restore)
      err, count = masked_errors(pred, target, hidden)
      return jnp.sum(err) / jnp.maximum(jnp.sum(count), 1.0), (feats, new_stats)

    (loss, (feats, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    state, metrics = self.with_probe(state, {'loss': loss}, feats, batch.get('label'))
    return grads, new_stats, state, metrics

  def probe_dim(self, params):
    return params['head']['embed']['kernel'].shape[0]

  def predict(self, model, variables, batch):
    images = self.inputs(batch)
    n = self._num_patches(images.shape)
    mask_row = lambda k: jax.tree_util.tree_map(lambda x: x[0], random_masking(k, 1, n, self.mask_ratio))
    keep, restore, hidden = jax.vmap(mask_row)(base.content_keys(images, 0x6D6165))
    pred, _ = model.apply(variables, images, keep, restore, train=False, method=model_lib.Model.reconstruct)
    return pred, hidden

  def per_example(self, outputs, batch):
    pred, hidden = outputs
    err, count = masked_errors(pred, patch_targets(self.inputs(batch), self.patch_size, self.norm_pix), hidden)
    return {'sse': err, 'hidden': count}

  def loss(self, outputs, batch):   # not used: `grads` is overridden (masking needs the step key)
    raise NotImplementedError

  def summarize(self, values):
    return {'loss': float(np.sum(values['sse'])) / max(float(np.sum(values['hidden'])), 1.0),
            'hidden_patches': float(np.sum(values['hidden']))}


def _backbone_spec(config: ml_collections.ConfigDict) -> dict[str, Any]:
  if config.model.backbone:
    return dict(config.model.backbone)
  if config.transfer.init_from:
    from jaxtransfer import transfer   # a checkpoint's own backbone (continued pretraining)
    return transfer.source_backbone_spec(config.transfer.init_from, config.transfer.drop_last_blocks)
  return {}


def from_config(config: ml_collections.ConfigDict) -> MaskedAutoencoder:
  """config.mae.* and the backbone's patch size; a backbone that is not a patch transformer is one line."""
  spec = _backbone_spec(config)
  if spec.get('name') != 'transformer' or spec.get('stem') != 'patches':
    raise errors.ConfigError('objective mae needs model.backbone = a transformer with stem=patches, got '
                             f'{spec.get("name")!r} (stem {spec.get("stem")!r})')
  m = config.get('mae', ml_collections.ConfigDict())
  return MaskedAutoencoder(patch_size=int(spec.get('patch_size', 4)), mask_ratio=float(m.get('mask_ratio', 0.75)),
                           norm_pix=bool(m.get('norm_pix', True)), decoder_width=int(m.get('decoder_width', 64)),
                           decoder_depth=int(m.get('decoder_depth', 1)),
                           decoder_heads=int(m.get('decoder_heads', 4)), probe_classes=online_probe.num_classes(config))

