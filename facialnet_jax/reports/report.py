"""The cross-validation report: report.md laid out like the paper's Table 5 (per-fold rows,
mean ± std, the majority-class baseline, quoted published rows marked as such)."""

import dataclasses
import math
from typing import Sequence

import numpy as np

# The three numbers of the report, as EvalMetrics names them.
REPORTED_METRICS = (('gender_accuracy', 'Gender accuracy'), ('age_accuracy', 'Age exact'),
                    ('age_one_off_accuracy', 'Age 1-off'))


@dataclasses.dataclass(frozen=True)
class QuotedResult:
  """A published result, quoted (not reproduced here); percentages, None where not given."""
  method: str
  gender: str | None
  age: str | None
  age_one_off: str | None
  note: str


QUOTED_RESULTS = (
    QuotedResult('Levi & Hassner 2015, CNN (quoted)', '86.8 ± 1.4', '50.7 ± 5.1', '84.7 ± 2.2',
                 'standard 5-fold protocol, mean ± std over folds, their over-sampled test crops'),
    QuotedResult('FacialNet paper, without augmentation (quoted)', '88.6', '68.1', None,
                 'the paper\'s claim; protocol and split not stated'),
    QuotedResult('FacialNet paper, with augmentation (quoted)', '94.2', '72.8', None,
                 'the paper\'s claim; its text calls this set a "verification set"; '
                 'protocol not stated'),
)


@dataclasses.dataclass(frozen=True)
class FoldResult:
  """One fold's test evaluation (fractions, not percentages)."""
  fold: int
  num_examples: int
  num_gender_labels: int
  num_age_labels: int
  step: int
  epoch: int
  metrics: dict[str, float | None]
  # The same metrics for always answering the test fold's most common class: the level a
  # model that learned nothing about faces can reach.
  majority: dict[str, float | None]


def majority_class_metrics(confusion: dict[str, np.ndarray]) -> dict[str, float | None]:
  """Accuracies of always answering the most common true class ({'gender', 'age'} matrices)."""
  result = {}
  for name, head, tolerance in (('gender_accuracy', 'gender', 0), ('age_accuracy', 'age', 0),
                                ('age_one_off_accuracy', 'age', 1)):
    support = np.asarray(confusion[head]).sum(axis=1)
    if not support.sum():
      result[name] = None
      continue
    common = int(support.argmax())
    near = support[max(0, common - tolerance):common + tolerance + 1].sum()
    result[name] = float(near / support.sum())
  return result


def format_percent(value: float | None) -> str:
  return '—' if value is None or (isinstance(value, float) and math.isnan(value)) else (
      f'{100 * value:.1f}')


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (n - 1; 0 for a single value)."""
  array = np.asarray(values, float)
  return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarize_folds(folds: Sequence[FoldResult]) -> dict[str, dict[str, float]]:
  """Mean and std over folds of each reported metric (folds without that label left out)."""
  summary = {}
  for name, _ in REPORTED_METRICS:
    values = [f.metrics[name] for f in folds
              if f.metrics.get(name) is not None and not math.isnan(f.metrics[name])]
    if values:
      mean, std = mean_and_std(values)
      summary[name] = {'mean': mean, 'std': std, 'num_folds': len(values)}
  return summary


def cross_validation_markdown(folds: Sequence[FoldResult], *, title: str, setup_lines: Sequence[str],
                              num_folds_expected: int, pictures: Sequence[tuple[str, str]]) -> str:
  """report.md: the Table 5 comparison (quoted rows marked), per-fold rows, mean ± std, pictures."""
  summary = summarize_folds(folds)
  lines = [f'# {title}', '']
  lines += [f'- {line}' for line in setup_lines]
  if len(folds) < num_folds_expected:
    lines += ['', f'**Only {len(folds)} of {num_folds_expected} folds are done: this is not yet '
              'the full protocol, and the mean ± std below is over the folds done.**']
  lines += ['', '## Comparison (layout of the paper\'s Table 5)', '',
            '| Method | Gender accuracy (%) | Age accuracy, exact (%) | Age accuracy, 1-off (%) |',
            '|---|---|---|---|']
  for quoted in QUOTED_RESULTS:
    lines.append(f'| {quoted.method} | {quoted.gender or "—"} | {quoted.age or "—"} | '
                 f'{quoted.age_one_off or "—"} |')
  for fold in folds:
    lines.append(f'| This code, test fold {fold.fold} | ' + ' | '.join(
        format_percent(fold.metrics.get(name)) for name, _ in REPORTED_METRICS) + ' |')
  cells = []
  for name, _ in REPORTED_METRICS:
    cells.append(f'**{100 * summary[name]["mean"]:.1f} ± {100 * summary[name]["std"]:.1f}**'
                 if name in summary else '—')
  lines.append(f'| **This code, mean ± std over {len(folds)} folds** | ' + ' | '.join(cells) + ' |')
  majority = summarize_folds([dataclasses.replace(f, metrics=f.majority) for f in folds])
  lines.append('| *For scale: always the test fold\'s most common class* | ' + ' | '.join(
      f'*{100 * majority[name]["mean"]:.1f}*' if name in majority else '—'
      for name, _ in REPORTED_METRICS) + ' |')
  lines += ['', 'Rows marked *quoted* are copied from the publications, not reproduced here:']
  lines += [f'- {q.method}: {q.note}.' for q in QUOTED_RESULTS]
  lines += ['', 'Our std is the sample standard deviation over folds (n − 1).', '',
            '## Per fold', '',
            '| Test fold | Test images | with gender | with age | Checkpoint step (epoch) | '
            'Gender (%) | Age exact (%) | Age 1-off (%) |',
            '|---|---|---|---|---|---|---|---|']
  for fold in folds:
    lines.append(f'| {fold.fold} | {fold.num_examples} | {fold.num_gender_labels} | '
                 f'{fold.num_age_labels} | {fold.step} ({fold.epoch}) | ' + ' | '.join(
                     format_percent(fold.metrics.get(name)) for name, _ in REPORTED_METRICS) + ' |')
  if pictures:
    lines += ['', '## Pictures', '']
    for caption, file_name in pictures:
      lines += [f'{caption}:', '', f'![{caption}]({file_name})', '']
  return '\n'.join(lines).rstrip() + '\n'
