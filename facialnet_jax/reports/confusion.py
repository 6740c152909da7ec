"""Confusion matrices: counted from labels and predictions, per-class precision and recall,
written and read as CSV, drawn as PNG."""

import csv
from typing import Sequence

import matplotlib
matplotlib.use('Agg')  # Files only: no display is needed, or present on servers.
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

# The heads' names in picture titles and reports.
HEAD_TITLES = {'gender': 'Gender', 'age': 'Age group'}


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
