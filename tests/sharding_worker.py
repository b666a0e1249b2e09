"""Subprocess side of tests/test_sharding.py: runs under XLA_FLAGS=--xla_force_host_platform_device_count=N.

  python tests/sharding_worker.py ckpt --save DIR:LAYOUT --restore DIR:LAYOUT …
      save a tiny ResNet's train state (params, BatchNorm statistics, Adam state) laid out as LAYOUT,
      with the values in DIR/reference.npz; or restore DIR into LAYOUT (full resume restore and the
      backbone-only transfer restore) and check every value and every sharding. Layouts: '1' (one
      device, replicated), '8' (8-way FSDP over data), '2x4' (data 2 × model 4: FSDP over data and
      the stem's kernel split over model).
  python tests/sharding_worker.py train DATA_DIR WORKDIR RUN_JSON [WORKDIR RUN_JSON …]
      train.train (THE loop) on glyphs/small with a tiny CNN for 20 steps under each RUN_JSON
      ({"mesh": {…}, "stop_after": k}: k steps, "preempted", then resumed from the checkpoint); print
      per-step losses, final eval metrics and the final parameters' shardings. Under
      JAXTRANSFER_COORDINATOR/NUM_PROCESSES/PROCESS_ID it is one process of a multi-process run.
Prints one JSON line (the last line of stdout).
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxtransfer import checkpoint, rules, runtime, sharding, transfer  # noqa: E402
from jaxtransfer.models import model as model_lib  # noqa: E402

SPEC = {'backbone': {'name': 'resnet', 'depth': [1, 1], 'width': 8}, 'head': {'name': 'linear', 'num_outputs': 16}}
LAYOUTS = {
    '1': dict(data=1, model=1, params='replicate', param_rules=()),
    '8': dict(data=8, model=1, params='fsdp', param_rules=()),
    '2x4': dict(data=2, model=4, params='fsdp', param_rules=(('backbone/block_0/conv/kernel', (None, None, None, 'model')),)),
}


def _mesh_config(layout):
  return dict(LAYOUTS[layout], fsdp_min_size=0)


def _layout(spec, layout):
  """(mesh, abstract variables, their shardings, abstract Adam state, its shardings); nothing compiled."""
  import optax
  cfg = _mesh_config(layout)
  mesh = sharding.make_mesh(cfg['data'], cfg['model'])
  model = model_lib.build(spec)
  abstract = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 16, 16, 1))), jax.random.key(0))
  var_sh = sharding.variable_shardings(cfg, abstract, mesh)
  opt_abstract = jax.eval_shape(optax.adam(1e-3).init, abstract['params'])
  opt_sh = sharding.mirror_specs(opt_abstract, abstract['params'], var_sh['params'])
  return mesh, abstract, var_sh, opt_abstract, opt_sh


def _values(abstract, shardings, seed):
  """Distinct random values for every leaf, placed with `shardings`."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda a, sh: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype), sh), abstract, shardings)


def _with_shardings(abstract, shardings):
  return jax.tree_util.tree_map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, shardings)


def _flat(tree):
  return {k: np.asarray(v) for k, v in rules.flatten(tree).items()}


def _check_layout(tree, shardings, what):
  flat_t, flat_s = rules.flatten(tree), rules.flatten(shardings)
  assert flat_t.keys() == flat_s.keys(), what
  for k, x in flat_t.items():
    want = flat_s[k]
    assert x.sharding.is_equivalent_to(want, x.ndim), f'{what} {k}: {x.sharding} != {want}'


def save(directory, layout):
  mesh, abstract, var_sh, opt_abstract, opt_sh = _layout(SPEC, layout)
  params = _values(abstract['params'], var_sh['params'], 0)
  stats = _values(abstract['batch_stats'], var_sh['batch_stats'], 1)
  opt_state = _values(opt_abstract, opt_sh, 2)
  _check_layout(opt_state, opt_sh, 'opt_state')
  info = {'layout': layout, 'devices': jax.device_count(),
          'sharded': {k: str(x.sharding.spec) for k, x in rules.flatten(params).items()
                      if any(a is not None for a in x.sharding.spec)}}
  if layout == '8':  # FSDP really shards: each device holds 1/8 of a kernel (and of its Adam moments).
    k = params['backbone']['block_2']['conv_1']['kernel']
    assert k.sharding.spec == jax.sharding.PartitionSpec(None, None, None, 'data'), k.sharding
    assert len(k.addressable_shards) == 8 and k.addressable_shards[0].data.shape == (3, 3, 16, 2)
    mu = opt_state[0].mu['backbone']['block_2']['conv_1']['kernel']
    assert mu.sharding.spec == k.sharding.spec and mu.addressable_shards[0].data.shape == (3, 3, 16, 2)
    info['shard_shape'] = list(k.addressable_shards[0].data.shape)
  mngr = checkpoint.manager(directory, async_save=False)
  checkpoint.save(mngr, 1, params=params, batch_stats=stats, opt_state=opt_state, meta={'model_spec': SPEC})
  mngr.wait_until_finished()
  mngr.close()
  np.savez(os.path.join(directory, 'reference.npz'),
           **{f'params/{k}': v for k, v in _flat(params).items()},
           **{f'batch_stats/{k}': v for k, v in _flat(stats).items()},
           **{f'opt_state/{k}': v for k, v in _flat(opt_state).items()})
  return info


def restore(directory, layout):
  ref = dict(np.load(os.path.join(directory, 'reference.npz')))
  mesh, abstract, var_sh, opt_abstract, opt_sh = _layout(SPEC, layout)
  mngr = checkpoint.manager(directory, read_only=True, async_save=False)
  p, s, o = checkpoint.restore(mngr, 1, params=_with_shardings(abstract['params'], var_sh['params']),
                               batch_stats=_with_shardings(abstract['batch_stats'], var_sh['batch_stats']),
                               opt_state=_with_shardings(opt_abstract, opt_sh))
  for item, tree in (('params', p), ('batch_stats', s), ('opt_state', o)):
    flat = _flat(tree)
    want = {k[len(item) + 1:]: v for k, v in ref.items() if k.startswith(item + '/')}
    assert flat.keys() == want.keys(), (item, sorted(set(flat) ^ set(want)))
    for k in flat:
      np.testing.assert_array_equal(flat[k], want[k], err_msg=f'{item}/{k}')
  _check_layout(p, var_sh['params'], 'params')
  _check_layout(s, var_sh['batch_stats'], 'batch_stats')
  _check_layout(o, opt_sh, 'opt_state')
  # Backbone-only transfer into a new model with a different head, laid out as `layout`.
  new_spec = dict(SPEC, head={'name': 'linear', 'num_outputs': 5})
  _, tabstract, tvar_sh, _, _ = _layout(new_spec, layout)
  tparams = _values(tabstract['params'], tvar_sh['params'], 3)
  tstats = _values(tabstract['batch_stats'], tvar_sh['batch_stats'], 4)
  fresh_head = _flat(tparams['head'])
  tp, ts = transfer.init_from(directory, tparams, tstats)
  for k, v in _flat(tp['backbone']).items():
    np.testing.assert_array_equal(v, ref[f'params/backbone/{k}'], err_msg=f'transfer backbone/{k}')
  for k, v in _flat(ts['backbone']).items():
    np.testing.assert_array_equal(v, ref[f'batch_stats/backbone/{k}'], err_msg=f'transfer stats backbone/{k}')
  for k, v in _flat(tp['head']).items():
    np.testing.assert_array_equal(v, fresh_head[k], err_msg=f'transfer head/{k}')
  _check_layout(tp, tvar_sh['params'], 'transfer params')
  _check_layout(ts, tvar_sh['batch_stats'], 'transfer batch_stats')
  return {'layout': layout, 'devices': jax.device_count(), 'restored': len(ref)}


def small_config(data_dir, **mesh):
  """20 steps of a tiny CNN on glyphs/small (3000 train / 500 test), global batch 32; eval batch 48
  (500 = 10·48 + 20: the last eval batch is padded and masked)."""
  from jaxtransfer import config as config_lib
  c = config_lib.pretrain()
  c.data, c.input.data_dir = 'glyphs/small', data_dir
  c.model.backbone = {'name': 'cnn', 'stages': [4, 8], 'dense': [16]}
  c.train.steps, c.train.batch_size, c.train.eval_batch_size = 20, 32, 48
  c.train.log_every, c.train.checkpoint_every, c.train.eval_every = 1, 10, 0
  c.optim.lr, c.optim.warmup_steps = 3e-3, 0
  for k, v in mesh.items():
    c.mesh[k] = v
  return c


def run_train(data_dir, workdir, run):
  """`run` = {'mesh': {…}, 'stop_after': n (optional: preempt, then resume in the same process)}."""
  from jaxtransfer import train
  config = small_config(data_dir, **run.get('mesh', {}))
  inits = []
  if run.get('stop_after'):
    inits.append(train.train(config, workdir, stop_after=run['stop_after']).init)
  out = train.train(config, workdir)
  inits.append(out.init)
  res = {'devices': jax.device_count(), 'processes': jax.process_count(), 'process': jax.process_index(),
         'step': out.step, 'inits': inits, 'metrics': out.metrics,
         'shardings': {k: [str(x.sharding.spec), list(x.addressable_shards[0].data.shape), list(x.shape)]
                       for k, x in rules.flatten(out.params).items()}}
  path = os.path.join(workdir, 'metrics.jsonl')
  if jax.process_index() == 0:
    losses = {}
    for line in open(path):
      rec = json.loads(line)
      if 'train/loss' in rec:
        losses[rec['step']] = rec['train/loss']     # a resumed run rewrites the steps after its checkpoint
    res['losses'] = [losses[s] for s in sorted(losses)]
    res['loss_lines'] = sum('train/loss' in line for line in open(path))
  else:
    res['metrics_file'] = os.path.exists(path)
  return res


def main(argv):
  mode, rest = argv[0], argv[1:]
  out = {'mode': mode}
  if mode == 'ckpt':
    done = []
    for flag, arg in zip(rest[::2], rest[1::2]):
      directory, layout = arg.rsplit(':', 1)
      done.append({'--save': save, '--restore': restore}[flag](directory, layout))
    out['steps'] = done
  elif mode == 'train':  # train DATA_DIR WORKDIR RUN_JSON [WORKDIR RUN_JSON …]
    out['runs'] = [run_train(rest[0], w, json.loads(m)) for w, m in zip(rest[1::2], rest[2::2])]
  else:
    raise SystemExit(f'unknown mode {mode}')
  print(json.dumps(out))


if __name__ == '__main__':
  runtime.configure(os.environ.get('JAX_COMPILATION_CACHE_DIR'))   # before the first JAX computation
  main(sys.argv[1:])
