"""Training curves: a run's scalars read from its TensorBoard event files, drawn against epochs
(loss and the three accuracies, train and validation)."""

import dataclasses
import glob
import os
from typing import Sequence

import matplotlib
matplotlib.use('Agg')  # Files only: no display is needed, or present on servers.
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position


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
