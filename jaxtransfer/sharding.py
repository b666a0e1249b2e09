"""Device mesh and shardings: the batch split over the `data` axis, parameters replicated.

pjit-style: `jax.jit` with `NamedSharding`s over a `Mesh`; the same code runs on 1 or N devices. The
mesh uses Auto axis types (`jax.make_mesh` defaults to Explicit, which breaks a plain jit of a
batch-sharded step).
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(data: int = -1) -> Mesh:
  """A 1-D mesh with axis `data` over `data` devices (-1 = all devices)."""
  n = jax.device_count() if data == -1 else data
  if n < 1 or n > jax.device_count() or jax.device_count() % n:
    raise ValueError(f'mesh.data={data}: need a divisor of the {jax.device_count()} available devices')
  devices = np.asarray(jax.devices()[:n])
  return Mesh(devices, ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`."""
  return NamedSharding(mesh, P('data'))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Put a host batch on the mesh, split along its first axis (single-process)."""
  n = mesh.shape['data']
  size = len(next(iter(batch.values())))
  if size % n:
    raise ValueError(f'batch size {size} is not divisible by the {n} devices of the data axis')
  return jax.device_put(batch, batch_sharding(mesh))


def tree_replicated(tree: Any, mesh: Mesh) -> Any:
  """Shardings (all replicated) for every leaf of `tree`."""
  return jax.tree_util.tree_map(lambda _: replicated(mesh), tree)
