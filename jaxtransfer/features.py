"""Feature cache and closed-form probes: a frozen backbone runs once per dataset, not once per step.

When the whole backbone is frozen and the input pipeline has no augmentation, an example's features
never change, so they are computed once (`extract`, cached in memory and on disk by `FeatureCache`) and
the head trains on them:

    cache = FeatureCache('runs/cache')
    tr = cache.get('runs/demo/pretrain', 'real_digits', 'train')      # Features(x (N, D), y (N,))
    te = cache.get('runs/demo/pretrain', 'real_digits', 'test')
    metrics = linear_probe(config, cache=cache)          # = train.train(config) with trainable='head'
    acc = ridge_probe(tr.x[idx], tr.y[idx], te.x, te.y)  # closed form, milliseconds

`train.train` itself does this for a head-only run (`for_run`: every backbone parameter frozen, from
`transfer.init_from`, no augmentation, an objective that needs only the head's outputs;
`train.feature_cache=False` turns it off): the same loop, step, optimizer and state trees on a model whose
backbone is the identity, fed the features of the training and eval examples, each extracted once; its
checkpoints hold the full model.

`linear_probe` trains with THE train step of the training loop (`steps.make_train_step`, `optim.make`,
the same head initialisation, the same training examples and the same batch order from
`pipeline.train_batches`), on a model whose
backbone is the identity; only the backbone's forward pass is skipped, so it reaches the head a
`trainable='head'` run reaches (tests/test_features.py). Closed-form probes (`ridge_probe`,
`logistic_probe`) and `fewshot_curve` give few-shot accuracy at 1/5/10/… labels per class in seconds.
"""

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtransfer import checkpoint, errors, memory, objectives, optim, rules, sharding, steps, transfer
from jaxtransfer.data import catalog, fewshot, pipeline
from jaxtransfer.data import preprocess as preprocess_lib
from jaxtransfer.models import model as model_lib

log = logging.getLogger('jaxtransfer')


@dataclasses.dataclass
class Features:
  x: np.ndarray      # (N, D) float32
  y: np.ndarray      # (N,) int


@dataclasses.dataclass
class Backbone:
  """A backbone ready to extract features: spec + variables ({'params', 'batch_stats'}, backbone subtree only)."""
  spec: dict[str, Any]
  params: Any
  batch_stats: Any
  name: str          # for cache keys: checkpoint path + step + drop_last, or 'random:<seed>'
  tokenizer: Any = None   # a text encoder's tokenizer (its checkpoint's): texts are tokenized with it

  def inputs(self) -> Any:
    """The pipeline `preprocess` that makes this backbone's inputs: text → tokens (at most TEXT_MAX_LEN,
    padded per batch to a bucket), or None for images."""
    if self.tokenizer is None:
      return None
    from jaxtransfer.text import inputs
    return inputs.TextInputs(self.tokenizer, min(int(self.spec.get('max_len', TEXT_MAX_LEN)), TEXT_MAX_LEN))


TEXT_MAX_LEN = 128   # tokens per text when extracting features (the sentiment sentences have at most 43)


def _is_token_encoder(spec: dict[str, Any]) -> bool:
  return spec.get('name') == 'transformer' and spec.get('stem', 'tokens') == 'tokens'


def load_backbone(source: str, *, drop_last: int = 0, input_shape: tuple[int, ...] = (28, 28, 1),
                  random_seed: int | None = None) -> Backbone:
  """The backbone of checkpoint `source` minus its last `drop_last` blocks (strict `transfer.init_from`).

  `random_seed`: the same architecture randomly initialised instead (the no-transfer baseline).
  """
  spec = transfer.source_backbone_spec(source, drop_last)
  tokenizer = None
  if _is_token_encoder(spec):   # text: token ids in, the checkpoint's own tokenizer
    from jaxtransfer.text import tokenizer as tokenizer_lib
    meta = checkpoint.read_meta(*checkpoint.open_for_reading(source))
    if 'tokenizer' not in meta:
      raise tokenizer_lib.TokenizerError(f'{source}: a text encoder checkpoint without a tokenizer in its meta')
    tokenizer, input_shape = tokenizer_lib.from_meta(meta['tokenizer']), (8,)
  model = model_lib.build({'backbone': spec, 'head': {'name': 'linear', 'num_outputs': 1}})
  seed = 0 if random_seed is None else random_seed
  variables = jax.jit(lambda k: model_lib.init(model, k, input_shape))(jax.random.key(seed))
  params, stats = variables['params'], variables.get('batch_stats', {})
  if random_seed is None:
    params, stats = transfer.init_from(source, params, stats, drop_last=drop_last)
    mngr, step = checkpoint.open_for_reading(source)
    name = f'{os.path.abspath(source)}@{step}/drop{drop_last}'
  else:
    name = f'random:{random_seed}:{json.dumps(spec, sort_keys=True)}'
  return Backbone(spec, params['backbone'], (stats or {}).get('backbone', {}), name, tokenizer)


def extract(backbone: Backbone, source: Sequence[Any], *, batch_size: int = 0,
            indices: np.ndarray | None = None, memory_mb: float = 512) -> Features:
  """Features of every example of `source` (in order), with the backbone in inference mode.

  `batch_size` 0: the largest batch whose memory fits `memory_mb` (`memory.batch_size`).
  """
  module = model_lib.build_backbone(backbone.spec)
  variables = {'params': backbone.params}
  if jax.tree_util.tree_leaves(backbone.batch_stats):
    variables['batch_stats'] = backbone.batch_stats
  fn = jax.jit(lambda v, x: module.apply(v, x, train=False))
  pre = backbone.inputs()
  key = 'image' if pre is None else 'tokens'
  if not batch_size:
    n = len(indices) if indices is not None else len(source)
    batch_size = memory.batch_size(lambda v, b: fn(v, b[key]), (variables,), memory.example_of(source, pre),
                                   sharding.make_mesh(1), budget_mb=memory_mb, cap=max(1, min(memory.MAX_BATCH, n)))
  xs, ys = [], []
  for batch in pipeline.eval_batches(source, batch_size=batch_size, indices=indices, preprocess=pre):
    keep = batch['mask'] > 0
    xs.append(np.asarray(fn(variables, batch[key]))[keep])
    ys.append(batch['label'][keep])
  return Features(np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64))


class FeatureCache:
  """Features per (backbone, dataset, split), in memory and (with `directory`) as .npz files on disk.

  Valid only for an augmentation-free input pipeline (features are a pure function of the example);
  the key holds the checkpoint path and step, so a newer checkpoint is a new entry.
  """

  def __init__(self, directory: str | None = None, *, data_dir: str | None = None, manual_dir: str | None = None):
    self.directory, self.data_dir, self.manual_dir = directory, data_dir, manual_dir
    self._memory: dict[str, Features] = {}
    self._backbones: dict[tuple[str, int], Backbone] = {}
    self.hits = self.misses = 0

  def backbone(self, source: str, drop_last: int = 0) -> Backbone:
    key = (source, drop_last)
    if key not in self._backbones:
      self._backbones[key] = load_backbone(source, drop_last=drop_last)
    return self._backbones[key]

  def get(self, backbone: Backbone | str, data: str, split: str, *, drop_last: int = 0) -> Features:
    bb = self.backbone(backbone, drop_last) if isinstance(backbone, str) else backbone
    key = hashlib.sha1(f'{bb.name}|{data}|{split}|{self.data_dir}'.encode()).hexdigest()[:16]
    if key in self._memory:
      self.hits += 1
      return self._memory[key]
    path = os.path.join(self.directory, f'{key}.npz') if self.directory else None
    if path and os.path.exists(path):
      with np.load(path) as f:
        feats = Features(f['x'], f['y'])
      self.hits += 1
    else:
      self.misses += 1
      src = catalog.load(data, split, data_dir=self.data_dir, manual_dir=self.manual_dir)
      feats = extract(bb, src)
      if path:
        os.makedirs(self.directory, exist_ok=True)
        tmp = f'{path}.{os.getpid()}.tmp.npz'
        np.savez(tmp, x=feats.x, y=feats.y)
        os.replace(tmp, path)
    self._memory[key] = feats
    return feats


class Identity(nn.Module):
  """The backbone of a model trained on cached features: the features are the input."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, frozen: Sequence[str] = ()) -> jax.Array:
    del train, frozen
    return x


# --- head-only runs of the training loop on cached features ----------------------------------------


class _Rows:
  """A random-access source over arrays with a common first axis, {'image': features, 'label', …}, for
  `pipeline.train_batches` / `eval_batches`."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def __len__(self) -> int:
    return len(self.arrays['image'])

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {k: v[i] for k, v in self.arrays.items()}

  def __getitems__(self, ids: Sequence[int]) -> list[dict[str, Any]]:
    ids = np.asarray(ids, np.int64)
    block = {k: v[ids] for k, v in self.arrays.items()}
    return [{k: v[j] for k, v in block.items()} for j in range(len(ids))]


@dataclasses.dataclass
class CachedRun:
  """What `train.train` trains on instead when a run's head learns on cached features.

  `model` is the run's head on the identity (`Identity`): it takes the run's full parameter, BatchNorm
  and optimizer state trees unchanged (the frozen backbone's entries ride along untouched), so the same
  train step, optimizer and checkpoints serve, and a checkpoint holds the full model. The sources hold
  the backbone's features of the (selected) training examples, in their order, and of the eval split;
  they are already preprocessed (the loop passes no `Preprocess` and no `indices` with them).
  """
  model: model_lib.Model
  train_source: _Rows
  eval_source: _Rows


def cache_blocker(config: ml_collections.ConfigDict, objective: objectives.Objective, params: Any,
                  batch_stats: Any, labels: Any, pre: preprocess_lib.Preprocess) -> str | None:
  """Why the run `config` describes cannot train its head on cached features; None when it can.

  It can when the features of an example are the same at every step and are all the loss sees: the
  run starts from `transfer.init_from` (or resumes such a run); every backbone parameter is frozen and
  sits in a block (frozen blocks run in inference mode: BatchNorm on running averages, no dropout); no
  augmentation (`input.random_crop`, `input.flip`, `input.augment`); and the objective's loss and predictions are the
  head's outputs on `batch['image']` (the default `Objective.grads` and `predict`: classification).
  """
  backbone_labels = jax.tree_util.tree_leaves(labels.get('backbone', {}))
  if not backbone_labels or any(v != rules.FREEZE for v in backbone_labels):
    return 'backbone parameters train'
  if not config.train.get('feature_cache', True):
    return 'train.feature_cache=False'
  if not config.transfer.init_from:
    return 'no transfer.init_from'
  blocks = set(rules.frozen_blocks(labels))
  outside = (set(params.get('backbone', {})) | set((batch_stats or {}).get('backbone', {}))) - blocks
  if outside:
    return f'backbone variables outside its blocks ({", ".join(sorted(outside))})'
  if pre.augments:
    return 'augmentation (input.random_crop / input.flip)'
  if config.input.get('augment', False):
    return 'augmentation (input.augment: random views made in the step)'
  kind = type(objective)
  if (kind.grads is not objectives.Objective.grads or kind.predict is not objectives.Objective.predict
      or objective.input_key is not None):
    return f'objective {objective.name!r} computes more than the head outputs on the inputs'
  return None


def for_run(config: ml_collections.ConfigDict, objective: objectives.Objective, model: model_lib.Model,
            params: Any, batch_stats: Any, labels: Any, train_source: Sequence[Any], eval_source: Sequence[Any],
            indices: np.ndarray | None, pre: preprocess_lib.Preprocess,
            mesh: jax.sharding.Mesh) -> CachedRun | None:
  """The cached-feature version of a `train.train` run, or None when `cache_blocker` says it has none.

  The frozen backbone runs once per training example (those `indices` selects) and once per eval
  example, in inference mode — what every train step's forward pass through frozen blocks computes —
  with the evaluation batch size (`memory.eval_batch_size`).
  """
  why = cache_blocker(config, objective, params, batch_stats, labels, pre)
  if why is not None:
    if why != 'backbone parameters train':
      log.info('feature cache not used: %s', why)
    return None

  def fn(p, s, batch):   # the cached rows hold the features as their 'image': the head's input
    feats = model.apply(model_lib.variables(p, s), objective.inputs(batch), train=False,
                        method=model_lib.Model.features)
    return {**{k: v for k, v in batch.items() if k not in ('image', 'tokens')}, 'image': feats.astype(jnp.float32)}

  fn = jax.jit(fn, out_shardings=sharding.replicated(mesh))
  size = memory.eval_batch_size(config.train, fn, (params, batch_stats), train_source, mesh, pre)
  # Every process gets every row (`fn`'s outputs are replicated), as `pipeline.train_batches` needs.
  tr = steps.gather(fn, params, batch_stats, train_source, size, mesh, pre, indices)
  te = steps.gather(fn, params, batch_stats, eval_source, size, mesh, pre)
  log.info('head-only run on cached features: the frozen backbone runs once per example: %d train + %d eval '
           'examples extracted (batch %d, %d features each); train.feature_cache=False turns this off',
           len(tr['image']), len(te['image']), size, tr['image'].shape[-1])
  return CachedRun(model_lib.Model(backbone=Identity(), head=model.head), _Rows(tr), _Rows(te))


def linear_probe(config: ml_collections.ConfigDict, *, cache: FeatureCache | None = None) -> dict[str, float]:
  """Train the head of a `trainable='head'` fine-tune config on cached features; its test metrics.

  Same head init, optimizer, batch order and train step as `train.train(config)` would use, so the head
  matches it (up to float reassociation); the backbone is run once per dataset instead of once per step.
  """
  if config.trainable != 'head':
    raise errors.ConfigError(f"linear_probe needs trainable='head' (a frozen backbone), got {config.trainable!r}")
  if not config.transfer.init_from:
    raise errors.ConfigError('linear_probe needs transfer.init_from (the frozen backbone)')
  objective = objectives.from_config(config)
  if objective.name != 'classification':
    raise errors.ConfigError(f'linear_probe trains classification heads, not objective={objective.name!r}')
  data_dir, manual_dir = config.input.data_dir or None, config.input.manual_dir or None
  cache = cache or FeatureCache(data_dir=data_dir, manual_dir=manual_dir)
  drop = config.transfer.drop_last_blocks
  tr = cache.get(config.transfer.init_from, config.data, config.input.train_split, drop_last=drop)
  te = cache.get(config.transfer.init_from, config.input.eval_data or config.data, config.input.eval_split,
                 drop_last=drop)
  info = catalog.info(config.data, data_dir=data_dir, manual_dir=manual_dir)
  num_outputs = steps.num_outputs(config, info.num_classes)
  indices = objective.train_examples(config, num_outputs)      # the examples train.train(config) trains on
  full = model_lib.build(steps.model_spec(config, num_outputs, objective))
  key_init, key_train = jax.random.split(jax.random.key(config.seed))
  # train.train's head initialisation: the same key, the same model, the same input shape.
  bb = cache.backbone(config.transfer.init_from, drop)
  shape = bb.inputs().output_shape() if bb.tokenizer is not None else steps.input_shape(config, info.image_shape)
  head_params = jax.jit(lambda k: model_lib.init(full, k, shape))(key_init)['params']['head']
  model = model_lib.Model(backbone=Identity(), head=full.head)
  params = {'head': head_params}
  tx = optim.make(config.optim, rules.freeze_labels('all', params), config.train.steps)
  opt_state = tx.init(params)
  step_fn = jax.jit(steps.make_train_step(model, tx, (), objective), donate_argnums=(0, 2))
  batches = pipeline.train_batches(_Rows({'image': tr.x, 'label': tr.y}), batch_size=config.train.batch_size, seed=config.seed,
                                   indices=indices)
  for step in range(1, config.train.steps + 1):
    batch = next(batches)
    params, _, opt_state, _ = step_fn(params, {}, opt_state, batch, jax.random.fold_in(key_train, step))
  logits = np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x))(params, te.x))
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, te.y.astype(np.int32))
  return {'accuracy': float(np.mean(np.argmax(logits, -1) == te.y)), 'loss': float(np.mean(nll)),
          'count': float(len(te.y)), 'params': params}


# --- closed-form probes ----------------------------------------------------------------------------


def _standardize(xtr: np.ndarray, xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Centre on the training mean, one global scale (per-feature std is unusable at 1 example per class)."""
  mu = xtr.mean(0, keepdims=True)
  scale = np.sqrt(np.mean(np.sum((xtr - mu) ** 2, 1))) + 1e-8 if len(xtr) > 1 else np.linalg.norm(xtr) + 1e-8
  return (xtr - mu) / scale, (xte - mu) / scale


def ridge_probe(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray | None = None, *,
                lam: float = 1e-2, num_classes: int | None = None) -> dict[str, Any]:
  """Ridge regression onto one-hot targets (closed form; dual form when N < D). Returns accuracy, predictions.

  `lam` is relative to the mean squared norm of the standardised features (= 1), so it is scale-free.
  """
  k = num_classes or int(max(ytr.max(), -1 if yte is None else yte.max())) + 1
  a, b = _standardize(np.asarray(xtr, np.float64), np.asarray(xte, np.float64))
  t = np.eye(k)[ytr] - 1.0 / k
  n, d = a.shape
  if n < d:
    w = a.T @ np.linalg.solve(a @ a.T + lam * n * np.eye(n), t)
  else:
    w = np.linalg.solve(a.T @ a + lam * n * np.eye(d), a.T @ t)
  pred = np.argmax(b @ w, -1)
  return {'pred': pred, 'accuracy': None if yte is None else float(np.mean(pred == yte))}


def logistic_probe(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray | None = None, *,
                   l2: float = 1e-2, iters: int = 100, num_classes: int | None = None) -> dict[str, Any]:
  """L2-regularised multinomial logistic regression, solved to convergence with L-BFGS (deterministic)."""
  k = num_classes or int(max(ytr.max(), -1 if yte is None else yte.max())) + 1
  a, b = _standardize(np.asarray(xtr, np.float32), np.asarray(xte, np.float32))
  a, y = jnp.asarray(a), jnp.asarray(ytr, jnp.int32)

  def loss(p):
    logits = a @ p['w'] + p['b']
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + 0.5 * l2 * jnp.sum(p['w'] ** 2)

  params = {'w': jnp.zeros((a.shape[1], k)), 'b': jnp.zeros((k,))}
  solver = optax.lbfgs()
  vg = optax.value_and_grad_from_state(loss)

  @jax.jit
  def run(params):
    def body(carry, _):
      p, s = carry
      value, grad = vg(p, state=s)
      u, s = solver.update(grad, s, p, value=value, grad=grad, value_fn=loss)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(body, (params, solver.init(params)), None, length=iters)
    return p

  p = run(params)
  pred = np.argmax(np.asarray(b @ np.asarray(p['w']) + np.asarray(p['b'])), -1)
  return {'pred': pred, 'accuracy': None if yte is None else float(np.mean(pred == yte))}


PROBES = {'ridge': ridge_probe, 'logistic': logistic_probe}


def fewshot_curve(train: Features, test: Features, per_class: Sequence[int | None], *, seeds: Sequence[int] = (0, 1, 2),
                  method: str = 'ridge', **kw: Any) -> dict[str, dict[str, float]]:
  """{'<k>' ('all' for None): {'mean', 'std', 'n'}}: closed-form probe accuracy at k labels per class.

  Subsets are `fewshot.k_per_class_indices(y, k, seed)` — the ones the fine-tuning runs use.
  """
  probe = PROBES[method]
  out = {}
  for k in per_class:
    accs = []
    for seed in (seeds if k is not None else seeds[:1]):
      idx = fewshot.k_per_class_indices(train.y, k, seed)
      accs.append(probe(train.x[idx], train.y[idx], test.x, test.y, **kw)['accuracy'])
    out['all' if k is None else str(k)] = {'mean': float(np.mean(accs)), 'std': float(np.std(accs)), 'n': len(accs)}
  return out
