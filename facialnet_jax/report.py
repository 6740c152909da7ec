"""Reports of evaluations: confusion matrices (CSV, PNG), training curves read from a run's
TensorBoard event files, and the cross-validation report.md laid out like the paper's Table 5."""

import csv
import dataclasses
import glob
import math
import os
from typing import Sequence

import matplotlib
matplotlib.use('Agg')  # Files only: no display is needed, or present on servers.
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position


HEAD_TITLES = {'gender': 'Gender', 'age': 'Age group'}
# The three numbers of the report, as EvalMetrics names them.
REPORTED_METRICS = (('gender_accuracy', 'Gender accuracy'), ('age_accuracy', 'Age exact'),
                    ('age_one_off_accuracy', 'Age 1-off'))


# ------------------------------------------------------------------------------------------
# Confusion matrices and per-class numbers.


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts [true, predicted] over the examples whose label is known (label -1 is left out)."""
  known = labels >= 0
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels[known], predictions[known]), 1)
  return matrix


def per_class_precision_recall(matrix: np.ndarray, class_names: Sequence[str]) -> list[dict]:
  """Precision, recall and support per class; None where a denominator is zero."""
  rows = []
  for index, name in enumerate(class_names):
    predicted = int(matrix[:, index].sum())
    support = int(matrix[index].sum())
    correct = int(matrix[index, index])
    rows.append({'class': name, 'support': support, 'predicted': predicted,
                 'precision': correct / predicted if predicted else None,
                 'recall': correct / support if support else None})
  return rows


def write_confusion_csv(matrix: np.ndarray, class_names: Sequence[str], path: str) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['true \\ predicted', *class_names])
    for name, row in zip(class_names, matrix):
      writer.writerow([name, *(int(v) for v in row)])


def read_confusion_csv(path: str) -> np.ndarray:
  with open(path, newline='') as f:
    rows = list(csv.reader(f))[1:]
  return np.array([[int(v) for v in row[1:]] for row in rows], np.int64)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], title: str,
                          path: str) -> None:
  """Colours show each true class's share (rows sum to 100%); cells give the counts."""
  totals = matrix.sum(axis=1, keepdims=True)
  shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
  side = 2.2 + 0.65 * len(class_names)
  figure, axes = plt.subplots(figsize=(side + 1.2, side))
  image = axes.imshow(shares * 100, cmap='Blues', vmin=0, vmax=100)
  figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label='% of the true class')
  for (row, column), count in np.ndenumerate(matrix):
    axes.text(column, row, str(count), ha='center', va='center', fontsize=8,
              color='white' if shares[row, column] > 0.6 else 'black')
  axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha='right')
  axes.set_yticks(range(len(class_names)), class_names)
  axes.set_xlabel('predicted')
  axes.set_ylabel('true')
  axes.set_title(title, fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


# ------------------------------------------------------------------------------------------
# Training curves from TensorBoard event files.


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """Every scalar a run wrote (tag → [(step, value)] sorted by step; when a resumed run wrote a
  step again, its last value)."""
  # Imported here: the event reader imports TensorFlow (seconds), which other reports need not.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
  series = {}
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    accumulator = event_accumulator.EventAccumulator(
        path, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    for tag in tags.get('tensors', []):
      values = series.setdefault(tag, {})
      for event in accumulator.Tensors(tag):
        values[event.step] = float(tensor_util.make_ndarray(event.tensor_proto))
    for tag in tags.get('scalars', []):
      values = series.setdefault(tag, {})
      for event in accumulator.Scalars(tag):
        values[event.step] = float(event.value)
  return {tag: sorted(values.items()) for tag, values in series.items()}


@dataclasses.dataclass(frozen=True)
class Curves:
  """One run's scalars, with the step → epoch scale."""
  label: str
  scalars: dict[str, list[tuple[int, float]]]
  steps_per_epoch: int


_CURVE_PANELS = (
    ('Loss', (('train/loss', 'train'),)),
    ('Gender accuracy', (('train/gender_accuracy', 'train'),
                         ('validation/gender_accuracy', 'validation'))),
    ('Age accuracy (exact)', (('train/age_accuracy', 'train'),
                              ('validation/age_accuracy', 'validation'))),
    ('Age accuracy (1-off)', (('train/age_one_off_accuracy', 'train'),
                              ('validation/age_one_off_accuracy', 'validation'))),
)


def plot_training_curves(runs: Sequence[Curves], title: str, path: str) -> None:
  """Loss and accuracies against epochs; one colour per run, train dashed, validation solid."""
  figure, axes = plt.subplots(2, 2, figsize=(10, 7))
  axes = axes.ravel()
  colours = plt.get_cmap('tab10')
  for panel, (panel_title, tags) in zip(axes, _CURVE_PANELS):
    for index, run in enumerate(runs):
      for tag, kind in tags:
        points = run.scalars.get(tag, [])
        if not points:
          continue
        steps, values = zip(*points)
        epochs = np.asarray(steps) / max(run.steps_per_epoch, 1)
        values = np.asarray(values) * (1 if tag.endswith('loss') else 100)
        # A lone point (a one-epoch run) is invisible as a line: it gets a marker too.
        marker = 'o' if kind == 'validation' or len(epochs) == 1 else None
        panel.plot(epochs, values, linestyle='-' if kind == 'validation' else '--',
                   marker=marker, markersize=3,
                   color=colours(index % 10),
                   label=f'{run.label} {kind}' if len(runs) > 1 else kind)
    panel.set_title(panel_title, fontsize=10)
    panel.set_xlabel('epoch')
    panel.set_xlim(left=0)  # else a short run's axis spans a fraction of one epoch
    panel.set_ylabel('loss' if panel_title == 'Loss' else '%')
    panel.grid(alpha=0.3)
  handles, labels = axes[-1].get_legend_handles_labels()
  if handles:
    figure.legend(handles, labels, loc='center right', fontsize=7, frameon=False)
  figure.suptitle(title, fontsize=11)
  figure.tight_layout(rect=(0, 0, 0.85 if handles else 1, 1))
  figure.savefig(path, dpi=100)
  plt.close(figure)


# ------------------------------------------------------------------------------------------
# The cross-validation report.


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
