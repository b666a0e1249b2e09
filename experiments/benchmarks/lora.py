"""Benchmark: LoRA's optimizer memory on the MiniLM-sized encoder — Adam state for the adapters only.

    python -m experiments.benchmarks.lora [--size=minilm] [--rank=8] [--out=runs/bench/lora]

The encoder is all-MiniLM-L6-v2's shape (`transformer.SIZES['minilm']`: 6 layers × 384, 12 heads, MLP 1536;
BERT layout, vocabulary 30522, 512 positions, 2 token types: 22.7M parameters) with rank-R adapters on the
attention query/key/value/out and MLP kernels and a 2-class linear head. Its `trainable='lora:R'` labels
(`rules.freeze_labels`) go through THE optimizer of the training loop (`optim.make` with the base config:
Adam, frozen groups through `set_to_zero`), and the state's bytes are counted from `jax.eval_shape` of its
init (nothing is allocated, so this is exact and takes seconds):

  lora_opt_state_over_adapter_bytes   bytes of optimizer state held under `backbone/` / bytes of the
                                      adapter parameters (target == 2.0: Adam's mu and nu for each adapter,
                                      nothing for the 22.7M frozen base weights)
  trainable_fraction                  trainable parameters (adapters + head) / all parameters (target < 5 %)

`raw` holds the byte counts, the parameter counts and, for scale, the state bytes of full fine-tuning
(`trainable='all'`) of the same encoder without adapters.
Writes `<out>/lora.json` and `<out>/lora.md`.
"""

import argparse
from typing import Any

from experiments.benchmarks import report

NUM_OUTPUTS = 2   # sentiment: a 2-class linear head


def backbone_spec(size: str, vocab_size: int, rank: int) -> dict[str, Any]:
  """The MiniLM-shaped encoder (BERT layout) of `size` with rank-`rank` adapters on the default targets."""
  from jaxtransfer.models import transformer
  return {'name': 'transformer', **transformer.SIZES[size], 'layout': 'bert', 'vocab_size': vocab_size,
          'max_len': 512, 'type_vocab_size': 2, 'lora_rank': rank}


def _bytes(leaves) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in leaves if hasattr(x, 'dtype')))


def measure(size: str = 'minilm', vocab_size: int = 30522, rank: int = 8, seq_len: int = 64) -> dict[str, Any]:
  """The two ratios (see the module docstring) and their raw counts, from abstract shapes only."""
  import jax

  from jaxtransfer import config as config_lib
  from jaxtransfer import optim, rules
  from jaxtransfer.models import model as model_lib

  def state(rank_: int, trainable: str) -> tuple[dict[str, Any], Any, Any, dict[str, int]]:
    spec = {'backbone': backbone_spec(size, vocab_size, rank_), 'head': {'name': 'linear', 'num_outputs': NUM_OUTPUTS}}
    params = model_lib.abstract(model_lib.build(spec), (seq_len,))['params']
    labels = rules.freeze_labels(trainable, params)
    opt_state = jax.eval_shape(optim.make(config_lib.base().optim, labels, 1000).init, params)
    held = {rules.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(opt_state)}
    count = {'total': _bytes(held.values()),
             'backbone': _bytes(x for p, x in held.items() if '/backbone/' in f'/{p}/'),
             'head': _bytes(x for p, x in held.items() if '/head/' in f'/{p}/')}
    return spec, params, labels, count

  spec, params, labels, lora_state = state(rank, f'lora:{rank}')
  _, plain, _, full_state = state(0, 'all')     # full fine-tuning of the same encoder without adapters
  flat, flat_labels = rules.flatten(params), rules.flatten(labels)
  adapters = {p: x for p, x in flat.items() if rules.is_adapter(p)}
  adapter_bytes = _bytes(adapters.values())
  trainable = sum(x.size for p, x in flat.items() if flat_labels[p] == rules.TRAIN)
  total = sum(x.size for x in flat.values())
  return {
      'lora_opt_state_over_adapter_bytes': lora_state['backbone'] / adapter_bytes,
      'trainable_fraction': trainable / total,
      'raw': {'size': size, 'rank': rank, 'backbone': spec['backbone'], 'head': spec['head'],
              'params': total, 'base_params': sum(x.size for x in jax.tree_util.tree_leaves(plain)),
              'adapter_params': sum(x.size for x in adapters.values()), 'trainable_params': trainable,
              'param_bytes': _bytes(flat.values()), 'adapter_bytes': adapter_bytes,
              'opt_state_bytes': {f'lora:{rank}': lora_state, 'all (no adapters)': full_state},
              'full_finetune_state_over_lora_state': full_state['total'] / lora_state['total']},
  }


def markdown(res: dict[str, Any]) -> str:
  raw = res['raw']
  lora_state = raw['opt_state_bytes'][f'lora:{raw["rank"]}']
  return report.table(
      f'LoRA r={raw["rank"]} on the {raw["size"]} encoder ({raw["params"]:,} parameters): optimizer state',
      ('quantity', 'value', 'target'),
      (('`lora_opt_state_over_adapter_bytes`', f'{res["lora_opt_state_over_adapter_bytes"]:.4f}', '== 2.0'),
       ('trainable fraction', f'{100 * res["trainable_fraction"]:.2f} % ({raw["trainable_params"]:,} = '
        f'{raw["adapter_params"]:,} adapter + head)', '< 5 %'),
       ('adapter bytes / backbone state bytes', f'{raw["adapter_bytes"]:,} / {lora_state["backbone"]:,}', ''),
       ('Adam state, LoRA vs full fine-tuning', f'{lora_state["total"] / 2**20:.2f} MB vs '
        f'{raw["opt_state_bytes"]["all (no adapters)"]["total"] / 2**20:.1f} MB '
        f'({raw["full_finetune_state_over_lora_state"]:.0f}×)', '')))


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--size', default='minilm')
  ap.add_argument('--vocab-size', type=int, default=30522)
  ap.add_argument('--rank', type=int, default=8)
  ap.add_argument('--out', default='runs/bench/lora')
  a = ap.parse_args(argv)
  from jaxtransfer import runtime
  runtime.configure()
  res = measure(a.size, a.vocab_size, a.rank)
  report.write(a.out, 'lora', res, markdown(res))


if __name__ == '__main__':
  main()
