"""Shared by the experiments/multitask_*.py scripts: the glyph pretraining they start from, and a grid of
multi-task configs over seeds run by the sweep runner (jaxtransfer/sweep.py) through THE training loop;
the scripts write results.md / results.json / results.png with `sweep.write_results` (mean ± std, ddof=1).

Every cell's learning rate is tuned before it is reported (issue #20): `grid` first runs each cell at every
lr of `--lrs` with the tuning seeds (100, …: disjoint from the reporting seeds 0, 1, 2) on a validation
split that never touches the test scenes — trained on `train[:4000]` (or its first N when the cell trains
on the first N ≤ 4000 scenes), scored on the true labels of `train[4000:]` — and picks the best mean
(`tune_lr.choose`: the smaller lr on a near-tie, a diverging lr ruled out); the reporting seeds then run at
that lr on the test split. One `--lrs` value skips the tuning.

A finished run leaves `final.json` in its workdir and is not run again, so a script interrupted half-way
continues where it stopped.
"""

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from absl import flags

from experiments.configs import multitask_scenes
from jaxtransfer import checkpoint, config, errors, runtime, sweep, train

flags.DEFINE_string('pretrain', multitask_scenes.PRETRAIN,
                    'Glyph pretraining workdir (config.pretrain()); trained there first if it holds no checkpoint.')
flags.DEFINE_integer('workers', 1, 'Worker processes for the runs (sweep.run).')
flags.DEFINE_list('lrs', ['1e-3', '3e-3', '1e-2', '3e-2'], 'Learning rates tuned per cell on the validation split '
                  '(one value: no tuning).')
flags.DEFINE_integer('tune_seeds', 2, 'Tuning seeds per (cell, lr): 100, 101, … (disjoint from the reporting seeds).')

VAL_TRAIN, VAL_EVAL = 4000, 'train[4000:]'   # scenes train: the first 4000 to train on, the last 1000 to score

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


def validation(c: ml_collections.ConfigDict) -> None:
  """Move a scenes config onto the validation split: train on the first VAL_TRAIN training scenes (or the
  first N of them when the config trains on the first N), score the true labels of the rest."""
  m = re.fullmatch(r'train\[:(\d+)\]', c.input.train_split)
  if c.input.train_split != 'train' and not m:
    raise errors.ConfigError(f'tuning: train_split {c.input.train_split!r} has no validation twin '
                             "(expected 'train' or 'train[:N]')")
  n = min(int(m.group(1)), VAL_TRAIN) if m else VAL_TRAIN
  c.input.train_split, c.input.eval_split, c.input.eval_data = f'train[:{n}]', VAL_EVAL, ''


@dataclasses.dataclass(frozen=True)
class Grid:
  """A grid's results: {cell: [metric per reporting seed]} (None = no result) and {cell: the lr it ran at}."""
  values: dict[str, list[float | None]]
  lr: dict[str, float]


def tune(cells: Sequence[tuple[str, Callable[[int], Any]]], workdir: str, key: str = 'mean_ap',
         fn: sweep.RunFn = sweep.train_run) -> dict[str, float]:
  """{cell: chosen lr}: every cell at every `--lrs` value on the validation split (experiments/tune_lr.tune,
  tuning seeds 100, …), cached in `workdir/tune/…`; with one `--lrs` value, that value."""
  from experiments import tune_lr
  F = flags.FLAGS
  if len(F.lrs) == 1:
    return {name: float(F.lrs[0]) for name, _ in cells}
  make = dict(cells)

  def config(name: str, k: int, seed: int, lr: float) -> ml_collections.ConfigDict:
    del k   # one column: the cell itself
    c = make[name](seed)
    c.optim.lr = lr
    return c

  seeds = range(tune_lr.FIRST_SEED, tune_lr.FIRST_SEED + F.tune_seeds)
  tuned = tune_lr.tune(config, list(make), [0], F.lrs, seeds, os.path.join(workdir, 'tune'), workers=F.workers,
                       validation=validation, key=key, run_fn=lambda name: fn, title='Learning-rate choice on scenes train[4000:]',
                       caption=f'Validation {key} (%), trained on scenes train[:{VAL_TRAIN}] (or its first N)',
                       col_label=lambda k: 'validation')
  return {name: tuned['best_lr'][name][0] for name in make}


def grid(cells: Sequence[tuple[str, Callable[[int], Any]]], seeds: int, workdir: str, key: str = 'mean_ap',
         fn: sweep.RunFn = sweep.train_run, lrs: dict[str, float] | None = None) -> Grid:
  """`cells` = [(name, seed -> config)]: each cell's lr tuned (`tune`; or given: `lrs`, e.g. tuned on a
  representative cell), then one sweep (jaxtransfer/sweep.py) of cells × reporting seeds at those lrs in
  `workdir/<name>/lr<lr>/seed_<s>`, each cached in its final.json."""
  lrs = dict(lrs) if lrs is not None else tune(cells, workdir, key, fn)

  def at_lr(name: str, make: Callable[[int], Any], seed: int) -> ml_collections.ConfigDict:
    c = make(seed)
    c.optim.lr = lrs[name]
    return c

  runs = [sweep.Run(name, name, seed, at_lr(name, make, seed), os.path.join(workdir, name, f'lr{lrs[name]:g}', f'seed_{seed}'), fn=fn,
                    no_result=NO_RESULT) for name, make in cells for seed in range(seeds)]
  vals = sweep.values(sweep.run(runs, flags.FLAGS.workers, on_result=_log), key)
  return Grid({name: vals[name][name] for name, _ in cells}, lrs)


def lr_notes(lrs: dict[str, float]) -> str:
  """The chosen learning rates as a markdown table (for a results.md's notes)."""
  from experiments import tune_lr
  return ('Learning rate per cell, tuned on the validation split (scenes train[4000:], tuning seeds from '
          f'{tune_lr.FIRST_SEED}):\n\n| cell | lr |\n|---|---|\n' + '\n'.join(f'| {n} | {lr:g} |' for n, lr in lrs.items()))


def wall_seconds(workdir: str, name: str, lr: float, seeds: int) -> list[float]:
  """The recorded wall-clock seconds of each seed's run of a grid cell at `lr` (machine load included)."""
  return [json.load(open(os.path.join(workdir, name, f'lr{lr:g}', f'seed_{s}', sweep.FINAL)))['wall_s']
          for s in range(seeds)]


def paired(a: Sequence[float | None], b: Sequence[float | None]) -> list[float]:
  """a − b seed by seed, over the seeds where both have a result."""
  return [x - y for x, y in zip(a, b) if x is not None and y is not None]


def fmt(values: Sequence[float | None], scale: float = 100.0) -> str:
  """'mean ± std' (ddof=1) of the values that are not None (sweep.fmt)."""
  return sweep.fmt(sweep.stats(values), scale)
