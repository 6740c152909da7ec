"""Evaluate a checkpoint on every example of a split, of the run's own data set or of another one.

  python -m facialnet_jax.evaluate [--workdir W] [--checkpoint best|latest|STEP] [--split test]
      [--dataset tfds_utkface] [--builder_config gray75] [--data_dir D] [--output_dir O]

--split test|validation|train are the run's own protocol splits (on Adience: the test fold, and
the training folds with validation carved out by subject, exactly as training saw them). Any
other value is a TFDS split of the data set (fold2, fold0+fold1, test[:50%], ...). With
--dataset, --builder_config or --data_dir the data set differs from the training config's, and
--split names a split of that data set. Writes metrics.json (accuracies, per-class precision and
recall, confusion matrices, accuracy per age band, gender and race: `per_group`),
confusion_{gender,age}.{csv,png}, accuracy_by_age.png and predictions.csv, and prints the
per-group table. Without --workdir the model shipped with the package is evaluated (on
tfds_utkface/rgb75 unless --dataset/--builder_config say otherwise; its output then goes to
./evaluation/ unless --output_dir says otherwise).
"""

import csv
import dataclasses
import json
import math
import os
import re

import jax
import ml_collections
import numpy as np
from absl import flags
from absl import logging

from facialnet_jax.data import age_groups
from facialnet_jax.data import input_pipeline
from facialnet_jax.reports import confusion
from facialnet_jax.reports import groups
from facialnet_jax.reports import report
from facialnet_jax.runtime import cli
from facialnet_jax.runtime import compilation_cache
from facialnet_jax.runtime import sharding
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import exported_model
from facialnet_jax.training import feeds
from facialnet_jax.training import restore
from facialnet_jax.training import steps

PROTOCOL_SPLITS = ('train', 'validation', 'test')
METRICS_FILE = 'metrics.json'
PREDICTIONS_FILE = 'predictions.csv'
# A missing label (age_groups.UNKNOWN) in predictions.csv.
UNKNOWN_NAME = 'unknown'
# Head → the label key of a split.


@dataclasses.dataclass(frozen=True)
class EvaluationData:
  """What was evaluated: the split's examples and where they came from."""
  split: input_pipeline.HostSplit
  dataset: str  # 'tfds_adience/gray75', or 'synthetic'
  data_dir: str
  split_name: str  # as asked for (test, fold2, ...)
  tfds_split: str  # the split expression read ('' for synthetic data)

  def describe(self) -> str:
    resolved = f' = {self.tfds_split}' if self.tfds_split and self.tfds_split != self.split_name \
        else ''
    return f'{self.dataset} split {self.split_name}{resolved} ({len(self.split)} examples)'


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Metrics of one checkpoint on one split, with its per-example class probabilities."""
  run: restore.RestoredRun
  data: EvaluationData
  metrics: dict[str, float | None]  # EvalMetrics over every example (None: no such label)
  confusion: dict[str, np.ndarray]  # head → [true, predicted] counts
  probabilities: dict[str, np.ndarray]  # head → (N, classes)
  flip: bool = False  # each image's probabilities averaged with its mirror image's
  # With `flip`: the same checkpoint's metrics without it, reported beside.
  plain_metrics: dict[str, float | None] | None = None

  def to_json(self) -> dict:
    per_class = {head: confusion.per_class_precision_recall(matrix, age_groups.CLASS_NAMES[head])
                 for head, matrix in self.confusion.items()}
    return {
        'checkpoint': {'workdir': self.run.workdir, 'checkpoint': self.run.checkpoint,
                       'step': self.run.step, 'epoch': self.run.meta.get('epoch'),
                       'steps_per_epoch': self.run.meta.get('steps_per_epoch')},
        'data': {'dataset': self.data.dataset, 'data_dir': self.data.data_dir,
                 'split': self.data.split_name, 'tfds_split': self.data.tfds_split},
        'num_examples': len(self.data.split),
        'num_labelled': {head: int(matrix.sum()) for head, matrix in self.confusion.items()},
        'flip_test_time_augmentation': self.flip,
        **self.metrics,
        **({'without_flip': self.plain_metrics} if self.plain_metrics else {}),
        'per_class': per_class,
        'per_group': self.per_group(),
        'confusion_matrices': {head: {'classes': list(age_groups.CLASS_NAMES[head]),
                                      'rows_true_columns_predicted': matrix.tolist()}
                               for head, matrix in self.confusion.items()},
    }

  def per_group(self) -> dict[str, dict[str, dict]]:
    """Accuracy per age band (or Adience group), gender and race (where the data has it)."""
    return groups.per_group(self.data.split, self.probabilities)

  def summary_line(self) -> str:
    line = _summary(self.metrics)
    if self.plain_metrics:
      line = f'with flip {line}; without {_summary(self.plain_metrics)}'
    return line


def _summary(metrics: dict[str, float | None]) -> str:
  return (f'gender {report.format_percent(metrics["gender_accuracy"])}%, age exact '
          f'{report.format_percent(metrics["age_accuracy"])}%, age 1-off '
          f'{report.format_percent(metrics["age_one_off_accuracy"])}%')


def _data_config(run_config: ml_collections.ConfigDict, dataset: str | None,
                 builder_config: str | None, data_dir: str | None) -> ml_collections.ConfigDict:
  """The run's config with the evaluation's data set in place of the training one."""
  config = ml_collections.ConfigDict(run_config.to_dict())
  data = config.data
  if dataset:
    data.source, data.name, data.demo = 'tfds', dataset, False
  if builder_config:
    data.builder_config = builder_config
  if data_dir is not None:
    data.data_dir = data_dir
  return config


def load_evaluation_data(run: restore.RestoredRun, split: str = 'test', dataset: str | None = None,
                         builder_config: str | None = None,
                         data_dir: str | None = None) -> EvaluationData:
  """Reads the split to evaluate (see the module docstring for what `split` means)."""
  config = _data_config(run.config, dataset, builder_config, data_dir)
  data = config.data
  own_data_set = not dataset or (dataset == run.config.data.name
                                 and run.config.data.source == 'tfds'
                                 and not run.config.data.demo)
  if data.source == 'synthetic':
    if split not in PROTOCOL_SPLITS:
      raise UserError(f'{run.workdir} was trained on in-memory synthetic data, whose splits are '
                      f'{", ".join(PROTOCOL_SPLITS)}; --split={split!r} is none of them. Pass '
                      '--dataset to evaluate on a built data set.')
    return EvaluationData(input_pipeline.load_splits(config)[split], 'synthetic', '', split, '')

  builder = input_pipeline.tfds_builder(data, data_dir_flag='--data_dir')
  name = f'{builder.name}/{builder.builder_config.name}'
  root = str(builder.data_dir_root)
  if own_data_set and split in PROTOCOL_SPLITS:
    names = input_pipeline.split_names(data)
    if split == 'test' or (split == 'validation' and names['validation']):
      host = input_pipeline.load_tfds_split(builder, names[split])
      return EvaluationData(host, name, root, split, names[split])
    # The training split minus, or just, the validation subjects carved out of it.
    carved = 'train' if split == 'train' else 'validation'
    described = f'{names["train"]} ({carved} subjects, as in training)'
    return EvaluationData(input_pipeline.load_splits(config)[split], name, root, split,
                          described)
  return EvaluationData(input_pipeline.load_tfds_split(builder, split), name, root, split, split)


def evaluate(run: restore.RestoredRun, data: EvaluationData,
             batch_size: int | None = None, flip: bool = False) -> Evaluation:
  """Evaluates every example of `data` (the last batch is padded and masked, none dropped).

  With `flip` the reported metrics and probabilities average each image with its mirror
  image, and the plain metrics are kept beside them (Evaluation.plain_metrics).
  """
  split = data.split
  if len(split) == 0:
    raise UserError(f'{data.describe()} is empty: nothing to evaluate.')
  restore.check_images_fit(run, split.image, data.dataset)
  batch_size = batch_size or run.config.eval_batch_size
  sharding.check_divisible(batch_size, run.mesh, 'batch_size')
  results = {}
  for flipped in sorted({False, flip}):
    evaluator = feeds.evaluator(run.config.data.get('pipeline', 'device'),
                                steps.make_eval_step(run.model, run.config, flip=flipped), split,
                                batch_size, run.mesh)
    collection, probabilities = evaluator(run.state)
    metrics = {name: float(value)
               for name, value in jax.device_get(collection).compute().items()}
    results[flipped] = ({name: None if math.isnan(value) else value
                         for name, value in metrics.items()}, probabilities)
  metrics, probabilities = results[flip]
  probabilities = {head: np.asarray(jax.device_get(p)) for head, p in probabilities.items()}
  matrices = {
      head: confusion.confusion_matrix(getattr(split, age_groups.LABEL_KEYS[head]),
                                       probabilities[head].argmax(axis=-1),
                                       len(age_groups.CLASS_NAMES[head]))
      for head in ('gender', 'age')}
  return Evaluation(run, data, metrics, matrices, probabilities, flip,
                    results[False][0] if flip else None)


def _safe_name(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('_')


def default_output_dir(evaluation: Evaluation) -> str:
  run, data = evaluation.run, evaluation.data
  name = f'{data.dataset}_{data.split_name}_{run.checkpoint}'
  if not run.checkpoint.isdigit():
    name += f'-step{run.step}'
  if evaluation.flip:
    name += '_flip'
  # The shipped model lives inside the installed package, which may be read-only.
  base = os.getcwd() if run.workdir == exported_model.SHIPPED_DIR else run.workdir
  return os.path.join(base, 'evaluation', _safe_name(name))


def class_name(head: str, label: int) -> str:
  """The name of class `label` of `head` ('female', '25-32'); UNKNOWN_NAME for a missing label."""
  return UNKNOWN_NAME if label == age_groups.UNKNOWN else age_groups.CLASS_NAMES[head][label]


def write_predictions_csv(evaluation: Evaluation, path: str) -> None:
  """One row per example: labels ('unknown' when missing) and predicted classes by name, and
  every class probability."""
  split, probabilities = evaluation.data.split, evaluation.probabilities
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['index', 'subject_id', 'gender', 'gender_predicted',
                     *(f'p_gender_{c}' for c in age_groups.GENDER_CLASS_NAMES),
                     'age_group', 'age_group_predicted',
                     *(f'p_age_{c}' for c in age_groups.AGE_CLASS_NAMES)])
    for i in range(len(split)):
      writer.writerow([i, split.subject_id[i], class_name('gender', int(split.gender[i])),
                       class_name('gender', int(probabilities['gender'][i].argmax())),
                       *(f'{p:.6f}' for p in probabilities['gender'][i]),
                       class_name('age', int(split.age_group[i])),
                       class_name('age', int(probabilities['age'][i].argmax())),
                       *(f'{p:.6f}' for p in probabilities['age'][i])])


def write_evaluation(evaluation: Evaluation, output_dir: str) -> list[str]:
  """metrics.json, predictions.csv and confusion matrices (CSV + PNG) in `output_dir`."""
  os.makedirs(output_dir, exist_ok=True)
  written = [os.path.join(output_dir, METRICS_FILE)]
  with open(written[0], 'w') as f:
    json.dump(evaluation.to_json(), f, indent=2, allow_nan=False)
  written.append(os.path.join(output_dir, PREDICTIONS_FILE))
  write_predictions_csv(evaluation, written[-1])
  for head, matrix in evaluation.confusion.items():
    classes = age_groups.CLASS_NAMES[head]
    base = os.path.join(output_dir, f'confusion_{head}')
    confusion.write_confusion_csv(matrix, classes, base + '.csv')
    title = (f'{confusion.HEAD_TITLES[head]}: {evaluation.data.dataset} '
             f'{evaluation.data.split_name}'
             f'\nstep {evaluation.run.step}, {int(matrix.sum())} labelled images'
             f'{", with flip" if evaluation.flip else ""}')
    confusion.plot_confusion_matrix(matrix, classes, title, base + '.png')
    written += [base + '.csv', base + '.png']
  table = evaluation.per_group()
  age_grouping = 'age_band' if 'age_band' in table else 'age_group'
  written.append(os.path.join(output_dir, 'accuracy_by_age.png'))
  groups.plot_by_age(
      {f'{head}, step {evaluation.run.step}': (table[age_grouping], metric)
       for head, metric in (('gender', 'gender_accuracy'), ('age exact', 'age_accuracy'),
                            ('age 1-off', 'age_one_off_accuracy'))}, written[-1],
      f'Accuracy by age: {evaluation.data.dataset} {evaluation.data.split_name}'
      f'{" (flip)" if evaluation.flip else ""}')
  return written


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined only when run as a program, so importing is free)."""
  exported_model.define_model_flags('Average each image\'s probabilities with its mirror '
                                    'image\'s (test-time augmentation), reported beside the '
                                    'plain numbers')
  flags.DEFINE_string('split', 'test', 'test, validation or train (the run\'s own protocol '
                      'splits), or any TFDS split of the data set (fold2, test[:50%], ...).')
  flags.DEFINE_string('dataset', None, 'Evaluate on this TFDS data set (tfds_adience, '
                      'tfds_utkface) instead of the training one.')
  flags.DEFINE_string('builder_config', None, 'Builder config of the data set (gray75, gray96, '
                      'rgb75, rgb96); default: the training one.')
  flags.DEFINE_string('data_dir', None,
                      'TFDS data_dir of the data set; default: the training one.')
  flags.DEFINE_integer('batch_size', None, 'Evaluation batch size; default: the run\'s '
                       'config.eval_batch_size.')
  flags.DEFINE_string('output_dir', None, 'Where to write; default: '
                      'WORKDIR/evaluation/<dataset>_<split>_<checkpoint>.')


def main(argv):
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments: {" ".join(argv[1:])}')
  clock = compilation_cache.CompileClock()
  run = exported_model.load_run(FLAGS.workdir, FLAGS.checkpoint)
  logging.info('Restored %s onto %d %s device(s).', run.describe(), jax.device_count(),
               jax.devices()[0].platform)
  data = load_evaluation_data(run, FLAGS.split, FLAGS.dataset, FLAGS.builder_config,
                              FLAGS.data_dir)
  logging.info('Evaluating on %s.', data.describe())
  flip = FLAGS.flip if FLAGS.flip is not None else bool(run.config.get('flip_test', False))
  evaluation = evaluate(run, data, FLAGS.batch_size, flip)
  output_dir = FLAGS.output_dir or default_output_dir(evaluation)
  written = write_evaluation(evaluation, output_dir)
  print(f'{data.describe()}, {run.describe()}: {evaluation.summary_line()}.')
  print(groups.format_table(evaluation.per_group()))
  print(f'Wrote {", ".join(os.path.basename(p) for p in written)} to {output_dir}')
  logging.info('Compiled in %.1f s (compilation cache: %d hits, %d misses).', clock.seconds,
               clock.cache_hits, clock.cache_misses)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
