"""How many token positions bucketed padding saves against padding every batch to `max_len`.

    python -m experiments.benchmarks.text_padding [--checkpoint=runs/minilm] [--manual_dir=../shared/data]
        [--out=runs/bench]

Random batches of `sentiment_sentences/both` train (tokenized with the checkpoint's own tokenizer), each
padded as `text.inputs.TextInputs` pads it: mean padded length per bucket set and batch size, the ratio
max_len / mean padded length (positions saved), and how many distinct programs (lengths) occur. Counts, not
timings: the step's cost grows at least linearly with the padded length on any machine.
"""

import argparse
import json
import os

import numpy as np

BUCKETS = ((), (32,), (16, 32, 48))
BATCHES = (32, 128)


def measure(checkpoint_path: str, manual_dir: str, max_len: int = 64, rounds: int = 500) -> dict:
  from jaxtransfer import checkpoint
  from jaxtransfer.data import catalog
  from jaxtransfer.text import inputs, tokenizer
  tok = tokenizer.from_meta(checkpoint.read_meta(*checkpoint.open_for_reading(checkpoint_path))['tokenizer'])
  texts = inputs.source_texts(catalog.load('sentiment_sentences/both', 'train', manual_dir=manual_dir))
  lengths = (tok.encode(texts, max_len=max_len) != tok.pad_id).sum(1)
  rng = np.random.default_rng(0)
  rows = []
  for b in BATCHES:
    longest = [int(lengths[rng.choice(len(texts), b, replace=False)].max()) for _ in range(rounds)]
    for buckets in BUCKETS:
      ti = inputs.TextInputs(tok, max_len, buckets)
      padded = [ti.length(n) for n in longest]
      rows.append({'batch': b, 'buckets': list(ti.buckets), 'mean_padded': float(np.mean(padded)),
                   'positions_saved': max_len / float(np.mean(padded)), 'programs': len(set(padded))})
  return {'tokens_per_sentence': {'mean': float(lengths.mean()), 'p90': float(np.percentile(lengths, 90)),
                                  'max': int(lengths.max())}, 'max_len': max_len, 'rows': rows}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--checkpoint', default='runs/minilm')
  p.add_argument('--manual_dir', default='../shared/data')
  p.add_argument('--out', default='runs/bench')
  a = p.parse_args()
  result = measure(a.checkpoint, a.manual_dir)
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'text_padding.json'), 'w') as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
