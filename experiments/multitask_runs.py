"""Shared by the experiments/multitask_*.py scripts: the glyph pretraining they start from, and a grid of
multi-task configs over seeds run by the sweep runner (jaxtransfer/sweep.py) through THE training loop;
the scripts write results.md / results.json / results.png with `sweep.write_results` (mean ± std, ddof=1).

A finished run leaves `final.json` in its workdir and is not run again, so a script interrupted half-way
continues where it stopped.
"""

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from experiments.configs import multitask_scenes
from jaxtransfer import checkpoint, config, errors, runtime, sweep, train

flags.DEFINE_string('pretrain', multitask_scenes.PRETRAIN,
                    'Glyph pretraining workdir (config.pretrain()); trained there first if it holds no checkpoint.')
flags.DEFINE_integer('workers', 1, 'Worker processes for the runs (sweep.run).')

log = logging.getLogger('experiments')


def setup() -> None:
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
  logging.getLogger('jaxtransfer').setLevel(logging.WARNING)
  logging.getLogger('absl').setLevel(logging.WARNING)
  runtime.configure()


def pretrained(stages: Sequence[int] | None = None, path: str | None = None) -> str:
  """The glyph pretraining workdir the scenes models start from (trained here if missing): the demo's
  (`--pretrain`) for the default CNN, or `path` for a CNN with other conv `stages` (widths)."""
  c = config.pretrain()
  if stages is not None and list(stages) != list(c.model.backbone['stages']):
    if path is None:
      raise errors.ConfigError(f'pretrained(stages={list(stages)}): a workdir for the non-default width is needed')
    c.model.backbone = {**c.model.backbone, 'stages': list(stages)}
  else:
    path = flags.FLAGS.pretrain
  path = os.path.abspath(path)
  if checkpoint.manager(os.path.join(path, 'checkpoints')).latest_step() is None:
    log.info('no pretraining checkpoint in %s: pretraining on glyphs first (stages %s)', path,
             c.model.backbone['stages'])
    train.train(c, path)
  return path


def _log(i: int, n: int, r: sweep.Result) -> None:
  m = r.metrics
  log.info('[%d/%d] %s seed %d: mean AP %s (%.0f s)', i + 1, n, r.row, r.seed,
           f'{m["mean_ap"]:.4f}' if m and 'mean_ap' in m else 'n/a', r.wall_s)


# A config that leaves no training example (unknown_policy='drop' with no fully labelled example) is a
# cell without a result, recorded as such; any other error stops the experiment.
NO_RESULT: tuple[type[Exception], ...] = (errors.NoTrainingExamples,)


def grid(cells: Sequence[tuple[str, Callable[[int], Any]]], seeds: int, workdir: str,
         key: str = 'mean_ap') -> dict[str, list[float | None]]:
  """{cell name: [metric per seed]} for `cells` = [(name, seed -> config)]: one sweep (jaxtransfer/sweep.py)
  of cells × seeds in `workdir/<name>/seed_<s>`, each cached in its final.json; None = no result."""
  runs = [sweep.Run(name, name, seed, make(seed), os.path.join(workdir, name, f'seed_{seed}'), no_result=NO_RESULT)
          for name, make in cells for seed in range(seeds)]
  vals = sweep.values(sweep.run(runs, flags.FLAGS.workers, on_result=_log), key)
  return {name: vals[name][name] for name, _ in cells}


def wall_seconds(workdir: str, name: str, seeds: int) -> list[float]:
  """The recorded wall-clock seconds of each seed's run of a grid cell (machine load included)."""
  return [json.load(open(os.path.join(workdir, name, f'seed_{s}', sweep.FINAL)))['wall_s'] for s in range(seeds)]


def paired(a: Sequence[float | None], b: Sequence[float | None]) -> list[float]:
  """a − b seed by seed, over the seeds where both have a result."""
  return [x - y for x, y in zip(a, b) if x is not None and y is not None]


def fmt(values: Sequence[float | None], scale: float = 100.0) -> str:
  """'mean ± std' (ddof=1) of the values that are not None (sweep.fmt)."""
  return sweep.fmt(sweep.stats(values), scale)
