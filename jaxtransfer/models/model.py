"""A model is a backbone and a head, described by a JSON-serialisable spec.

Parameters are `{'backbone': …, 'head': …}` (and `batch_stats` likewise when the backbone normalises).
The spec is saved in every checkpoint, so a checkpoint alone is enough to rebuild its backbone:

  spec = {'backbone': {'name': 'cnn', 'stages': [16, 32], 'dense': [128]},
          'head': {'name': 'linear', 'num_outputs': 10}}
  model = build(spec)
  variables = init(model, key, (28, 28, 1))     # {'params': …, 'batch_stats': …}
"""

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtransfer import errors
from jaxtransfer.models.backbones import BACKBONES
from jaxtransfer.models.heads import HEADS

Spec = dict[str, Any]


class Model(nn.Module):
  """Backbone features → head outputs. `frozen` names backbone blocks whose BatchNorm stays in inference mode."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x: jax.Array, *, train: bool = False, frozen: Sequence[str] = ()) -> jax.Array:
    return self.head(self.features(x, train=train, frozen=frozen), train=train)

  def features(self, x: jax.Array, *, train: bool = False, frozen: Sequence[str] = ()) -> jax.Array:
    return self.backbone(x, train=train, frozen=frozen)

  def per_token(self, x: jax.Array, positions: jax.Array | None = None, *, train: bool = False,
                frozen: Sequence[str] = ()) -> tuple[jax.Array, jax.Array]:
    """(the head on the positions of a sequence backbone's output, the real-token mask (B, T)): what a
    masked-prediction objective reads (`TransformerEncoder.encode`). `positions` (B, K) int: the head runs on
    those K positions of each row only (B, K, …) — a masked-LM head's vocabulary projection is most of a small
    encoder's compute, and only the masked positions need it; None: every position (B, T, …)."""
    if not hasattr(self.backbone, 'encode'):
      raise errors.ConfigError(f'{type(self.backbone).__name__} has no per-token outputs: a masked-prediction '
                               'objective needs a transformer backbone')
    seq, mask = self.backbone.encode(x, train=train, frozen=frozen)
    if positions is not None:
      seq = jnp.take_along_axis(seq, positions[..., None], axis=1)
    return self.head(seq, train=train), mask


  def reconstruct(self, x: jax.Array, keep: jax.Array, restore: jax.Array, *, train: bool = False,
                  frozen: Sequence[str] = ()) -> tuple[jax.Array, jax.Array]:
    """Masked autoencoding: the encoder on the patches `keep` (B, V) only, then the head (`MAEHead`) on their
    outputs with `restore` (B, N) — where each of the N patches sits in [kept…, masked…] — predicting all N
    patches: (B, N, p·p·C), and the mean of the visible patches' outputs (B, width) for an online probe."""
    if not hasattr(self.backbone, 'encode'):
      raise errors.ConfigError(f'{type(self.backbone).__name__} has no per-patch outputs: masked autoencoding '
                               'needs a transformer backbone with stem=patches')
    seq, _ = self.backbone.encode(x, train=train, frozen=frozen, keep=keep)
    seq = seq[:, seq.shape[1] - keep.shape[1]:]    # without the [CLS] vector (pool='cls'): patches only
    return self.head(seq, restore=restore, train=train), jnp.mean(seq, axis=1)

  def embed(self, x: jax.Array, *, train: bool = False, frozen: Sequence[str] = ()) -> tuple[jax.Array, jax.Array]:
    """(backbone features, head outputs): a joint-embedding objective's projections and what a probe reads."""
    feats = self.features(x, train=train, frozen=frozen)
    return feats, self.head(feats, train=train)


def _build_part(registry: Mapping[str, type[nn.Module]], spec: Mapping[str, Any], what: str) -> nn.Module:
  kwargs = dict(spec)
  name = kwargs.pop('name', None)
  if name not in registry:
    raise errors.ConfigError(f'unknown {what} {name!r}; known: {", ".join(sorted(registry))}')
  try:
    return registry[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
  except TypeError as e:
    raise errors.ConfigError(f'bad {what} spec {dict(spec)}: {e}') from None


def build_backbone(spec: Mapping[str, Any]) -> nn.Module:
  """The backbone module described by `spec` (`{'name': 'cnn' | 'resnet', **kwargs}`)."""
  return _build_part(BACKBONES, spec, 'backbone')


def build(spec: Mapping[str, Any]) -> Model:
  """The full model described by `spec` (`{'backbone': …, 'head': …}`)."""
  return Model(backbone=build_backbone(spec['backbone']), head=_build_part(HEADS, spec['head'], 'head'))


def init(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict[str, Any]:
  """The model's initial variables for inputs of shape `input_shape` (one example, no batch axis).

  Initialisers see one all-zero example: parameter shapes depend only on the input shape. Pure, so it can
  be jitted (with `out_shardings`) or traced with `jax.eval_shape` (see `abstract`).
  """
  return model.init(key, jnp.zeros((1, *input_shape), jnp.float32))


def abstract(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
  """The `jax.ShapeDtypeStruct` tree of `init(model, key, input_shape)`, without computing anything."""
  return jax.eval_shape(lambda k: init(model, k, input_shape), jax.random.key(0))


def variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  """The variables of `Model.apply`: params, and BatchNorm statistics when the backbone has them."""
  return {'params': params, 'batch_stats': batch_stats} if batch_stats else {'params': params}


def split_frozen(params: Any, frozen: Sequence[str]) -> tuple[Any, dict[str, Any]]:
  """(params without the frozen backbone blocks, the frozen blocks): a train step differentiates only the
  first, so no backward pass through frozen blocks is ever traced (not left to XLA to remove)."""
  if not frozen:
    return params, {}
  backbone = params['backbone']
  return ({**params, 'backbone': {k: v for k, v in backbone.items() if k not in frozen}},
          {k: v for k, v in backbone.items() if k in frozen})


def merge_frozen(params: Any, fixed: dict[str, Any]) -> Any:
  """Inverse of `split_frozen`."""
  return {**params, 'backbone': {**params['backbone'], **fixed}} if fixed else params


def num_blocks(backbone_spec: Mapping[str, Any]) -> int:
  """How many blocks the backbone has after its own `drop_last`."""
  return len(build_backbone(backbone_spec).block_modules())


def drop_last_blocks(backbone_spec: Mapping[str, Any], k: int) -> Spec:
  """The spec of the same backbone with its last `k` blocks removed (surgery before transfer)."""
  if k < 0:
    raise errors.ConfigError(f'transfer.drop_last_blocks: k must be ≥ 0, got {k}')
  n = num_blocks(backbone_spec)
  if k >= n:
    raise errors.ConfigError(f'transfer.drop_last_blocks: cannot drop {k} of the backbone\'s {n} blocks (at least one must stay)')
  spec = copy.deepcopy(dict(backbone_spec))
  spec['drop_last'] = spec.get('drop_last', 0) + k
  return spec
