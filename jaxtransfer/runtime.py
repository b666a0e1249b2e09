"""Process-level JAX set-up shared by the command line, experiment scripts and tests.

The persistent compilation cache matters more than anything else for research loops on a CPU: a demo
or sweep runs dozens of short trainings whose programs are identical, and compiling the training step
costs more than training it (a 200-step fine-tune: ~2 s compile vs ~3 s of steps). With the cache every
repeated program is compiled once per machine.
"""

import os

import jax

CACHE_ENV = 'JAXTRANSFER_JAX_CACHE'


def configure(cache_dir: str | None = None) -> None:
  """Everything a jaxtransfer process sets once: the compilation cache and the PRNG implementation.

  `jax_threefry_partitionable` (default True in jax 0.10) makes XLA:CPU compile the random init of
  every 4-D conv kernel for seconds (a tiny CNN's init: 30–45 s vs ~5 s on the loaded 2-core machine).
  Random values differ between the two settings, but neither depends on the device layout.
  """
  jax.config.update('jax_threefry_partitionable', False)
  enable_compilation_cache(cache_dir)


def enable_compilation_cache(directory: str | None = None) -> str | None:
  """Turn on JAX's persistent compilation cache (env JAXTRANSFER_JAX_CACHE; 'off' disables it)."""
  directory = directory or os.environ.get(CACHE_ENV) or os.path.expanduser('~/.cache/jaxtransfer/jax')
  if directory == 'off':
    return None
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)
  return directory
