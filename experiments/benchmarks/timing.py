"""Side-by-side timing: every variant runs once per round, rounds alternate their order (the machine is
shared and noisy; only medians over interleaved rounds compare)."""

import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, calls: int = 1,
                untimed: int = 0) -> dict[str, list[float]]:
  """Seconds per call of each (already compiled, blocking) function: per round and variant `untimed`
  calls first, then the mean of `calls` timed calls; a progress line with the ETA every 5 rounds."""
  for fn in fns.values():                      # warm up
    fn()
  times: dict[str, list[float]] = {k: [] for k in fns}
  start = time.perf_counter()
  for r in range(rounds):
    for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
      for _ in range(untimed):
        fns[k]()
      t = time.perf_counter()
      for _ in range(calls):
        fns[k]()
      times[k].append((time.perf_counter() - t) / calls)
    if r % 5 == 4:
      done = time.perf_counter() - start
      print(f'round {r + 1}/{rounds}, {done:.0f} s, ETA {done / (r + 1) * (rounds - r - 1):.0f} s', flush=True)
  return times
