"""Sweeps: cells × seeds → runs, each cached in its own workdir, and the one results writer.

A sweep is a list of `Run`s: a config, the workdir it runs in, the function that runs it (`train_run`
= `train.train` by default; `probe_run` = `features.linear_probe` on cached features for head-only cells)
and its place in the results table (row, column, seed). `run(runs, workers=…)` runs them — in worker
processes when `workers` > 1 — and every finished run leaves `final.json` (its final metrics, the config
it ran and its time) in its workdir, so re-running a sweep reruns nothing that finished and an
interrupted sweep continues where it stopped. A finished workdir holding another config is an error,
not a silent reuse.

The results: `values(results, metric)` → {row: {col: [per seed]}}, `summarize` → {row: {col: {'mean',
'std', 'n'}}} (std with ddof=1, the sample std; a cell of one seed has std 0.0 in JSON and '–' in the
table), `write_results` → results.json (the caller's dict: {'<metric>': summary, …}), results.md (a row ×
column table, mean ± std in %) and results.png (mean ± std vs the column variable, one line per row).

    runs = [sweep.Run(s, k, seed, make_config(s, k, seed), f'{workdir}/{s}/{k}/seed_{seed}')
            for s in strategies for k in budgets for seed in seeds]
    results = sweep.run(runs, workers=2)
    summary = sweep.summarize(sweep.values(results, 'accuracy'))
    sweep.write_results(workdir, {'accuracy': summary}, title=…, caption=…)
"""

import dataclasses
import functools
import json
import logging
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxtransfer import errors

log = logging.getLogger('jaxtransfer')

FINAL = 'final.json'
RunFn = Callable[[ml_collections.ConfigDict, str], Mapping[str, Any]]


def train_run(config: ml_collections.ConfigDict, workdir: str) -> Mapping[str, Any]:
  """The default run function: the one training loop; its final eval metrics."""
  from jaxtransfer import train
  return train.train(config, workdir).metrics


def probe_run(config: ml_collections.ConfigDict, workdir: str, *, cache_dir: str) -> Mapping[str, Any]:
  """A head-only config trained on cached backbone features (`features.linear_probe`); its test metrics.

  Use as `functools.partial(sweep.probe_run, cache_dir=…)` (picklable, so it runs in workers too).
  """
  del workdir  # nothing to checkpoint: the probe is seconds of work
  from jaxtransfer import features
  cache = features.FeatureCache(cache_dir, data_dir=config.input.data_dir or None,
                                manual_dir=config.input.manual_dir or None)
  return features.linear_probe(config, cache=cache)


def probe(cache_dir: str) -> RunFn:
  """`probe_run` bound to a feature cache directory."""
  return functools.partial(probe_run, cache_dir=cache_dir)


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep. `no_result`: error types recorded as "this cell has no result" (metrics None)
  instead of stopping the sweep — e.g. a data policy that leaves no training example."""
  row: str
  col: Any
  seed: int
  config: ml_collections.ConfigDict
  workdir: str
  fn: RunFn = train_run
  no_result: tuple[type[Exception], ...] = ()


@dataclasses.dataclass(frozen=True)
class Result:
  """A finished run: its final scalar metrics (None = no result, see `Run.no_result`) and cost."""
  row: str
  col: Any
  seed: int
  workdir: str
  metrics: dict[str, float] | None
  wall_s: float
  cpu_s: float


def _config_json(config: ml_collections.ConfigDict) -> Any:
  return json.loads(json.dumps(config.to_dict(), default=str))


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """The scalar entries of a metrics dict (a probe also returns its parameters)."""
  return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number)}


def _flat(d: Any, prefix: str = '') -> dict[str, Any]:
  if not isinstance(d, dict) or not d:
    return {prefix[:-1]: d}
  out: dict[str, Any] = {}
  for k, v in d.items():
    out.update(_flat(v, f'{prefix}{k}.'))
  return out


def _check_same_config(path: str, saved: Any, config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir that ran another config is an error: its checkpoints would be resumed (or its result
  reused) for the wrong run. Keys only one side has (the schema grew) do not count."""
  a, b = _flat(saved), _flat(_config_json(config))
  differ = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
  if differ:
    raise errors.ConfigError(f'{path}: a run of another config ({", ".join(differ[:3])} differ); '
                             f'delete {workdir} or use another workdir')


def check_trained_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """ConfigError when `workdir` holds a run that `train.train` finished with another config (its
  config.json), so that run is not silently reused for this one."""
  trained = os.path.join(workdir, 'config.json')   # train.train's record of a run it finished
  if os.path.exists(trained):
    with open(trained) as f:
      _check_same_config(trained, json.load(f), config, workdir)


def cached(run: Run) -> Result | None:
  """The run's result from its workdir's final.json, or None when it has not finished. Raises ConfigError
  when the workdir holds a run (finished, or trained by `train.train` to the end) of another config."""
  path = os.path.join(run.workdir, FINAL)
  if not os.path.exists(path):
    check_trained_config(run.config, run.workdir)
    return None
  with open(path) as f:
    done = json.load(f)
  if 'config' in done:
    _check_same_config(path, done['config'], run.config, run.workdir)
  return Result(run.row, run.col, run.seed, run.workdir, done['metrics'], done.get('wall_s', 0.0),
                done.get('cpu_s', 0.0))


def execute(run: Run) -> Result:
  """Run one `Run` (or read its cached result) and leave final.json in its workdir."""
  done = cached(run)
  if done is not None:
    return done
  t0, c0 = time.time(), time.process_time()
  try:
    metrics = _scalars(run.fn(run.config, run.workdir))
  except run.no_result as e:
    log.warning('%s: no result (%s)', run.workdir, e)
    metrics = None
  result = Result(run.row, run.col, run.seed, run.workdir, metrics, time.time() - t0, time.process_time() - c0)
  os.makedirs(run.workdir, exist_ok=True)
  path = os.path.join(run.workdir, FINAL)
  with open(path + '.tmp', 'w') as f:
    json.dump({'row': run.row, 'col': run.col, 'seed': run.seed, 'metrics': metrics, 'wall_s': result.wall_s,
               'cpu_s': result.cpu_s, 'config': _config_json(run.config)}, f, indent=1, default=str)
  os.replace(path + '.tmp', path)     # atomic: a killed run never leaves a half-written result
  return result


def _init_worker(parent: int) -> None:
  from jaxtransfer import runtime, workers
  workers.exit_with_parent(parent)   # a killed sweep takes its workers with it; a cut run has no final.json
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
  for noisy in ('absl', 'orbax', 'jax._src', 'jaxtransfer'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  runtime.configure()


def run(runs: Sequence[Run], workers: int = 1, *, on_result: Callable[[int, int, Result], None] | None = None
        ) -> list[Result]:
  """Every run's result, in the order of `runs`; finished ones are read from their workdirs.

  `workers` > 1 runs the unfinished ones in that many spawned processes (each configured by
  `runtime.configure()`; run functions must be picklable: module-level functions or partials of them);
  they end with the sweep's process, even when it is killed.
  `on_result(i, n, result)` is called as each run finishes (e.g. to log progress).
  """
  if workers < 1:
    raise errors.ConfigError(f'sweep workers: expected ≥ 1, got {workers}')
  seen: dict[str, int] = {}
  for i, r in enumerate(runs):
    if r.workdir in seen:
      raise errors.ConfigError(f'sweep: runs {seen[r.workdir]} and {i} share the workdir {r.workdir}')
    seen[r.workdir] = i
  results: list[Result | None] = [cached(r) for r in runs]
  todo = [i for i, r in enumerate(results) if r is None]
  report = on_result or (lambda i, n, r: None)
  if workers == 1 or len(todo) <= 1:
    for i in todo:
      results[i] = execute(runs[i])
      report(i, len(runs), results[i])
  else:
    with mp.get_context('spawn').Pool(min(workers, len(todo)), initializer=_init_worker,
                                     initargs=(os.getpid(),)) as pool:
      for i, result in zip(todo, pool.imap(execute, [runs[i] for i in todo])):
        results[i] = result
        report(i, len(runs), result)
  return results  # type: ignore[return-value]


# --- summaries and the results writer ----------------------------------------------------------------


def values(results: Sequence[Result], metric: str) -> dict[str, dict[Any, list[float | None]]]:
  """{row: {col: [metric per seed, in seed order]}} (None where a run has no result); rows and columns
  in order of first appearance."""
  out: dict[str, dict[Any, list[tuple[int, float | None]]]] = {}
  for r in results:
    out.setdefault(r.row, {}).setdefault(r.col, []).append(
        (r.seed, None if r.metrics is None else float(r.metrics[metric])))
  return {row: {col: [v for _, v in sorted(vs, key=lambda sv: sv[0])] for col, vs in by_col.items()}
          for row, by_col in out.items()}


def stats(vals: Sequence[float | None]) -> dict[str, float | int] | None:
  """{'mean', 'std' (ddof=1; 0.0 for a single value), 'n'} over the values that are not None."""
  v = np.asarray([x for x in vals if x is not None], np.float64)
  if not len(v):
    return None
  return {'mean': float(v.mean()), 'std': float(v.std(ddof=1)) if len(v) > 1 else 0.0, 'n': int(len(v))}


def summarize(vals: Mapping[str, Mapping[Any, Sequence[float | None]]]) -> dict[str, dict[str, dict[str, Any]]]:
  """{row: {str(col): stats}} — the results.json schema; cells without any result are left out."""
  out: dict[str, dict[str, dict[str, Any]]] = {}
  for row, by_col in vals.items():
    out[row] = {}
    for col, v in by_col.items():
      s = stats(v)
      if s is not None:
        out[row][str(col)] = s
  return out


def fmt(cell: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
  """'mean ± std' × scale; '–' for a missing cell; std '–' for a single seed (no spread measured)."""
  if not cell:
    return '–'
  sd = f'{scale * cell["std"]:.{digits}f}' if cell['n'] > 1 else '–'
  return f'{scale * cell["mean"]:.{digits}f} ± {sd}'


def _columns(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
  cols: list[str] = []
  for by_col in summary.values():
    cols += [c for c in by_col if c not in cols]
  if all(_is_number(c) for c in cols):
    cols.sort(key=float)
  return cols


def _is_number(s: str) -> bool:
  try:
    return math.isfinite(float(s))
  except ValueError:
    return False


def table(summary: Mapping[str, Mapping[str, Any]], *, row_header: str = 'strategy',
          col_label: Callable[[str], str] = str, scale: float = 100.0) -> str:
  """A markdown table: one line per row, one column per column key (numeric keys in increasing order)."""
  cols = _columns(summary)
  lines = [f'| {row_header} | ' + ' | '.join(col_label(c) for c in cols) + ' |', '|---|' + '---|' * len(cols)]
  for row, by_col in summary.items():
    lines.append(f'| {row} | ' + ' | '.join(fmt(by_col.get(c), scale) for c in cols) + ' |')
  return '\n'.join(lines)


def plot(path: str, summary: Mapping[str, Mapping[str, Any]], *, xlabel: str, ylabel: str, title: str = '',
         xscale: str = 'linear', col_label: Callable[[str], str] = str, scale: float = 100.0,
         rows: Sequence[str] | None = None) -> None:
  """mean ± std (error bars) vs the column variable, one line per row (numeric columns on their own axis,
  others evenly spaced; a tick at every column unless two columns of a linear numeric axis are closer than
  1/12 of its span, where their labels would overlap)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  cols = _columns(summary)
  numeric = all(_is_number(c) for c in cols)
  x_of = {c: float(c) if numeric else i for i, c in enumerate(cols)}
  fig, ax = plt.subplots(figsize=(6, 4))
  for row in rows if rows is not None else summary:
    by_col = summary[row]
    xs = [c for c in cols if c in by_col]
    m = np.array([by_col[c]['mean'] for c in xs])
    sd = np.array([by_col[c]['std'] for c in xs])
    ax.errorbar([x_of[c] for c in xs], scale * m, yerr=scale * sd, marker='o', capsize=3, label=row)
  ax.set(xscale=xscale if numeric else 'linear', xlabel=xlabel, ylabel=ylabel, title=title)
  at = sorted(x_of.values())
  crowded = numeric and xscale == 'linear' and len(at) > 2 and min(np.diff(at)) < (at[-1] - at[0]) / 12
  if not crowded:   # a crowded linear axis (steps 12000 and 13000) keeps matplotlib's round ticks: labels overlap
    ax.set_xticks([x_of[c] for c in cols], [col_label(c) if not numeric else c for c in cols])
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8 if len(summary) > 6 else None)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_results(workdir: str, results: Mapping[str, Any], *, metric: str = 'accuracy', title: str,
                  caption: str, row_header: str = 'strategy', col_label: Callable[[str], str] = str,
                  xlabel: str = '', ylabel: str = '', plot_title: str = '', xscale: str = 'linear',
                  notes: str = '', scale: float = 100.0, plot_rows: Sequence[str] | None = None) -> str:
  """results.json (all of `results`), results.md (`title`, `caption` — '{n}' becomes the largest seed
  count — the table of `results[metric]`, `notes`) and results.png; returns the table."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  summary = results[metric]
  text = table(summary, row_header=row_header, col_label=col_label, scale=scale)
  n = max((v['n'] for by_col in summary.values() for v in by_col.values()), default=0)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'# {title}\n\n{caption.format(n=n)}\n\n{text}\n' + (f'\n{notes}\n' if notes else ''))
  if any(summary.values()):
    plot(os.path.join(workdir, 'results.png'), summary, xlabel=xlabel, ylabel=ylabel, title=plot_title,
         xscale=xscale, col_label=col_label, scale=scale, rows=plot_rows)
  return text
