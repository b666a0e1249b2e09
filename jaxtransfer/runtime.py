"""Process-level set-up of a program that runs jaxtransfer: `configure()`, called once, before any JAX computation.

Importing jaxtransfer changes nothing in the process; the programs that run it — the command line
(`cli.py`), the experiment scripts, the benchmark workers, the tests (`tests/conftest.py`) and every
subprocess they start — call `configure()` themselves. It must run before the first JAX computation,
because XLA reads its flags when its CPU backend starts and the allocator settings must be in place
before XLA starts its threads; a later call still sets the PRNG and the cache but warns that the XLA
flag came too late. Measurements behind each setting: BUILD_NOTES.md ("Performance").
"""

import logging
import os

import jax

from jaxtransfer import allocator

CACHE_ENV = 'JAXTRANSFER_JAX_CACHE'
# XLA:CPU (jax 0.10) hands convolutions to YNNPACK, whose kernel-gradient convolution is several times
# slower than XLA's own on a small CPU (BUILD_NOTES.md "Performance"). The flag exists in the pinned
# jaxlib 0.10.2; revisit it when jax is upgraded. A user's own setting of the flag wins.
XLA_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'

log = logging.getLogger('jaxtransfer')


def configure(cache_dir: str | None = None) -> None:
  """Everything a jaxtransfer process sets once; idempotent. Call it before the first JAX computation.

  - XLA_FLAGS += `XLA_FLAG` (unless the user set `xla_cpu_experimental_ynn_fusion_type` themselves);
  - `allocator.keep_freed_memory()`: freed XLA buffers stay in the heap for the next step;
  - `jax_threefry_partitionable=False`: with the default (True in jax 0.10) XLA:CPU compiles the random
    init of every 4-D conv kernel for seconds. Random values differ between the two settings, but
    neither depends on the device layout;
  - the persistent compilation cache (`enable_compilation_cache`).
  """
  set_xla_flags()
  allocator.keep_freed_memory()
  jax.config.update('jax_threefry_partitionable', False)
  enable_compilation_cache(cache_dir)


def set_xla_flags() -> None:
  """Add `XLA_FLAG` to the environment's XLA_FLAGS (warns if the XLA backend has already started)."""
  current = os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' in current:
    return
  os.environ['XLA_FLAGS'] = (current + ' ' + XLA_FLAG).strip()
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    log.warning('runtime.configure() ran after the first JAX computation: XLA_FLAGS takes effect in new '
                'processes only')


def enable_compilation_cache(directory: str | None = None) -> str | None:
  """Turn on JAX's persistent compilation cache (env JAXTRANSFER_JAX_CACHE; 'off' disables it).

  A demo or sweep runs dozens of short trainings with identical programs, and compiling a training step
  can cost more than running it; with the cache every repeated program is compiled once per machine.
  """
  directory = directory or os.environ.get(CACHE_ENV) or os.path.expanduser('~/.cache/jaxtransfer/jax')
  if directory == 'off':
    return None
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)
  return directory
