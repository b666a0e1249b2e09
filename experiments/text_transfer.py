"""Text transfer the BERT way (issue #16): sentence classifiers from 100–1600 labels, against TF-IDF.

    python -m experiments.text_transfer [--workdir=runs/text_transfer] [--manual_dir=../shared/data]
        [--mlm=runs/mlm_wikitext] [--minilm=runs/minilm] [--seeds=3] [--steps=300] [--budgets=100,300,1000,0]
        [--strategies=…] [--tune_budgets=…] [--tune_seeds=100,101] [--minilm_steps=100] [--dapt_steps=300]
        [--stage=pretrain|tune|grid|shift|curve|report|all] [--workers=1] [--quick]

Data: `sentiment_sentences/both` (1600 training / 400 test review sentences, ../shared/data read in place).
A budget of N labels = N/2 per class, drawn per seed (`input.per_class`, `input.subset_seed` = seed); 0 =
all 1600. Strategies (rows):
  tf-idf + logreg  word 1–2-gram TF-IDF + logistic regression, C and min_df by 5-fold CV on the training
                   labels only (jaxtransfer/text/baseline.py): the hand-feature baseline;
  scratch          the MLM encoder's architecture and tokenizer, random init, everything trains;
  mlm head / mlm full        the encoder after our masked-LM pretraining on WikiText-2 (--mlm; trained first
                   with experiments/configs/pretrain_mlm_wikitext.py when missing): head only, or everything;
  minilm head / full / lora:8 / llrd   the imported all-MiniLM-L6-v2 (--minilm; `jaxtransfer import-weights
                   --variant=minilm-l6`): head on cached features, full fine-tuning, LoRA rank 8, layer-wise
                   lr decay 0.8;
  minilm dapt full MiniLM after a short continued MLM on the training sentences themselves (domain-adaptive
                   pretraining; test sentences never enter it), then full fine-tuning.
Every strategy's lr is tuned on a validation split that never touches the test set (subsets of
`train[:1200]`, accuracy on `train[1200:]`; tuning seeds 100, 101, disjoint from the reporting seeds),
through experiments/tune_lr.py and the sweep runner, at each budget of --tune_budgets (default: every budget;
a budget not tuned takes the lr of the nearest tuned one, on a log scale); 'minilm dapt full' takes the lr
tuned for 'minilm full' (LR_OF); TF-IDF tunes itself by cross-validation.
Domain shift (`shift`): train on all of one domain's training sentences, test on the other's test split
(amazon → yelp, yelp → amazon) for TF-IDF, MiniLM head and full, the MLM encoder full and its from-scratch twin
(so the own-MLM gain is also measured on the other domain's sentences: results.json 'mlm_gain_domain_shift').
Gain against pretraining steps (`curve`): 'mlm full' at 300 labels from every kept checkpoint of --mlm
(checkpoints/<step>, each at the lr tuned for the last one), step 0 being the from-scratch twin ('scratch');
results.json 'mlm_curve', a table in results.md and curve.png.
Gain over the twin (always): 'mlm head' and 'mlm full' minus 'scratch' seed by seed at every budget (the same
labelled subset and fine-tuning seed on both sides), results.json 'mlm_gain' and a table in results.md.
Writes results.json ({'accuracy': {strategy: {labels: {mean, std, n}}}}, the demo's schema, std ddof=1),
results.md and results.png (accuracy vs labels). --quick: a 20-step MLM pretraining on 3000 sentences,
10-step runs, budgets 100 and 300, one lr per strategy, 2 seeds (MiniLM rows only if its checkpoint
exists): an end-to-end check in a few minutes.
"""

import argparse
import logging
import math
import os
import sys
import time
from typing import Any

DATA = 'sentiment_sentences/both'
BUDGETS = (100, 300, 1000, 0)           # labelled training sentences; 0 = all (reported as 1600)
ALL = 1600
VAL_TRAIN, VAL_EVAL = 'train[:1200]', 'train[1200:]'
TUNE_SEEDS = (100, 101)
TFIDF = 'tf-idf + logreg'
# strategy → (source, trainable, extra config, learning rates tuned over)
STRATEGIES: dict[str, tuple[str, str, dict[str, Any], tuple[str, ...]]] = {
    'scratch': ('scratch', 'all', {}, ('3e-4', '1e-3', '3e-3')),
    'mlm head': ('mlm', 'head', {}, ('3e-3', '1e-2', '3e-2')),
    'mlm full': ('mlm', 'all', {}, ('1e-4', '3e-4', '1e-3', '3e-3')),   # 1e-3 won at the old edge (3k and 10k steps)
    'minilm head': ('minilm', 'head', {}, ('3e-3', '1e-2', '3e-2')),
    'minilm full': ('minilm', 'all', {}, ('2e-5', '5e-5', '1e-4')),
    'minilm lora:8': ('minilm', 'lora:8', {}, ('3e-4', '1e-3', '3e-3')),
    'minilm llrd': ('minilm', 'all', {'optim.llrd': 0.8}, ('5e-5', '1e-4', '2e-4')),
    'minilm dapt full': ('dapt', 'all', {}, ('2e-5', '5e-5', '1e-4')),
}
# A strategy fine-tuned at the lr tuned for another: DAPT is MiniLM after a few hundred small MLM steps, fine-tuned
# exactly like 'minilm full' (a separate tuning would double the most expensive rows; BUILD_NOTES says so).
LR_OF = {'minilm dapt full': 'minilm full'}
GRID = (TFIDF, *STRATEGIES)
TWIN = 'scratch'                        # the MLM rows' from-scratch twin: the gain tables subtract it seed by seed
SHIFT = (TFIDF, TWIN, 'minilm head', 'minilm full', 'mlm full')
CURVE, CURVE_BUDGET = 'mlm full', 300   # the gain-vs-pretraining-steps curve: this strategy at this budget
DOMAINS = ('amazon', 'yelp')
log = logging.getLogger('jaxtransfer')


def _col(n: int) -> int:
  return n or ALL


def run_steps(strategy: str, a: argparse.Namespace) -> int:
  """Adam steps of one fine-tune: --minilm_steps when the 22.7M-parameter MiniLM itself trains (its training loss
  is ~0.002 after 100 steps at 300 labels, and one step costs ~40× the small encoder's), else --steps."""
  source, trainable = STRATEGIES[strategy][:2]
  return a.minilm_steps if source in ('minilm', 'dapt') and trainable != 'head' else a.steps


def make_config(strategy: str, n: int, seed: int, lr: float, *, a: argparse.Namespace) -> Any:
  """One fine-tune of `strategy` on `n` labels (0 = all) at `lr`, seed `seed`."""
  from experiments.configs import finetune_text, pretrain_mlm_wikitext
  from jaxtransfer import finetune
  source, trainable, extra, _ = STRATEGIES[strategy]
  c = finetune_text.get_config()
  c.input.manual_dir, c.input.data_dir = a.manual_dir, a.data_dir
  c.seed, c.input.subset_seed, c.input.per_class = seed, seed, n // 2
  c.trainable, c.optim.lr = trainable, lr
  steps = run_steps(strategy, a)
  c.train.steps, c.train.checkpoint_every, c.train.log_every = steps, steps, max(steps // 3, 1)
  c.optim.warmup_steps = min(c.optim.warmup_steps, steps // 10)
  if source in ('scratch', 'mlm'):   # twins: the same architecture and fine-tuning dropout, only the init differs
    c.model.backbone_dropout = pretrain_mlm_wikitext.BACKBONE['dropout']
  if source == 'scratch':
    c.transfer.init_from = ''
    c.model.backbone = dict(pretrain_mlm_wikitext.BACKBONE)
    c.text.tokenizer = f'from:{a.mlm}'
  else:
    c.transfer.init_from = {'mlm': a.mlm, 'minilm': a.minilm, 'dapt': os.path.join(a.workdir, 'dapt')}[source]
  for key, value in extra.items():
    finetune.set_dotted(c, key, value)
  return c


def tfidf_run(config: Any, workdir: str) -> dict[str, float]:
  """A sweep run function: the TF-IDF baseline on the config's training subset and evaluation split."""
  del workdir
  import numpy as np

  from jaxtransfer.data import catalog, fewshot
  from jaxtransfer.text import baseline, inputs
  kw = {'data_dir': config.input.data_dir or None, 'manual_dir': config.input.manual_dir or None}
  train = catalog.load(config.data, config.input.train_split, **kw)
  labels = catalog.labels(config.data, config.input.train_split, **kw)
  ids = (fewshot.k_per_class_indices(labels, config.input.per_class, config.input.subset_seed)
         if config.input.per_class else np.arange(len(labels)))
  texts = inputs.source_texts(train)
  test_data = config.input.eval_data or config.data
  test = catalog.load(test_data, config.input.eval_split, **kw)
  out = baseline.tfidf_logistic_regression([texts[i] for i in ids], labels[ids], inputs.source_texts(test),
                                           catalog.labels(test_data, config.input.eval_split, **kw),
                                           seed=config.seed)
  return {'accuracy': out['accuracy'], 'C': out['C']}


def tfidf_config(n: int, seed: int, a: argparse.Namespace) -> Any:
  from jaxtransfer import config as config_lib
  c = config_lib.base()
  c.data, c.input.manual_dir, c.input.data_dir = DATA, a.manual_dir, a.data_dir
  c.seed, c.input.subset_seed, c.input.per_class = seed, seed, n // 2
  c.objective = 'classification'
  c.model.backbone = {'name': 'tfidf'}    # recorded in final.json; never built
  return c


def ensure_pretrained(a: argparse.Namespace) -> None:
  """The MLM checkpoint (--mlm; trained here if missing) and the DAPT checkpoint (MiniLM + continued MLM)."""
  from experiments.configs import pretrain_mlm_wikitext
  from jaxtransfer import checkpoint, train
  has = lambda path: os.path.isdir(os.path.join(path, 'checkpoints')) and \
      checkpoint.manager(os.path.join(path, 'checkpoints')).latest_step() is not None
  if not has(a.mlm):
    c = pretrain_mlm_wikitext.get_config('quick' if a.quick else '')
    c.input.manual_dir, c.input.data_dir = a.manual_dir, a.data_dir
    log.info('no MLM checkpoint in %s: pretraining (%d steps)', a.mlm, c.train.steps)
    train.train(c, a.mlm)
  dapt = os.path.join(a.workdir, 'dapt')
  if has(a.minilm) and not has(dapt) and any(STRATEGIES[s][0] == 'dapt' for s in a.strategies if s in STRATEGIES):
    c = dapt_config(a)
    log.info('domain-adaptive MLM of MiniLM on the training sentences (%d steps)', c.train.steps)
    train.train(c, dapt)


def dapt_config(a: argparse.Namespace) -> Any:
  """MiniLM, continued masked-LM on the TRAINING sentences of sentiment_sentences/both (never the test split)."""
  from jaxtransfer import config as config_lib
  c = config_lib.base()
  c.data, c.objective = DATA, 'mlm'
  c.input.manual_dir, c.input.data_dir = a.manual_dir, a.data_dir
  c.input.train_split, c.input.eval_split = 'train', VAL_EVAL
  c.model.backbone, c.transfer.init_from, c.trainable = None, a.minilm, 'all'
  c.text.max_len, c.text.buckets = 64, (32, 64)
  # all-MiniLM-L6-v2 ships no MLM head (sentence-transformers dropped it): a fresh one trains beside the encoder,
  # hence 1e-4 rather than the 5e-5 of BERT-style continued pretraining (at 5e-5 its loss was 8.8 after 50 steps)
  c.optim.lr, c.optim.warmup_steps = 1e-4, 20
  c.train.steps = 10 if a.quick else a.dapt_steps
  c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 32, c.train.steps, 50
  return c


def available(a: argparse.Namespace) -> list[str]:
  """The strategies whose source exists (MiniLM needs its imported checkpoint)."""
  out = []
  for s in a.strategies:
    if s != TFIDF and STRATEGIES[s][0] in ('minilm', 'dapt') and not os.path.isdir(a.minilm):
      log.warning('%s skipped: no MiniLM checkpoint in %s (jaxtransfer import-weights --variant=minilm-l6)', s,
                  a.minilm)
      continue
    out.append(s)
  return out


def nearest_tuned(n: int, tuned: tuple[int, ...]) -> int:
  """The tuned budget closest to budget `n` on a log scale (0 = all labels)."""
  return min(tuned, key=lambda t: (abs(math.log(_col(t)) - math.log(_col(n))), _col(t)))


def stage_tune(a: argparse.Namespace, strategies: list[str]) -> dict[str, dict[int, float]]:
  """{strategy: {budget: lr}}: each strategy over its own lr grid on the validation split at the budgets of
  --tune_budgets (cached runs); every other budget takes the nearest tuned budget's lr, and a strategy in
  LR_OF the lrs of the one it names (tuned here even if not asked for)."""
  from experiments import tune_lr

  def validation(c):
    c.input.train_split, c.input.eval_split, c.input.eval_data = VAL_TRAIN, VAL_EVAL, ''

  tuned = {}
  for s in dict.fromkeys(LR_OF.get(s, s) for s in strategies if s != TFIDF):
    lrs = STRATEGIES[s][3][1:2] if a.quick else STRATEGIES[s][3]
    make = lambda strategy, n, seed, lr: make_config(strategy, n, seed, lr, a=a)
    out = tune_lr.tune(make, [s], list(a.tune_budgets), lrs, a.tune_seeds, os.path.join(a.workdir, 'tune', s),
                       workers=a.workers, validation=validation, title=f'Learning rate of {s} ({VAL_EVAL})',
                       caption=f'Validation accuracy (%), subsets of {DATA} {VAL_TRAIN}',
                       col_label=lambda n: f'{n} labels')
    tuned[s] = out['best_lr'][s]
  return {s: {n: tuned[LR_OF.get(s, s)][nearest_tuned(n, a.tune_budgets)] for n in a.budgets}
          for s in strategies if s != TFIDF}


def grid_runs(a: argparse.Namespace, strategies: list[str], lrs: dict[str, dict[int, float]]) -> list[Any]:
  from jaxtransfer import sweep
  runs = []
  for s in strategies:
    for n in a.budgets:
      for seed in range(a.seeds):
        if s == TFIDF:
          c, fn = tfidf_config(n, seed, a), tfidf_run
        else:
          c, fn = make_config(s, n, seed, lrs[s][n], a=a), sweep.train_run
        runs.append(sweep.Run(s, _col(n), seed, c, os.path.join(a.workdir, 'grid', s.replace(' ', '_'), str(_col(n)),
                                                                 f'seed_{seed}'), fn=fn))
  return runs


def shift_runs(a: argparse.Namespace, strategies: list[str], lrs: dict[str, dict[int, float]]) -> list[Any]:
  """Train on all of one domain, test on the other's test split (each at its all-labels lr)."""
  from jaxtransfer import sweep
  runs = []
  for s in [s for s in SHIFT if s in strategies]:
    for src, dst in (DOMAINS, DOMAINS[::-1]):
      for seed in range(a.seeds):
        c = tfidf_config(0, seed, a) if s == TFIDF else make_config(s, 0, seed, lrs[s][a.budgets[-1]], a=a)
        c.data, c.input.eval_data = f'sentiment_sentences/{src}', f'sentiment_sentences/{dst}'
        runs.append(sweep.Run(s, f'{src} → {dst}', seed, c,
                              os.path.join(a.workdir, 'shift', s.replace(' ', '_'), f'{src}_to_{dst}', f'seed_{seed}'),
                              fn=tfidf_run if s == TFIDF else sweep.train_run))
  return runs


def curve_steps(mlm: str) -> list[int]:
  """The kept checkpoint steps of the MLM pretraining in workdir `mlm`, increasing."""
  from jaxtransfer import checkpoint
  return sorted(checkpoint.manager(os.path.join(mlm, 'checkpoints')).all_steps())


def curve_runs(a: argparse.Namespace, strategies: list[str], lrs: dict[str, dict[int, float]]) -> list[Any]:
  """'mlm full' at CURVE_BUDGET labels from each kept MLM checkpoint (the last one's tuned lr), every seed."""
  from jaxtransfer import sweep
  if CURVE not in strategies or CURVE_BUDGET not in a.budgets:
    return []
  runs = []
  for step in curve_steps(a.mlm):
    for seed in range(a.seeds):
      c = make_config(CURVE, CURVE_BUDGET, seed, lrs[CURVE][CURVE_BUDGET], a=a)
      c.transfer.init_from = os.path.join(a.mlm, 'checkpoints', str(step))
      runs.append(sweep.Run(CURVE, step, seed, c, os.path.join(a.workdir, 'curve', f'step_{step}', f'seed_{seed}')))
  return runs


def curve_summary(grid: list[Any], curve: list[Any]) -> dict[str, dict[str, Any]]:
  """{'<CURVE> at <budget> labels': {step: stats}} with step 0 = the scratch twin's grid cells at that budget."""
  import dataclasses

  from jaxtransfer import sweep
  scratch = [dataclasses.replace(r, row=CURVE, col=0) for r in grid if r.row == 'scratch' and r.col == CURVE_BUDGET]
  return sweep.summarize({f'{CURVE} at {CURVE_BUDGET} labels': sweep.values([*scratch, *curve], 'accuracy')[CURVE]})


def twin_gains(runs: list[Any]) -> dict[str, dict[str, dict[str, Any]]]:
  """{'<mlm row> − scratch': {column: stats}}: the own-MLM rows minus their from-scratch twin, seed by seed,
  per column of `runs` (a budget of the grid, or a source → target pair of the domain shift).

  Seed s of both draws the same labelled subset (input.subset_seed) and the same fine-tuning seed, so the
  paired difference removes the subset's share of the spread, which dominates at 100–300 labels; its
  mean is the gain, its std says how much of it one seed can show. A seed without a result on either
  side (unfinished, or no metrics) is left out of that column's pairs."""
  from jaxtransfer import sweep
  acc = {(r.row, r.col, r.seed): float(r.metrics['accuracy']) for r in runs if r.metrics is not None}
  gains: dict[str, dict[Any, list[float]]] = {}
  for (row, n, seed), value in acc.items():   # in the order of `runs`: rows as the stage lists them
    if STRATEGIES.get(row, ('',))[0] == 'mlm' and (TWIN, n, seed) in acc:
      gains.setdefault(f'{row} − {TWIN}', {}).setdefault(n, []).append(value - acc[(TWIN, n, seed)])
  return sweep.summarize(gains)


def pair_lrs(lrs: dict[str, dict[int, float]], rows: list[str]) -> str:
  """A note under the paired table: the lr each side fine-tuned at, per budget. Each side takes its own tuned lr,
  so the difference includes the lr choice — a twin tuned to another lr than the MLM row's (the tuning's tie
  rule can move it) shows up here before anyone reads the difference as the encoder's."""
  rows = [r for r in rows if r in lrs]
  if len(rows) < 2:
    return ''
  budgets = sorted(lrs[rows[0]], key=_col)
  per = '; '.join(f'{_col(n)} labels: ' + ', '.join(f'{r} {lrs[r][n]:g}' for r in rows if n in lrs[r])
                  for n in budgets)
  return f'\n\nLearning rates of the pairs (each side its own tuned lr): {per}.'


def report(a: argparse.Namespace, grid: list[Any], shift: list[Any], lrs: dict[str, dict[int, float]],
           curve: list[Any] = ()) -> str:
  from jaxtransfer import sweep
  acc = sweep.summarize(sweep.values(grid, 'accuracy'))
  results: dict[str, Any] = {'accuracy': acc, 'best_lr': {s: {str(_col(n)): lr for n, lr in b.items()} for s, b in lrs.items()},
                             'steps': a.steps, 'minilm_steps': a.minilm_steps,
                             'tune_budgets': [_col(n) for n in a.tune_budgets], 'seeds': a.seeds, 'tune_seeds': list(a.tune_seeds)}
  notes = [f'Budget: {a.steps} Adam steps of 32 per fine-tune ({a.minilm_steps} when MiniLM itself trains; head-only '
           f'cells train on cached features). "{ALL}" = all training sentences. Learning rates tuned on the validation '
           f"split at {', '.join(str(_col(n)) for n in a.tune_budgets)} labels (results.json 'best_lr'; other budgets "
           "take the nearest tuned budget's lr" + ''.join(f", '{s}' the lr of '{t}'" for s, t in LR_OF.items())
           + "); TF-IDF's C and min_df by 5-fold CV on the training labels."]
  gains = twin_gains(grid)
  if gains:
    results['mlm_gain'] = gains
    notes.append('## Own MLM encoder − its from-scratch twin, paired by seed\n\nThe same labelled subset and seed '
                 'on both sides; mean ± std (ddof=1) of the per-seed difference in accuracy points.\n\n'
                 + sweep.table(gains, row_header='difference') + pair_lrs(lrs, [TWIN, *(s for s in lrs if STRATEGIES.get(s, ('',))[0] == 'mlm')]))
  if shift:
    sh = sweep.summarize(sweep.values(shift, 'accuracy'))
    results['domain_shift'] = sh
    notes.append('## Domain shift: train on all of one domain, test on the other\n\n'
                 + sweep.table(sh, row_header='strategy', col_label=str))
    shift_gains = twin_gains(shift)
    if shift_gains:
      results['mlm_gain_domain_shift'] = shift_gains
      notes.append('## Own MLM encoder − its from-scratch twin under domain shift, paired by seed\n\n'
                   'Both trained on the same source-domain sentences with the same seed, tested on the other '
                   'domain; mean ± std (ddof=1) of the per-seed difference in accuracy points.\n\n'
                   + sweep.table(shift_gains, row_header='difference', col_label=str))
  if curve:
    cs = curve_summary(grid, curve)
    results['mlm_curve'] = cs
    sweep.plot(os.path.join(a.workdir, 'curve.png'), cs, xlabel='MLM pretraining steps (0 = from scratch)',
               ylabel='test accuracy (%)', title=f'{CURVE} at {CURVE_BUDGET} labels vs pretraining steps')
    notes.append(f'## Gain against MLM pretraining steps ({CURVE}, {CURVE_BUDGET} labels; curve.png)\n\nEach kept '
                 f'checkpoint of {a.mlm} fine-tuned at the lr tuned for the last one; step 0 = scratch at its own '
                 'tuned lr.\n\n' + sweep.table(cs, row_header='strategy', col_label=lambda k: f'step {k}'))
  table = sweep.write_results(
      a.workdir, results, title='Text transfer: sentence sentiment from 100–1600 labels',
      caption=f'Test accuracy (%) on the 400 test sentences of {DATA}, mean ± std (ddof=1) over {{n}} seed(s).',
      col_label=lambda n: f'{n}', xlabel='labelled training sentences', ylabel='test accuracy (%)',
      plot_title='text transfer vs labels', xscale='log', notes='\n\n'.join(notes))
  print(table, flush=True)
  return table


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default='runs/text_transfer')
  p.add_argument('--manual_dir', default='../shared/data')
  p.add_argument('--data_dir', default='')
  p.add_argument('--mlm', default='runs/mlm_wikitext', help='MLM pretraining workdir (trained first if missing)')
  p.add_argument('--minilm', default='runs/minilm', help='imported MiniLM (jaxtransfer import-weights)')
  p.add_argument('--seeds', type=int, default=3)
  p.add_argument('--tune_seeds', default=','.join(map(str, TUNE_SEEDS)))
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--minilm_steps', type=int, default=100, help='steps of the fine-tunes where MiniLM itself trains')
  p.add_argument('--dapt_steps', type=int, default=300, help='continued MLM steps of MiniLM (batch 32)')
  p.add_argument('--budgets', default=','.join(map(str, BUDGETS)))
  p.add_argument('--tune_budgets', default='', help='budgets the lrs are tuned at (default: --budgets)')
  p.add_argument('--strategies', default=','.join(GRID))
  p.add_argument('--workers', type=int, default=1)
  p.add_argument('--stage', default='all', choices=('pretrain', 'tune', 'grid', 'shift', 'curve', 'report',
                                                      'all'))
  p.add_argument('--quick', action='store_true')
  a = p.parse_args(argv)
  if a.quick:
    a.steps, a.minilm_steps, a.seeds, a.tune_seeds, a.budgets = 10, 10, 2, '100', '100,300'
    a.workdir = a.workdir if a.workdir != 'runs/text_transfer' else 'runs/text_transfer_quick'
    a.mlm = a.mlm if a.mlm != 'runs/mlm_wikitext' else os.path.join(a.workdir, 'mlm_quick')
  a.tune_seeds = tuple(int(s) for s in a.tune_seeds.split(','))
  a.budgets = tuple(int(n) for n in a.budgets.split(','))
  a.tune_budgets = tuple(int(n) for n in a.tune_budgets.split(',')) if a.tune_budgets else a.budgets
  a.strategies = tuple(s.strip() for s in a.strategies.split(','))
  unknown = [s for s in a.strategies if s not in GRID]
  if unknown:
    p.error(f'--strategies: unknown {unknown}; known: {", ".join(GRID)}')
  if set(a.tune_seeds) & set(range(a.seeds)):
    p.error(f'--tune_seeds {a.tune_seeds} overlap the reporting seeds 0…{a.seeds - 1}')
  if any(n % 2 or n > ALL for n in (*a.budgets, *a.tune_budgets)):
    p.error(f'--budgets, --tune_budgets: even numbers of labels up to {ALL} (0 = all), got '
            f'{a.budgets}, {a.tune_budgets}')
  return a


def main(argv=None) -> int:
  a = parse(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
  for noisy in ('absl', 'orbax', 'jax._src'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from jaxtransfer import runtime, sweep
  runtime.configure()
  os.makedirs(a.workdir, exist_ok=True)
  t0 = time.time()
  ensure_pretrained(a)
  if a.stage == 'pretrain':
    return 0
  strategies = available(a)
  lrs = stage_tune(a, strategies)
  if a.stage == 'tune':
    return 0
  grid, shift, curve = grid_runs(a, strategies, lrs), shift_runs(a, strategies, lrs), curve_runs(a, strategies, lrs)
  done = lambda i, n, r: log.info('[%d/%d] %s %s seed %d: %.4f', i + 1, n, r.row, r.col, r.seed, r.metrics['accuracy'])
  if a.stage in ('grid', 'all'):
    sweep.run(grid, a.workers, on_result=done)
  if a.stage in ('shift', 'all') and not a.quick:
    sweep.run(shift, a.workers, on_result=done)
  if a.stage in ('curve', 'all'):
    sweep.run(curve, a.workers, on_result=lambda i, n, r: log.info('[%d/%d] %s from MLM step %d seed %d: %.4f', i + 1, n,
                                                                   r.row, r.col, r.seed, r.metrics['accuracy']))
  finished = lambda runs: [r for r in map(sweep.cached, runs) if r is not None]
  report(a, finished(grid), finished(shift), lrs, finished(curve))
  log.info('text_transfer: done in %.0f s', time.time() - t0)
  return 0


if __name__ == '__main__':
  sys.exit(main())
