"""Device mesh, shardings for parameters, optimizer state and batches, and multi-host start-up.

pjit-style: `jax.jit` with `NamedSharding`s over a 2-D `Mesh` with axes `('data', 'model')`; the same
training loop runs on 1 device, N devices, or N devices on several hosts, with the same global batch.

  mesh = make_mesh(data=-1, model=1)              # every device on the batch axis
  specs = param_specs([('.*', 'fsdp')], abstract_params, mesh, fsdp_min_size=2**14)
  params = jax.jit(init, out_shardings=named(specs, mesh))(key)   # created already sharded
  batch = shard_batch(host_batch, mesh)           # this process's rows → one global array

Mesh. Axis types are `Auto` (`jax.make_mesh` defaults to Explicit, which breaks a plain jit of a
batch-sharded step). Devices are laid out in `jax.devices()` order (process-major), so the devices of a
process hold a contiguous run of the `data` axis, i.e. a contiguous slice of the global batch.

Parameter sharding is decided by path rules, the same language (`rules.resolve`, first match wins, every
parameter covered, no dead rule) as freezing. A rule's value is
  'replicate'           every device holds the whole parameter;
  'fsdp'                the largest dimension divisible by the `data` axis is split over `data` (ZeRO-3 /
                        FSDP); parameters smaller than `fsdp_min_size` elements, or with no divisible
                        dimension, stay replicated;
  a PartitionSpec       e.g. `(None, 'model')`: exactly that spec (checked against the shape).
Optimizer-state leaves that mirror a parameter (Adam's mu/nu …) take that parameter's sharding; scalars
(step counts) are replicated. BatchNorm statistics are replicated.

Multi-host: `initialize_distributed(config.distributed)` calls `jax.distributed.initialize` (from the
config, `JAXTRANSFER_COORDINATOR` / `JAXTRANSFER_NUM_PROCESSES` / `JAXTRANSFER_PROCESS_ID`, or the
cluster's own environment with `initialize='auto'`). Each process then reads its own `1/process_count`
of every global batch and `shard_batch` assembles the global array with
`jax.make_array_from_process_local_data`.
"""

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxtransfer import errors, rules as rules_lib

log = logging.getLogger('jaxtransfer')

AXES = ('data', 'model')
REPLICATE, FSDP = 'replicate', 'fsdp'


class ShardingError(errors.Error):
  """A mesh or sharding rule that does not fit the devices or the parameters."""


# --------------------------------------------------------------------------------------------- mesh


def _axis_size(value: int, others: int, name: str) -> int:
  total = jax.device_count()
  if value == -1:
    if total % others:
      raise ShardingError(f'mesh.{name}=-1: {total} devices are not divisible by the other axes ({others})')
    return total // others
  if value < 1:
    raise ShardingError(f'mesh.{name}={value}: must be -1 (the rest) or ≥ 1')
  return value


def make_mesh(data: int = -1, model: int = 1) -> Mesh:
  """A `('data', 'model')` mesh of `data × model` devices (-1 = all remaining devices), Auto axis types.

  With one process the mesh may use a prefix of the devices (`make_mesh(1)` on an 8-device host is a
  1-device run); with several processes it must use all of them (every process owns a part of the batch).
  """
  if data == -1 and model == -1:
    raise ShardingError('mesh: at most one axis can be -1')
  model = _axis_size(model, 1 if data == -1 else data, 'model')
  data = _axis_size(data, model, 'data')
  n, total = data * model, jax.device_count()
  if n > total:
    raise ShardingError(f'mesh data={data} × model={model} needs {n} devices; {total} available')
  if n < total and jax.process_count() > 1:
    raise ShardingError(f'mesh data={data} × model={model} = {n} devices: with {jax.process_count()} '
                        f'processes the mesh must use all {total} devices')
  devices = np.asarray(jax.devices()[:n]).reshape(data, model)
  return Mesh(devices, AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def mesh_from_config(config: Mapping[str, Any]) -> Mesh:
  """`make_mesh` from a config's `mesh` section (`data`, optional `model`)."""
  return make_mesh(int(config['data']), int(config.get('model', 1)))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data` (replicated over `model`)."""
  return NamedSharding(mesh, P('data'))


def tree_replicated(tree: Any, mesh: Mesh) -> Any:
  """Shardings (all replicated) for every leaf of `tree`."""
  return jax.tree_util.tree_map(lambda _: replicated(mesh), tree)


def named(specs: Any, mesh: Mesh) -> Any:
  """A tree of PartitionSpecs → the same tree of NamedShardings on `mesh`."""
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


# ------------------------------------------------------------------------------------ parameters


def _fsdp_spec(shape: tuple[int, ...], n: int, min_size: int) -> P:
  """Split the largest dimension divisible by `n` over `data` (ties: the last such dimension)."""
  if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  dims = [d for d in range(len(shape)) if shape[d] % n == 0 and shape[d] >= n]
  if not dims:
    return P()
  best = max(dims, key=lambda d: (shape[d], d))
  return P(*[('data' if d == best else None) for d in range(len(shape))])


def _explicit_spec(value: Any, path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
  spec = value if isinstance(value, P) else P(*value)
  if len(spec) > len(shape):
    raise ShardingError(f'sharding rule for {path}: spec {spec} has more entries than the shape {shape}')
  for dim, axes in zip(shape, spec):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    for a in names:
      if a not in mesh.shape:
        raise ShardingError(f'sharding rule for {path}: unknown mesh axis {a!r} (mesh axes {tuple(mesh.shape)})')
    size = int(np.prod([mesh.shape[a] for a in names], dtype=np.int64))
    if dim % size:
      raise ShardingError(f'sharding rule for {path}: dimension {dim} of {shape} is not divisible by '
                          f'{"×".join(names)} = {size}')
  return spec


def param_rules(preset: str = REPLICATE, explicit: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
  """Explicit `(regex, value)` rules first, then the preset (`'replicate'` | `'fsdp'`) for the rest."""
  if preset not in (REPLICATE, FSDP):
    raise ShardingError(f"mesh.params: unknown preset {preset!r} ('replicate' | 'fsdp')")
  return [(pattern, value) for pattern, value in explicit] + [('.*', preset)]


def param_specs(rules: Sequence[tuple[str, Any]], params: Any, mesh: Mesh, *, fsdp_min_size: int = 2**14) -> Any:
  """A PartitionSpec per leaf of `params` (arrays or `ShapeDtypeStruct`s), by first-matching path rule.

  Strict like `rules.resolve` (every leaf covered, no rule that matches nothing), except that a trailing
  catch-all `'.*'` (the preset `param_rules` appends) is the default for the leaves the rules before it
  leave uncovered, so it may cover nothing.
  """
  rules = list(rules)
  if rules and rules[-1][0] == '.*':
    values = rules_lib.resolve(rules[:-1], params, what='sharding rule', default=rules[-1][1])
  else:
    values = rules_lib.resolve(rules, params, what='sharding rule')
  n = mesh.shape['data']

  def spec(path, value, leaf):
    shape, name = tuple(leaf.shape), rules_lib.path_str(path)
    if isinstance(value, str):
      if value == REPLICATE:
        return P()
      if value == FSDP:
        return _fsdp_spec(shape, n, fsdp_min_size)
      raise ShardingError(f"sharding rule for {name}: unknown value {value!r} ('replicate' | 'fsdp' | a spec)")
    return _explicit_spec(value, name, shape, mesh)

  return jax.tree_util.tree_map_with_path(spec, values, params, is_leaf=lambda x: x is None or isinstance(x, (str, tuple, list, P)))


def mirror_specs(tree: Any, params: Any, specs: Any) -> Any:
  """PartitionSpecs (or NamedShardings) for a tree whose leaves mirror parameters (optimizer state): a
  leaf whose path ends with a parameter's path and has its shape gets that parameter's entry in `specs`;
  every other leaf (step counts, …) is replicated."""
  flat_specs = jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, (P, NamedSharding)))
  by_path = {p: (tuple(x.shape), s) for (p, x), s in zip(rules_lib.flatten(params).items(), flat_specs)}
  replicate = (NamedSharding(flat_specs[0].mesh, P()) if flat_specs and isinstance(flat_specs[0], NamedSharding)
               else P())

  def spec(path, leaf):
    parts = rules_lib.path_str(path).split('/')
    for i in range(len(parts)):
      hit = by_path.get('/'.join(parts[i:]))
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return replicate

  return jax.tree_util.tree_map_with_path(spec, tree)


def variable_shardings(mesh_config: Mapping[str, Any], variables: Any, mesh: Mesh) -> Any:
  """NamedShardings for a model's variables `{'params': …, 'batch_stats': …}` (arrays or abstract):
  params by the config's rules (`mesh.params`, `mesh.param_rules`, `mesh.fsdp_min_size`), the rest
  replicated."""
  rules = param_rules(mesh_config.get('params', REPLICATE), mesh_config.get('param_rules', ()) or ())
  specs = param_specs(rules, variables['params'], mesh, fsdp_min_size=int(mesh_config.get('fsdp_min_size', 2**14)))
  return {**tree_replicated(variables, mesh), 'params': named(specs, mesh)}


def describe(specs: Any, params: Any) -> str:
  """'k of n parameter arrays (x% of the values) sharded' for a log line."""
  flat = [s.spec if isinstance(s, NamedSharding) else s
          for s in jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, (P, NamedSharding)))]
  sizes = [int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree_util.tree_leaves(params)]
  sharded = [any(a is not None for a in s) for s in flat]
  total = max(sum(sizes), 1)
  return (f'{sum(sharded)} of {len(flat)} parameter arrays sharded '
          f'({100 * sum(z for z, s in zip(sizes, sharded) if s) / total:.0f}% of the values)')


# ------------------------------------------------------------------------------------------ batches


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a global batch → global arrays split over `data`.

  One process: `batch` is the whole batch (`device_put`). Several: `batch` is this process's contiguous
  `1/process_count` slice (rows `[i·B/P, (i+1)·B/P)` for process i) and the global array is assembled with
  `jax.make_array_from_process_local_data`.
  """
  n, procs = mesh.shape['data'], jax.process_count()
  size = len(next(iter(batch.values())))
  if (size * procs) % n:
    raise ShardingError(f'batch size {size * procs} is not divisible by the {n} devices of the data axis')
  sharding = batch_sharding(mesh)
  if procs == 1:
    return jax.device_put(dict(batch), sharding)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (size * procs, *np.shape(v)[1:]))
          for k, v in batch.items()}


def to_host(tree: Any) -> Any:
  """Numpy copies of (replicated) outputs, also when the arrays span several processes."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ShardingError(f'to_host: array of shape {x.shape} with {x.sharding} is not replicated')
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree_util.tree_map(get, tree)


# ---------------------------------------------------------------------------------------- processes


def set_cpu_devices(n: int) -> None:
  """Split the host CPU into `n` JAX devices (`jax_num_cpu_devices`; 0 = leave JAX's default of 1).

  The same as `JAX_NUM_CPU_DEVICES=n` in the environment or `XLA_FLAGS=--xla_force_host_platform_device_count=n`
  before jax is imported. It must run before any JAX computation; afterwards it raises unless the CPU
  already has `n` devices. Only the CPU backend is affected (GPU/TPU runs ignore it).
  """
  if not n:
    return
  try:
    jax.config.update('jax_num_cpu_devices', int(n))
  except RuntimeError:
    have = len(jax.devices('cpu'))
    if have != n:
      raise ShardingError(f'mesh.cpu_devices={n}: JAX is already running with {have} CPU devices; set it before '
                          f'any JAX computation (or JAX_NUM_CPU_DEVICES={n} in the environment)') from None


def is_main_process() -> bool:
  """True on the process that writes logs, metrics and files (process 0)."""
  return jax.process_index() == 0


def initialize_distributed(config: Mapping[str, Any] | None = None) -> bool:
  """Start `jax.distributed` when configured; returns whether this run is multi-process.

  `config` (the `distributed` section): `initialize` is 'off' (default: single process, unless the
  environment below names a coordinator), 'on' (use `coordinator` / `num_processes` / `process_id`) or
  'auto' (`jax.distributed.initialize()` with no arguments: the cluster's environment — SLURM, Open MPI,
  TPU pods — says who is who). The environment variables `JAXTRANSFER_COORDINATOR`,
  `JAXTRANSFER_NUM_PROCESSES` and `JAXTRANSFER_PROCESS_ID` fill in (and switch on) the same settings.
  Must run before anything else touches the devices; a second call is a no-op.
  """
  config = dict(config or {})
  env = os.environ
  coordinator = env.get('JAXTRANSFER_COORDINATOR') or config.get('coordinator') or ''
  num = int(env.get('JAXTRANSFER_NUM_PROCESSES') or config.get('num_processes') or 0)
  pid = int(env.get('JAXTRANSFER_PROCESS_ID') or config.get('process_id', -1))
  mode = config.get('initialize', 'off')
  if mode == 'off' and coordinator:
    mode = 'on'
  if mode == 'off':
    return jax.process_count() > 1
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  if mode == 'auto':
    jax.distributed.initialize()
  elif mode == 'on':
    if not coordinator or num < 1 or not 0 <= pid < num:
      raise ShardingError(f'distributed: need coordinator, num_processes and 0 ≤ process_id < num_processes '
                          f'(got {coordinator!r}, {num}, {pid})')
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
  else:
    raise ShardingError(f"distributed.initialize: unknown mode {mode!r} ('off' | 'on' | 'auto')")
  log.info('jax.distributed: process %d of %d, %d local / %d global devices', jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return jax.process_count() > 1
