"""Where a benchmark's results go: `<out>/<stem>.json` (everything measured) and `<out>/<stem>.md` (tables)."""

import argparse
import json
import os
import platform
from collections.abc import Callable, Iterable, Sequence


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
  """A markdown section: `# title`, then a table with one row per item of `rows` (cells formatted)."""
  lines = [f'# {title}', '', '| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def _cpuinfo_field(name: str, cpuinfo: str) -> str | None:
  """The first `name : value` of a /proc/cpuinfo-style file (None without the file or the field)."""
  try:
    with open(cpuinfo) as f:
      return next((line.split(':', 1)[1].strip() for line in f if line.lower().startswith(name)), None)
  except OSError:
    return None


def cpu_model(cpuinfo: str = '/proc/cpuinfo') -> str:
  """The CPU's model name ('AMD EPYC', 'Intel(R) Xeon(R) …'), else `platform.processor()`: the same code runs
  1.6× apart on two 2-core machines, so a benchmark's figures say which CPU they were read on."""
  return _cpuinfo_field('model name', cpuinfo) or platform.processor() or platform.machine()


def machine(loadavg_start: Sequence[float], **extra: object) -> dict:
  """The record of where a benchmark ran: cores, CPU model, AVX-512 or not, jax, XLA flags, load average at
  the start and now, plus `extra`."""
  import jax
  flags = (_cpuinfo_field('flags', '/proc/cpuinfo') or '').split()
  return {'cpu_count': os.cpu_count(), 'cpu': cpu_model(), 'avx512': 'avx512f' in flags,
          'python': platform.python_version(), 'jax': jax.__version__, **extra,
          'xla_flags': os.environ.get('XLA_FLAGS', ''), 'loadavg_start': [round(x, 2) for x in loadavg_start],
          'loadavg_end': [round(x, 2) for x in os.getloadavg()]}


def write(out: str, stem: str, results: dict, markdown: str) -> None:
  """Write both files (creating `out`) and print the markdown, so a run's log shows the tables too."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f'{stem}.json'), 'w') as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(out, f'{stem}.md'), 'w') as f:
    f.write(markdown)
  print(markdown)


def main(argv: list[str] | None, *, doc: str, stem: str, run: Callable[[int, int], dict],
         markdown: Callable[[dict], str], rounds: int) -> None:
  """The command line of a side-by-side benchmark of the demo CNN: `[--batch=128] [--rounds=N]
  [--out=runs/bench/<stem>]`; runs `run(batch, rounds)` and writes its results."""
  ap = argparse.ArgumentParser(description=doc.split('\n')[0])
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--rounds', type=int, default=rounds)
  ap.add_argument('--out', default=f'runs/bench/{stem}')
  a = ap.parse_args(argv)
  from jaxtransfer import runtime
  runtime.configure()   # XLA flags and the allocator, before jax starts
  res = run(a.batch, a.rounds)
  write(a.out, stem, res, markdown(res))
