"""Experiment 7's target lines: the best pretrained row per column against scratch, met / NOT met."""

from experiments import self_supervised_digits as ssd

COLS = [f'{t} @{k}' for t in ssd.TESTS for k in (1, 10)]


def _acc(base: float, **cols: float) -> dict[str, list[float]]:
  return {c: [cols.get(c.replace(' @', '_'), base)] * 2 for c in COLS}


def test_targets_pick_the_best_pretrained_row_and_compare_with_scratch():
  acc = {'none': _acc(0.9),                                   # random features: never the "best pretrained"
         'none lp-ft': _acc(0.30, usps_10=0.60),                # scratch
         'glyphs': _acc(0.55, real_digits_10=0.96, usps_10=0.64),
         'simclr lp-ft': _acc(0.70, real_digits_10=0.94, usps_10=0.66, mnist_1=0.59)}
  lines = ssd.targets(acc, [1, 10])
  assert lines[1] == '- real_digits @10 ≥ 95 %: glyphs 96.0 % — met'
  assert lines[2] == '- usps @10 ≥ scratch + 5: simclr lp-ft 66.0 vs scratch 60.0 (+6.0) — met'
  assert lines[3] == '- real_digits @1 ≥ scratch + 30: simclr lp-ft 70.0 vs scratch 30.0 (+40.0) — met'
  assert lines[5] == '- mnist @1 ≥ scratch + 30: simclr lp-ft 59.0 vs scratch 30.0 (+29.0) — NOT met'


def test_targets_without_scratch_report_only_the_absolute_target():
  lines = ssd.targets({'glyphs': _acc(0.9)}, [1, 10])
  assert lines[1:] == ['- real_digits @10 ≥ 95 %: glyphs 90.0 % — NOT met']
  assert ssd.targets({'none': _acc(0.9)}, [10]) == []


def test_spearman_is_the_rank_correlation():
  assert ssd.spearman([1.0, 2.0, 3.0], [10.0, 30.0, 20.0]) == 0.5
  assert ssd.spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == -1.0
