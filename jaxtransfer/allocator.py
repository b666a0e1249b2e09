"""Keep freed heap memory in the process, so XLA:CPU's per-step buffers are not page-faulted in anew.

XLA:CPU allocates every execution's temporary buffer with malloc and frees it at the end (tens of MB
for a training step). glibc serves an allocation that large with a fresh `mmap` and returns it with
`munmap` — always from XLA's worker threads, whose per-thread arenas fall back to mmap whatever
`M_MMAP_MAX` says — so the kernel zero-fills and maps every page again at each step, a large share of
the step's time (`experiments/benchmarks/run.py` measures it; numbers in BUILD_NOTES.md "Performance").
The fix is what a caching allocator does: one malloc arena for all threads, no mmap'd chunks, no
trimming, so a freed buffer is reused by the next step in place (no page faults per step). "No trimming"
is M_TRIM_THRESHOLD = -1 (mallopt(3): "disables trimming completely"); the largest positive value, 2³¹ − 1,
is not enough — the masked-LM pretraining, whose heap grew by 2.2 GB within each step, was trimmed and faulted
in again at every step, 35 % system time (BUILD_NOTES).

`keep_freed_memory()` sets that with `mallopt`; `runtime.configure()` calls it (before XLA starts its
threads). Importing jaxtransfer does not. Cost: the process keeps its peak heap instead of returning it
to the OS. Off with the environment variable JAXTRANSFER_MALLOC=off; a no-op where the C library has no
`mallopt` (not glibc). `applied()` tells whether it was applied in this process.
"""

import ctypes
import ctypes.util
import os

ENV = 'JAXTRANSFER_MALLOC'
# glibc <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


_applied = False


def applied() -> bool:
  """Whether `keep_freed_memory()` has changed this process's malloc settings."""
  return _applied


def keep_freed_memory() -> bool:
  """Configure glibc malloc as described above; True if it was applied."""
  global _applied
  if os.environ.get(ENV, '').lower() in ('off', '0', 'false'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # mallopt returns 1 on success; a trim threshold of -1 is SIZE_MAX: the heap is never trimmed.
  ok = [mallopt(option, value) == 1 for option, value in
        ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))]
  _applied = _applied or any(ok)
  return all(ok)
