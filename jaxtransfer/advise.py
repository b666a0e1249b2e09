"""`jaxtransfer advise`: score candidate checkpoints (and layers) on B's data, recommend a strategy.

    jaxtransfer advise --checkpoints=runs/demo/pretrain,runs/other --layers=0,1 --data=real_digits --per_class=10

For each candidate (checkpoint × `drop_last` layer cut) the backbone's features of B's labelled training
examples (the k-per-class subset you would fine-tune on) are computed once (`features.FeatureCache`),
then LogME and H-score (and LEEP from the source head, for the uncut backbone) are printed, next to the
same scores of the same architecture at random initialisation: a checkpoint whose LogME is not clearly
above its random-init twin carries no transferable features for B.

The recommendation is the seed notes' rule made quantitative, calibrated on
experiments/transfer_vs_data_size.py (glyphs → real digits, 150 steps, 3 seeds; BUILD_NOTES.md), and it
acts on its own evidence: the LogME gain over random init is compared with its own noise — the spread of
LogME over NOISE_ROUNDS random halves of B's labelled examples, for the best candidate and for the twin,
combined (`logme_noise`): a gain below max(NO_GAIN, NOISE_SIGMAS × that noise) is no evidence of transfer.
  gain within noise (or < NO_GAIN, 0.05)  → the source does not transfer: scratch, at every label budget
                           (with many unlabelled examples of B: pretrain on them without labels instead);
  ≤ 50 labels per class  → lp-ft: a linear probe, then everything at a low lr (best trained strategy at 1,
                           5, 10 and 50/class: 69.4 / 90.7 / 92.8 / 95.4 % vs head-only 65.7 / 88.0 /
                           92.1 / 94.9); a ridge probe on cached features is the seconds-long check;
  more, weak source (LogME gain < LARGE_B_GAIN, 0.2) → scratch: a 1000-glyph A (gain 0.16) fine-tuned
                           on all of B loses to scratch by 2.3–2.4 points, the 50k-glyph A (gain 0.28) ties;
  more                   → drop the last block, attach a 2-layer head, train everything (drop1+mlp2:
                           96.4 / 97.3 % at 100 / 400 per class vs full 95.1 / 96.1, scratch 95.1 / 96.0).
"""

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtransfer import checkpoint, features, transferability
from jaxtransfer.data import catalog, fewshot

log = logging.getLogger('jaxtransfer')

NO_GAIN = 0.05          # LogME (per example, nats) gain over the random-init twin below which transfer is moot
NOISE_ROUNDS = 10       # random halves of B's labelled examples for the LogME noise
NOISE_SIGMAS = 2.0      # a gain below this many standard deviations of its noise is within noise
MANY_UNLABELLED = 1000  # B examples (and ≥ 10× the labelled ones) for which self-supervised pretraining is advised
LARGE_B_GAIN = 0.2      # with more than MEDIUM labels per class, a source needs this much gain to beat scratch
FEW, MEDIUM = 10, 50    # labels per class: LP-FT up to MEDIUM (few labels: collect more when nothing transfers)


@dataclasses.dataclass(frozen=True)
class Candidate:
  source: str                      # a checkpoint (workdir, checkpoints/ dir or step dir)
  drop_last: int = 0               # layer: cut the last k backbone blocks
  random_seed: int | None = None   # the same architecture, randomly initialised (baseline)

  @property
  def name(self) -> str:
    base = f'{self.source}' + (f' −{self.drop_last} blocks' if self.drop_last else '')
    return base + (f' (random init {self.random_seed})' if self.random_seed is not None else '')


def source_probs(source: str, x: np.ndarray) -> np.ndarray | None:
  """The source model's class probabilities from backbone features `x` (its own head), or None."""
  import jax
  import jax.numpy as jnp
  from jaxtransfer.models import model as model_lib
  mngr, step = checkpoint.open_for_reading(source)
  spec = checkpoint.read_meta(mngr, step)['model_spec']
  if spec['head'].get('name') not in ('linear', 'mlp'):
    return None
  head = model_lib.build(spec).head
  abstract = jax.eval_shape(lambda: head.init(jax.random.key(0), jnp.zeros((1, x.shape[1]))))['params']
  abstract = {'head': jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)}
  params = checkpoint.restore_subtree(mngr, step, 'params', abstract)['head']
  logits = head.apply({'params': params}, jnp.asarray(x))
  return np.asarray(jax.nn.softmax(logits, -1))


def score_candidates(candidates: Sequence[Candidate], data: str, *, per_class: int = 0, seed: int = 0,
                     split: str = 'train', eval_split: str | None = 'test', data_dir: str | None = None,
                     manual_dir: str | None = None, cache_dir: str | None = None) -> list[dict[str, Any]]:
  """One row per candidate: logme, hscore, leep (None when not applicable), probe_accuracy (ridge on the
  k-per-class subset, measured on `eval_split`; None without it), n, per_class."""
  cache = features.FeatureCache(cache_dir, data_dir=data_dir, manual_dir=manual_dir)
  rows = []
  for cand in candidates:
    if cand.random_seed is None:
      bb = cache.backbone(cand.source, cand.drop_last)
    else:
      bb = features.load_backbone(cand.source, drop_last=cand.drop_last, random_seed=cand.random_seed,
                                  input_shape=catalog.info(data, data_dir=data_dir, manual_dir=manual_dir).image_shape)
    tr = cache.get(bb, data, split)
    idx = fewshot.k_per_class_indices(tr.y, per_class or None, seed)
    x, y = tr.x[idx], tr.y[idx]
    row = {'name': cand.name, 'source': cand.source, 'drop_last': cand.drop_last, 'random_init': cand.random_seed is not None,
           'n': int(len(y)), 'per_class': per_class or int(round(len(y) / (y.max() + 1))), 'dim': int(x.shape[1]),
           'logme': transferability.logme(x, y), 'logme_std': logme_noise(x, y, seed), 'unlabelled': int(len(tr.y)),
           'hscore': transferability.hscore(x, y), 'leep': None, 'probe_accuracy': None}
    if cand.drop_last == 0 and cand.random_seed is None:
      probs = source_probs(cand.source, x)
      if probs is not None:
        row['leep'] = transferability.leep(probs, y)
    if eval_split:
      te = cache.get(bb, data, eval_split)
      row['probe_accuracy'] = features.ridge_probe(x, y, te.x, te.y)['accuracy']
    rows.append(row)
    log.info('advise: %s: LogME %.3f H-score %.2f', cand.name, row['logme'], row['hscore'])
  return rows


def logme_noise(x: np.ndarray, y: np.ndarray, seed: int = 0, rounds: int = NOISE_ROUNDS) -> float:
  """The standard deviation (ddof=1) of LogME over `rounds` random halves of (x, y): how much the score of these
  features moves with the choice of labelled examples (0 when there are too few to halve)."""
  if len(y) < 4:
    return 0.0
  rng = np.random.default_rng([seed, 0x4C6F67])
  scores = [transferability.logme(x[idx], y[idx])
            for idx in (np.sort(rng.permutation(len(y))[:len(y) // 2]) for _ in range(rounds))]
  return float(np.std(scores, ddof=1))


def within_noise(gain: float, noise: float) -> bool:
  """Whether a LogME gain over the random-init twin is no evidence of transfer (module docstring)."""
  return gain < max(NO_GAIN, NOISE_SIGMAS * noise)


def recommend(per_class: float, logme_best: float, logme_random: float | None, noise: float = 0.0,
              unlabelled: int = 0, labelled: int = 0) -> str:
  """The strategy for B's labels per class and the best candidate's LogME (module docstring). `noise`: the
  combined standard deviation of the best and the twin's LogME (`logme_noise`); `unlabelled` / `labelled`: B's
  examples in all and those with labels used, for the advice when nothing transfers."""
  if logme_random is not None and within_noise(logme_best - logme_random, noise):
    gain = logme_best - logme_random
    why = (f'the best LogME is only {gain:+.3f} over random init' + (
        f', within noise ({NOISE_SIGMAS:g} × {noise:.3f}, its spread over random halves of B)'
        if NOISE_SIGMAS * noise > NO_GAIN else ''))
    more = ''
    if unlabelled >= max(MANY_UNLABELLED, 10 * labelled):
      more = (f'; B has {unlabelled} examples: self-supervised pretraining on them without labels is the '
              'alternative to try')
    elif per_class <= FEW:
      more = ' (few labels: collect more, or find a closer source)'
    return f'scratch: {why} — the source features do not transfer to B, at any label budget{more}'

  gain = None if logme_random is None else logme_best - logme_random
  if per_class <= MEDIUM:
    return (f'lp-ft: {per_class:g} labels per class — a linear probe (trainable=head, cached features; '
            'features.ridge_probe for a check in seconds), then everything at a low lr (optim.lp_steps)')
  if gain is not None and gain < LARGE_B_GAIN:
    return (f'scratch: {per_class:g} labels per class and a LogME gain of only {gain:+.3f} over random init — '
            'with this much data a weakly transferable source loses to training from scratch')
  return (f'drop1+mlp2: {per_class:g} labels per class — drop the last backbone block, attach a 2-layer head, '
          'fine-tune everything (transfer.drop_last_blocks=1, model.head=mlp; full fine-tuning is the runner-up)')


def advise(sources: Sequence[str], data: str, *, layers: Sequence[int] = (0,), per_class: int = 0, seed: int = 0,
           data_dir: str | None = None, manual_dir: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
  """Score every checkpoint × layer (and the first checkpoint's architecture at random init); recommend."""
  cands = [Candidate(s, d) for s in sources for d in layers]
  cands.append(Candidate(sources[0], 0, random_seed=0))
  rows = score_candidates(cands, data, per_class=per_class, seed=seed, eval_split=None, data_dir=data_dir,
                          manual_dir=manual_dir, cache_dir=cache_dir)
  real = [r for r in rows if not r['random_init']]
  best = max(real, key=lambda r: r['logme'])
  rand = next(r for r in rows if r['random_init'])
  noise = float(np.hypot(best['logme_std'], rand['logme_std']))
  return {'candidates': rows, 'best': best['name'], 'random_init_logme': rand['logme'], 'gain_noise': noise,
          'recommendation': recommend(best['per_class'], best['logme'], rand['logme'], noise, best['unlabelled'],
                                              best['n'])}


def format_report(result: dict[str, Any]) -> str:
  lines = [f'{"candidate":60s} {"dim":>6s} {"LogME":>8s} {"± (halves)":>10s} {"H-score":>8s} {"LEEP":>8s}']
  for r in result['candidates']:
    leep = '–' if r['leep'] is None else f'{r["leep"]:.3f}'
    lines.append(f'{r["name"][-60:]:60s} {r["dim"]:6d} {r["logme"]:8.3f} {r["logme_std"]:10.3f} {r["hscore"]:8.2f} '
                 f'{leep:>8s}')
  lines.append(f'best: {result["best"]}  (B: {result["candidates"][0]["n"]} labelled examples)')
  lines.append(f'recommended: {result["recommendation"]}')
  return '\n'.join(lines)
