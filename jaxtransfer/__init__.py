"""jaxtransfer: transfer learning and multi-task learning in JAX/Flax."""

import os as _os

# XLA:CPU (jax 0.10) hands convolutions to YNNPACK, whose kernel-gradient convolution ran ~9× slower
# than XLA's own on this project's 2-core machine (full CNN training step 2.2–2.7× faster without it;
# runs/bench/bench.md, BUILD_NOTES.md "Performance"). XLA reads XLA_FLAGS when its CPU backend starts,
# so this must happen before the first jax computation; a user's own setting of the flag wins.
# The flag exists in the pinned jaxlib 0.10.2; revisit it when jax is upgraded.
_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
if 'xla_cpu_experimental_ynn_fusion_type' not in _os.environ.get('XLA_FLAGS', ''):
  _os.environ['XLA_FLAGS'] = (_os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()

# Before XLA starts its threads: freed buffers stay in the heap for the next step (jaxtransfer/allocator.py).
from jaxtransfer import allocator as _allocator  # noqa: E402

_allocator.keep_freed_memory()
