"""Where a benchmark's results go: `<out>/<stem>.json` (everything measured) and `<out>/<stem>.md` (tables)."""

import json
import os


def write(out: str, stem: str, results: dict, markdown: str) -> None:
  """Write both files (creating `out`) and print the markdown, so a run's log shows the tables too."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f'{stem}.json'), 'w') as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(out, f'{stem}.md'), 'w') as f:
    f.write(markdown)
  print(markdown)
