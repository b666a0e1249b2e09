"""Worker processes that end with the process that started them.

A `multiprocessing` pool's workers are terminated when the pool is shut down — also on Ctrl-C — but a parent
killed by a signal (`kill`, `timeout`, a scheduler) never gets there, and its re-parented workers would go on
rendering or training for nobody. `exit_with_parent`, called in a pool's initializer, ends the worker once
its parent is gone. It polls `os.getppid()` rather than asking Linux for PR_SET_PDEATHSIG: that works on every
OS, and the kernel signal fires when the *thread* that spawned the worker ends, which in a pool need not be
the parent's end. Used by the sweep runner's pool and the glyph renderer's.
"""

import os
import threading
import time


def _watch(parent: int, poll_s: float) -> None:
  while os.getppid() == parent:
    time.sleep(poll_s)
  os._exit(1)   # no cleanup to run for a parent that is gone; what was cut is redone by the next run


def exit_with_parent(parent: int, poll_s: float = 0.5) -> None:
  """End this process within `poll_s` seconds of its parent `parent` (a pid) ending; returns at once."""
  threading.Thread(target=_watch, args=(parent, poll_s), name='exit-with-parent', daemon=True).start()
