"""Evaluate a saved checkpoint: rebuild the model from the checkpoint's own spec and config."""

import os
from typing import Any

import jax
import ml_collections

from jaxtransfer import checkpoint, memory, objectives, sharding, steps
from jaxtransfer.data import catalog, preprocess
from jaxtransfer.models import model as model_lib
from jaxtransfer.text import inputs as text_inputs
from jaxtransfer.text import tokenizer as tokenizer_lib


def evaluate_checkpoint(path: str, *, data: str | None = None, split: str | None = None,
                        batch_size: int | None = None, manual_dir: str | None = None) -> dict[str, Any]:
  """The metrics of the checkpoint at `path` (workdir, checkpoints dir or step dir) under the objective it
  was trained with: accuracy and loss (classification), or per-task metrics and mean AP on the true labels
  (multi-task).

  `data`/`split` default to the evaluation dataset and split the run was configured with; `batch_size`
  to the run's `train.eval_batch_size` (0 or absent: from `train.eval_memory_mb`, see memory.py);
  `manual_dir` to the run's `input.manual_dir` (where data that cannot be generated lives, e.g. to score a
  real-digits run on `real_digits/mnist_t10k` from ../shared/data).
  """
  mngr, step = checkpoint.open_for_reading(path)
  meta = checkpoint.read_meta(mngr, step)
  config = ml_collections.ConfigDict(meta['config'])
  data = data or config.input.eval_data or config.data
  split = split or config.input.eval_split
  manual_dir = manual_dir or config.input.manual_dir or None
  info = catalog.info(data, data_dir=config.input.data_dir or None, manual_dir=manual_dir)
  model = model_lib.build(meta['model_spec'])
  mesh = sharding.mesh_from_config(config.mesh)
  objective = objectives.from_config(config)
  pre: Any = preprocess.from_config(config.input)
  if not info.image_shape:   # text: tokenized with the tokenizer the checkpoint was trained with
    tokenizer = tokenizer_lib.from_meta(meta['tokenizer']) if 'tokenizer' in meta else None
    if tokenizer is None:
      raise tokenizer_lib.TokenizerError(f'{data} is a text dataset but the checkpoint {path} holds no tokenizer')
    pre, objective = text_inputs.from_config(config.text, tokenizer), objective.for_tokenizer(tokenizer)
  abstract = steps.abstract_variables(model, steps.input_shape(config, info.image_shape, pre), config.mesh, mesh)
  params = checkpoint.restore_subtree(mngr, step, 'params', abstract['params'])
  stats = (checkpoint.restore_subtree(mngr, step, 'batch_stats', abstract['batch_stats'])
           if 'batch_stats' in abstract else {})
  source = catalog.load(data, split, data_dir=config.input.data_dir or None,
                        manual_dir=manual_dir)
  eval_step = jax.jit(steps.make_eval_step(model, objective))
  if batch_size is None:
    batch_size = memory.eval_batch_size(config.train, eval_step, (params, stats), source, mesh, pre)
  result = steps.evaluate(eval_step, objective, params, stats, source, batch_size, mesh, pre)
  return {'checkpoint': os.path.join(mngr.directory, str(step)), 'data': data, 'split': split, **result}
