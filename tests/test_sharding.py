"""Sharding: mesh, parameter rules, 1 vs 8 devices, exact padded evaluation, checkpoint layouts, 2 processes.

The multi-device tests run `tests/sharding_worker.py` in subprocesses with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (the flag only works before jax is imported).
They set `JAX_THREEFRY_PARTITIONABLE=0`: on this CPU build, compiling the partitionable threefry for 4-D
conv kernels takes seconds per kernel (a tiny model's init compiled in 30–45 s on the loaded 2-core
machine, 5 s without); the values differ between the two PRNG modes, their layout-independence does not.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from jaxtransfer import config as config_lib
from jaxtransfer import rules, sharding
from jaxtransfer.data import catalog

WORKER = os.path.join(os.path.dirname(__file__), 'sharding_worker.py')
MESH8 = AbstractMesh((8, 1), ('data', 'model'))
MESH2x4 = AbstractMesh((2, 4), ('data', 'model'))


def _env(devices, **extra):
  # The session's compilation cache (conftest) also serves the workers: a worker's second `train.train`
  # (the resume) and later test sessions reuse compiled programs.
  cache = jax.config.jax_compilation_cache_dir or os.path.join(os.path.dirname(__file__), '..', '.pytest_cache', 'jax')
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu',
             JAX_THREEFRY_PARTITIONABLE='0', JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
             JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _last_json(text):
  return json.loads(text.strip().splitlines()[-1])


def run_worker(devices, *args, timeout=300, **env):
  out = subprocess.run([sys.executable, WORKER, *map(str, args)], env=_env(devices, **env), capture_output=True,
                       text=True, timeout=timeout, check=False)
  assert out.returncode == 0, f'worker failed ({devices} devices, {args}):\n{out.stderr[-4000:]}'
  return _last_json(out.stdout)


# ---------------------------------------------------------------------------------------- in-process


def test_mesh_has_data_and_model_axes_with_auto_types():
  mesh = sharding.make_mesh()
  assert dict(mesh.shape) == {'data': jax.device_count(), 'model': 1}
  assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
  assert dict(sharding.mesh_from_config(config_lib.base().mesh).shape) == dict(mesh.shape)
  with pytest.raises(sharding.ShardingError, match='needs'):
    sharding.make_mesh(jax.device_count() + 1)
  with pytest.raises(sharding.ShardingError, match='at most one'):
    sharding.make_mesh(-1, -1)


def _abstract_params():
  s = jax.ShapeDtypeStruct
  return {'backbone': {'block_0': {'conv': {'kernel': s((3, 3, 1, 16), 'f4'), 'bias': s((16,), 'f4')}},
                       'block_1': {'dense': {'kernel': s((784, 256), 'f4'), 'bias': s((256,), 'f4')}}},
          'head': {'out': {'kernel': s((256, 10), 'f4'), 'bias': s((10,), 'f4')}}}


def test_fsdp_splits_the_largest_divisible_dimension_of_large_parameters():
  specs = rules.flatten(sharding.param_specs(sharding.param_rules('fsdp'), _abstract_params(), MESH8,
                                             fsdp_min_size=1000))
  assert specs['backbone/block_1/dense/kernel'] == P('data', None)      # 784 > 256, both divisible by 8
  assert specs['head/out/kernel'] == P('data', None)                    # 2560 elements: large enough
  assert specs['backbone/block_0/conv/kernel'] == P()                   # 144 elements < fsdp_min_size
  assert specs['backbone/block_1/dense/bias'] == P()
  specs = rules.flatten(sharding.param_specs(sharding.param_rules('fsdp'), _abstract_params(), MESH8,
                                             fsdp_min_size=0))
  assert specs['backbone/block_0/conv/kernel'] == P(None, None, None, 'data')
  assert specs['head/out/bias'] == P()                                  # 10: no dimension divisible by 8


def test_explicit_rules_come_first_and_are_strict():
  params = _abstract_params()
  rules_ = sharding.param_rules('fsdp', [('head/.*', 'replicate'), ('backbone/block_1/dense/kernel', (None, 'model'))])
  specs = rules.flatten(sharding.param_specs(rules_, params, MESH2x4, fsdp_min_size=0))
  assert specs['backbone/block_1/dense/kernel'] == P(None, 'model')
  assert specs['head/out/kernel'] == P()
  assert specs['backbone/block_0/conv/kernel'] == P(None, None, None, 'data')
  # The preset's catch-all may go unused; any other rule that matches nothing is an error (a typo).
  everything = [('backbone/.*', 'replicate'), ('head/.*', 'replicate')]
  assert all(s == P() for s in rules.flatten(sharding.param_specs(sharding.param_rules('fsdp', everything), params,
                                                                 MESH8)).values())
  with pytest.raises(rules.RuleError, match='matches no parameter'):
    sharding.param_specs(sharding.param_rules('fsdp', [('hed/.*', 'replicate')]), params, MESH8)
  with pytest.raises(rules.RuleError, match='no sharding rule covers'):
    sharding.param_specs([('head/.*', 'replicate')], params, MESH8)
  with pytest.raises(sharding.ShardingError, match='not divisible'):
    sharding.param_specs([('head/out/bias', ('model',)), ('.*', 'replicate')], params, MESH2x4)
  with pytest.raises(sharding.ShardingError, match='unknown mesh axis'):
    sharding.param_specs([('head/out/kernel', ('tensor',)), ('.*', 'replicate')], params, MESH2x4)
  with pytest.raises(sharding.ShardingError, match='unknown preset'):
    sharding.param_rules('zero3')


def test_optimizer_state_mirrors_parameter_shardings():
  params = _abstract_params()
  specs = sharding.param_specs(sharding.param_rules('fsdp'), params, MESH8, fsdp_min_size=0)
  labels = rules.freeze_labels('head', params)
  tx = optax.multi_transform({rules.TRAIN: optax.adam(1e-3), rules.FREEZE: optax.set_to_zero()}, labels)
  state = jax.eval_shape(tx.init, params)
  flat = rules.flatten(sharding.mirror_specs(state, params, specs))
  mu = {k: v for k, v in flat.items() if '/mu/' in k}
  assert mu and all(k.endswith(('head/out/kernel', 'head/out/bias')) for k in mu)   # frozen: no state
  assert [v for k, v in mu.items() if k.endswith('head/out/kernel')] == [P('data', None)]
  assert all(v == P() for k, v in flat.items() if k.endswith('count'))


def test_distributed_off_is_a_no_op(monkeypatch):
  for k in ('JAXTRANSFER_COORDINATOR', 'JAXTRANSFER_NUM_PROCESSES', 'JAXTRANSFER_PROCESS_ID'):
    monkeypatch.delenv(k, raising=False)
  assert sharding.initialize_distributed(config_lib.base().distributed) is False
  assert sharding.is_main_process()
  with pytest.raises(sharding.ShardingError, match='need coordinator'):
    sharding.initialize_distributed({'initialize': 'on'})


def test_cpu_devices_option():
  sharding.set_cpu_devices(0)                              # 0 = leave JAX alone
  sharding.set_cpu_devices(jax.local_device_count())       # already so: fine
  with pytest.raises(sharding.ShardingError, match='already running'):
    sharding.set_cpu_devices(jax.local_device_count() + 1)
  code = ('from jaxtransfer import runtime, sharding; import jax; runtime.configure(); sharding.set_cpu_devices(4); '
          'print(jax.device_count())')
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_NUM_CPU_DEVICES')}
  out = subprocess.run([sys.executable, '-c', code], env=dict(env, JAX_PLATFORMS='cpu'), capture_output=True,
                       text=True, timeout=120, check=True)
  assert out.stdout.split()[-1] == '4'


# ---------------------------------------------------------------------------------------- subprocesses


@pytest.fixture(scope='module')
def glyphs_dir(data_dir):
  catalog.info('glyphs/small', data_dir=data_dir)   # prepare once, in this process, for every worker
  return data_dir


@pytest.fixture(scope='module')
def one_vs_eight(glyphs_dir, tmp_path_factory):
  """The same 20-step run on a 1-device mesh and on 8 devices with FSDP (one 8-device subprocess)."""
  tmp = tmp_path_factory.mktemp('one_vs_eight')
  out = run_worker(8, 'train', glyphs_dir, tmp / 'one', json.dumps({'mesh': {'data': 1}}),
                   tmp / 'eight', json.dumps({'mesh': {'data': 8, 'params': 'fsdp', 'fsdp_min_size': 0}}))
  one, eight = out['runs']
  assert one['devices'] == eight['devices'] == 8 and one['step'] == eight['step'] == 20
  return one, eight


def test_eight_devices_give_the_single_device_losses(one_vs_eight):
  one, eight = one_vs_eight
  assert len(one['losses']) == len(eight['losses']) == 20
  np.testing.assert_allclose(eight['losses'], one['losses'], rtol=1e-5)


def test_fsdp_parameters_really_are_sharded(one_vs_eight):
  _, eight = one_vs_eight
  spec, shard, shape = eight['shardings']['backbone/block_2/dense/kernel']
  assert spec == "P('data', None)" and shape == [392, 16] and shard == [49, 16]
  spec, shard, shape = eight['shardings']['backbone/block_1/conv_1/kernel']
  assert spec == "P(None, None, None, 'data')" and shard == [3, 3, 8, 1]
  assert eight['shardings']['backbone/block_0/conv_0/kernel'][0] == 'P()'   # 4 channels: not divisible by 8


def test_padded_evaluation_gives_exactly_the_single_device_metrics(one_vs_eight):
  one, eight = one_vs_eight   # 500 test examples, eval batch 48: 11 batches, the last one 20 real + 28 padding
  assert one['metrics']['count'] == eight['metrics']['count'] == 500
  assert one['metrics']['accuracy'] == eight['metrics']['accuracy']
  assert eight['metrics']['loss'] == pytest.approx(one['metrics']['loss'], rel=1e-6)


def test_checkpoints_restore_under_another_layout(tmp_path):
  """1 → 8 and 8 → 1 and 8 → 2×4, full state and backbone-only transfer, values and shardings checked."""
  a, b = tmp_path / 'saved_on_1', tmp_path / 'saved_on_8'
  run_worker(1, 'ckpt', '--save', f'{a}:1')
  out = run_worker(8, 'ckpt', '--save', f'{b}:8', '--restore', f'{a}:8', '--restore', f'{b}:2x4')
  assert out['steps'][0]['shard_shape'] == [3, 3, 16, 2]
  assert [s['layout'] for s in out['steps'][1:]] == ['8', '2x4'] and all(s['restored'] for s in out['steps'][1:])
  out = run_worker(1, 'ckpt', '--restore', f'{b}:1')
  assert out['steps'][0]['devices'] == 1 and out['steps'][0]['restored']


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_a_single_process(one_vs_eight, glyphs_dir, tmp_path):
  """jax.distributed on localhost (gloo): 2 processes × 2 devices, FSDP, preempted at step 12 and resumed
  from the step-10 checkpoint that both processes saved; the losses are the 1-device run's."""
  one, _ = one_vs_eight
  run = json.dumps({'mesh': {'data': -1, 'params': 'fsdp', 'fsdp_min_size': 0}, 'stop_after': 12})
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, WORKER, 'train', glyphs_dir, str(tmp_path / 'run'), run],
                            env=_env(2, JAXTRANSFER_COORDINATOR=f'127.0.0.1:{port}', JAXTRANSFER_NUM_PROCESSES=2,
                                     JAXTRANSFER_PROCESS_ID=i),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=300)
      assert p.returncode == 0, stderr[-4000:]
      outs.append(_last_json(stdout)['runs'][0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  main, other = sorted(outs, key=lambda r: r['process'])
  assert (main['processes'], main['devices'], main['process'], other['process']) == (2, 4, 0, 1)
  assert main['inits'] == other['inits'] == ['scratch', 'resume'] and main['step'] == 20
  # Only process 0 writes metrics: steps 1–12, then 11–20 again after the resume, once each.
  assert main['loss_lines'] == 22
  np.testing.assert_allclose(main['losses'], one['losses'], rtol=1e-5)
  assert main['metrics'] == other['metrics']
  assert main['metrics']['count'] == 500 and main['metrics']['accuracy'] == one['metrics']['accuracy']
  spec, shard, shape = main['shardings']['backbone/block_2/dense/kernel']
  assert spec == "P('data', None)" and shard == [98, 16]   # 392 rows over 4 devices on 2 processes
