"""The pieces the training loop shares with the rest of the library: the model a config describes, its
initial (sharded) variables, THE train and eval steps, and the exact evaluation of a split.

`train.train` compiles these; `features.linear_probe` trains a head with the same train step and head
initialisation, `evaluation.evaluate_checkpoint` rebuilds a checkpoint's model and scores it with the
same eval step — neither reaches into the loop. Every step delegates what is objective-specific to the
run's `objectives.Objective`.

    spec = steps.model_spec(config, num_outputs)
    model = model_lib.build(spec)
    variables, shardings = steps.init_variables(model, key, input_shape, config.mesh, mesh)
    train_step = jax.jit(steps.make_train_step(model, tx, frozen, objective))
    params, batch_stats, opt_state, metrics = train_step(params, batch_stats, opt_state, batch, key)
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtransfer import errors, lora, objectives, sharding, transfer
from jaxtransfer.data import pipeline, preprocess
from jaxtransfer.models import model as model_lib

PyTree = Any


def num_outputs(config: ml_collections.ConfigDict, num_classes: int) -> int:
  """The head's width: `config.model.num_outputs`, or the dataset's number of classes when 0."""
  return config.model.num_outputs or num_classes


def input_shape(config: ml_collections.ConfigDict, image_shape: Sequence[int], pre: Any = None) -> tuple[int, ...]:
  """The shape of one model input after the run's preprocessing `pre` (default: the config's resize and
  crop; for text, `text.inputs.TextInputs`: a token sequence)."""
  pre = pre if pre is not None else preprocess.from_config(config.input)
  return tuple(pre.output_shape(tuple(image_shape)))


def model_spec(config: ml_collections.ConfigDict, num_outputs: int,
               objective: objectives.Objective | None = None) -> dict[str, Any]:
  """The model spec of a run: the config's backbone, or the `init_from` checkpoint's own (after surgery),
  and the head the run's objective asks for."""
  if config.model.backbone:
    backbone = dict(config.model.backbone)
    if config.transfer.drop_last_blocks:
      backbone = model_lib.drop_last_blocks(backbone, config.transfer.drop_last_blocks)
  elif config.transfer.init_from:
    backbone = transfer.source_backbone_spec(config.transfer.init_from, config.transfer.drop_last_blocks)
  else:
    raise errors.ConfigError('config.model.backbone is empty and there is no transfer.init_from to take it from')
  dropout = config.model.get('backbone_dropout')
  if dropout is not None:   # e.g. an MLM encoder pretrained without dropout, fine-tuned with it
    backbone = {**backbone, 'dropout': float(dropout)}
  # trainable='lora:R': the encoder gets rank-R adapters (config.lora; a no-op for other presets).
  lora_config = config.get('lora', {})
  backbone = lora.with_adapters(backbone, config.trainable,
                                **{k: lora_config[k] for k in ('targets', 'alpha') if lora_config.get(k)})
  objective = objective or objectives.from_config(config)
  return {'backbone': jax.tree_util.tree_map(lambda x: x, backbone), 'head': objective.head(config, num_outputs)}


def init_variables(model: model_lib.Model, key: jax.Array, shape: Sequence[int], mesh_config: Mapping[str, Any],
                   mesh: jax.sharding.Mesh, *, random_backbone: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
  """(initial variables laid out over `mesh` as `mesh_config` says, their shardings).

  `random_backbone=False` (the backbone is about to be restored from a checkpoint, `transfer.init_from`): the
  backbone's leaves are zeros and only the rest is initialised; the program returns only the rest, so XLA
  drops the backbone's random initialisers and forward pass as dead code (compiling a full EfficientNet-Lite0
  init took ~12 s of a 20 s head-only fine-tune). The head's values are those of the full init: a submodule's
  random stream depends on its path, not on its siblings. The backbone's LoRA adapters are initialised as in
  the full init too: a plain checkpoint does not hold them (`transfer.init_from` keeps them), and an adapter
  with A = B = 0 would never train.
  """
  abstract = model_lib.abstract(model, shape)
  shardings = sharding.variable_shardings(mesh_config, abstract, mesh)
  if random_backbone:
    return jax.jit(lambda k: model_lib.init(model, k, shape), out_shardings=shardings)(key), shardings
  split = lambda tree: ({c: {k: v for k, v in t.items() if k != 'backbone'} for c, t in tree.items()},
                        {c: t['backbone'] for c, t in tree.items() if 'backbone' in t})
  rest_sh, backbone_sh = split(shardings)
  rest, fresh = jax.jit(lambda k: (lambda v: (split(v)[0], lora.adapters(v)))(model_lib.init(model, k, shape)),
                        out_shardings=(rest_sh, lora.adapters(shardings)))(key)
  zeros = jax.jit(lambda: jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), split(abstract)[1]),
                  out_shardings=backbone_sh)()
  variables = {c: {**rest.get(c, {}), **({'backbone': zeros[c]} if c in zeros else {})} for c in abstract}
  return lora.replace(variables, fresh), shardings


def abstract_variables(model: model_lib.Model, shape: Sequence[int], mesh_config: Mapping[str, Any],
                       mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """The variables' `jax.ShapeDtypeStruct`s with their shardings: a restore target (nothing is computed)."""
  abstract = model_lib.abstract(model, shape)
  shardings = sharding.variable_shardings(mesh_config, abstract, mesh)  # FSDP-sized models stay sharded.
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                                shardings)


def opt_init(tx: optax.GradientTransformation,
             objective: objectives.Objective | None = None) -> Callable[[PyTree], PyTree]:
  """params → the train step's `opt_state`: the optax state, or {'tx': it, **objective state}."""
  objective = objective or objectives.classification()
  if not objective.has_state:
    return tx.init
  return lambda params: {'tx': tx.init(params), **objective.init_state(params)}


def tx_state(opt_state: PyTree, objective: objectives.Objective) -> PyTree:
  """The optax part of an `opt_state` built by `opt_init`."""
  return opt_state['tx'] if objective.has_state else opt_state


def make_train_step(model: model_lib.Model, tx: optax.GradientTransformation, frozen: tuple[str, ...],
                    objective: objectives.Objective | None = None) -> Callable[..., Any]:
  """Pure (un-jitted) train step: (params, batch_stats, opt_state, batch, key) → (…, metrics).

  `objective` (default: single-label classification) computes the gradients of the parameters outside
  the `frozen` backbone blocks (`Objective.grads`); frozen blocks get no gradient, no backward pass and
  keep their BatchNorm statistics. `opt_state` is what `opt_init(tx, objective)` made: with objective
  state it is {'tx': optimizer state, **state}, checkpointed and resumed with the optimizer's.
  """
  objective = objective or objectives.classification()

  def train_step(params, batch_stats, opt_state, batch, key):
    trainable, fixed = model_lib.split_frozen(params, frozen)
    fwd = objectives.Forward(model, batch_stats, frozen, fixed)
    if objective.has_state:
      tx_state_, state = opt_state['tx'], {k: v for k, v in opt_state.items() if k != 'tx'}
    else:
      tx_state_, state = opt_state, {}
    grads, new_stats, state, metrics = objective.grads(fwd, trainable, state, batch, key)
    grads = model_lib.merge_frozen(grads, jax.tree_util.tree_map(jnp.zeros_like, fixed))
    updates, tx_state_ = tx.update(grads, tx_state_, params)
    params = optax.apply_updates(params, updates)
    opt_state = {'tx': tx_state_, **state} if objective.has_state else tx_state_
    return params, new_stats, opt_state, metrics

  return train_step


def make_eval_step(model: model_lib.Model, objective: objectives.Objective | None = None) -> Callable[..., Any]:
  """Pure eval step: the objective's per-example values, plus the padding mask."""
  objective = objective or objectives.classification()

  def eval_step(params, batch_stats, batch):
    outputs = objective.predict(model, model_lib.variables(params, batch_stats), batch)
    return {**objective.per_example(outputs, batch), 'mask': batch['mask']}

  return eval_step


def gather(fn: Callable[..., Any], params: Any, batch_stats: Any, source: Any, batch_size: int,
           mesh: jax.sharding.Mesh, pre: preprocess.Preprocess | None = None,
           indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """{name: (N, …)} of `fn(params, batch_stats, batch)` over every (selected) example of `source`, in order,
  padded rows of the last batch dropped (`fn` returns the batch's 'mask' with its per-example values).

  Every process runs the same number of (padded) batches, each on its own rows of the global batch.
  """
  gathered: dict[str, list[np.ndarray]] = {}
  for batch in pipeline.eval_batches(source, batch_size=batch_size, indices=indices, process_index=jax.process_index(),
                                     process_count=jax.process_count(), preprocess=pre):
    out = sharding.to_host(fn(params, batch_stats, sharding.shard_batch(batch, mesh)))
    keep = np.asarray(out.pop('mask')) > 0
    for k, v in out.items():
      gathered.setdefault(k, []).append(np.asarray(v)[keep])
  return {k: np.concatenate(v) for k, v in gathered.items()}


def evaluate(eval_step: Callable[..., Any], objective: objectives.Objective, params: Any, batch_stats: Any,
             source: Any, batch_size: int, mesh: jax.sharding.Mesh,
             pre: preprocess.Preprocess | None = None) -> dict[str, float]:
  """The objective's metrics over a whole split, exact: padded rows of the last batch are dropped."""
  values = gather(eval_step, params, batch_stats, source, batch_size, mesh, pre)
  return {**objective.summarize(values), 'count': float(len(next(iter(values.values()))))}
