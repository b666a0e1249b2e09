"""Does the transfer_vs_data_size headline hold on digits the study never tuned or tested on?

    python -m experiments.transfer_vs_data_size_mnist [--workdir=runs/transfer_vs_data_size] \
        [--manual_dir=../shared/data]

Scores the study's own checkpoints (scratch, LP-FT and full fine-tuning at 1 and 10 labels per class, its
reporting seeds) on the 10,000-image MNIST test set (`real_digits/mnist_t10k`, read in place from
`--manual_dir`), which neither the learning-rate tuning (real_digits train) nor the study's test split
(real_digits test) contains. Writes <workdir>/mnist_t10k_check.json and prints mean ± std (ddof=1).
"""

import argparse
import json
import os

import numpy as np

STRATEGIES = ('scratch', 'lp-ft', 'full')
PER_CLASS = (1, 10)


def main(argv=None) -> dict[str, dict[str, float]]:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default='runs/transfer_vs_data_size')
  p.add_argument('--manual_dir', default='../shared/data')
  p.add_argument('--seeds', type=int, default=3)
  a = p.parse_args(argv)
  from jaxtransfer import evaluation, runtime
  runtime.configure()
  out = {}
  for s in STRATEGIES:
    for k in PER_CLASS:
      accs = [evaluation.evaluate_checkpoint(os.path.join(a.workdir, 'grid', s, f'{k}_per_class', f'seed_{seed}'),
                                             data='real_digits/mnist_t10k', split='test',
                                             manual_dir=a.manual_dir)['accuracy'] for seed in range(a.seeds)]
      out[f'{s} {k}/class'] = {'mean': float(np.mean(accs)), 'std': float(np.std(accs, ddof=1)), 'n': len(accs)}
      print(f'{s} {k}/class: MNIST t10k {100 * np.mean(accs):.1f} ± {100 * np.std(accs, ddof=1):.1f}', flush=True)
  with open(os.path.join(a.workdir, 'mnist_t10k_check.json'), 'w') as f:
    json.dump(out, f, indent=1)
  return out


if __name__ == '__main__':
  main()
