"""The one base class of every user error jaxtransfer raises.

A user error is something the person running jaxtransfer can fix: a config key out of range, a freeze rule
that matches nothing, a damaged or mismatched checkpoint, a label the head cannot hold, a bad data file.
Each is raised as a subclass of `Error` with a one-line message that names the problem (which key, which
parameter path, which file). The command line (`cli.py`) catches `Error` alone — one line on stderr, exit
code 2 — and lets everything else show its traceback, so real bugs stay loud.

`Error` derives from `ValueError` so that library callers who already catch `ValueError` keep working.
"""


class Error(ValueError):
  """A user error: one line that names the problem; the CLI prints it and exits with code 2."""


class ConfigError(Error):
  """A config value is missing, unknown or out of range (names the key)."""


class DataError(Error):
  """A dataset, split, label or data file is unusable (names the dataset, split, label or file)."""


class NoTrainingExamples(DataError):
  """The config leaves no example to train on (e.g. `mtl.unknown_policy='drop'` with no fully labelled one).

  A sweep records such a cell as "no result" instead of stopping (`sweep.Run.no_result`).
  """
