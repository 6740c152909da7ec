"""The standard Adience protocol: five runs, each testing on one fold and training on the other four.

  python -m facialnet_jax.cross_validate --config configs/adience.py --workdir W [--folds 0,1]
      [--checkpoint best|latest] [--config.num_epochs=20 ...]

Fold k trains in W/fold_k (validation carved from the four training folds by user_id, as
training always does) and is then evaluated on its test fold. Re-running the same command
resumes: finished folds are skipped and an interrupted one continues from its last checkpoint.
The end is W/report.md (per-fold rows, mean ± std, quoted reference rows), W/cross_validation.json,
training curves and confusion matrices (summed over folds) as PNG.
"""

from facialnet_jax.data import age_groups
from facialnet_jax.runtime import cpu_env

if __name__ == '__main__':
  # Five training runs: start with the same CPU settings as launch.py (they nearly double its speed).
  cpu_env.reexec_with_cpu_env()

# pylint: disable=wrong-import-position
import json
import os
import time
from typing import Sequence

import jax
import ml_collections
import numpy as np
from absl import flags
from absl import logging
from ml_collections import config_flags

from facialnet_jax import evaluate
from facialnet_jax.data import folds
from facialnet_jax.reports import confusion
from facialnet_jax.reports import curves
from facialnet_jax.reports import groups
from facialnet_jax.reports import report
from facialnet_jax.runtime import cli
from facialnet_jax.runtime import run_directory
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.runtime.run_directory import CONFIG_FILE
from facialnet_jax.runtime.run_directory import RESULTS_FILE
from facialnet_jax.training import config_checks
from facialnet_jax.training import restore

REPORT_FILE = 'report.md'
SUMMARY_FILE = 'cross_validation.json'
CURVES_FILE = 'training_curves.png'
GROUPS_PICTURE = 'accuracy_by_age.png'
# Seconds spent on a fold (training and its test evaluation), summed over invocations.
WALL_TIME_FILE = 'cross_validation_seconds.json'
ALL_FOLDS = tuple(range(folds.NUM_FOLDS))


def fold_dir(workdir: str, fold: int) -> str:
  return os.path.join(workdir, f'fold_{fold}')


def fold_evaluation_dir(workdir: str, fold: int, checkpoint: str) -> str:
  return os.path.join(fold_dir(workdir, fold), 'evaluation', f'test_fold_{checkpoint}')


def fold_config(config: ml_collections.ConfigDict, fold: int) -> ml_collections.ConfigDict:
  """The config of the run that tests on `fold` (and trains on the other folds)."""
  config = config.copy_and_resolve_references()
  config.data.test_fold = fold
  return config


def check_protocol(config: ml_collections.ConfigDict) -> None:
  """Cross-validation needs a fold-based data set and validation carved from training folds."""
  data = config.data
  if data.source != 'tfds' or not (data.demo or data.name == 'tfds_adience'):
    raise UserError('Cross-validation runs the Adience fold protocol: it needs '
                    'config.data.name="tfds_adience" (or config.data.demo=True), not '
                    f'source={data.source!r}, name={data.name!r}. Train other data sets with '
                    'launch.py.')
  if data.validation_split:
    raise UserError(f'config.data.validation_split={data.validation_split!r}: in cross-validation '
                    'the validation subjects are carved from the training folds; set it to "".')


def check_same_config(config: ml_collections.ConfigDict, directory: str) -> None:
  """A fold started earlier must be continued with the same config, or the report mixes runs."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    return
  saved = config_checks.flatten(restore.load_config(directory).to_dict())
  wanted = config_checks.flatten(json.loads(config.to_json_best_effort()))
  differences = config_checks.differences(saved, wanted)
  if differences:
    shown = ', '.join(f'{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now'
                      for k in differences[:4])
    raise UserError(f'{directory} was trained with a different config ({shown}'
                    f'{", ..." if len(differences) > 4 else ""}). Re-run with the same config '
                    'to resume, or use a new --workdir.')


def _machine() -> str:
  devices = jax.devices()
  return f'{len(devices)} {devices[0].device_kind} device(s) ({os.cpu_count()} CPU cores)'


def _format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else f'{minutes}m{seconds:02d}s'


def run_fold(config: ml_collections.ConfigDict, workdir: str, fold: int,
             checkpoint: str) -> dict:
  """Trains (or resumes, or skips when done) fold `fold`, evaluates its test fold; returns the
  evaluation's metrics.json content."""
  directory = fold_dir(workdir, fold)
  evaluation_dir = fold_evaluation_dir(workdir, fold, checkpoint)
  metrics_path = os.path.join(evaluation_dir, evaluate.METRICS_FILE)
  this_config = fold_config(config, fold)
  os.makedirs(directory, exist_ok=True)
  # One invocation per fold at a time, for its training and its evaluation (training takes the
  # same lock again, which nests). Invocations on other folds may share the workdir.
  with run_directory.hold(directory):
    check_same_config(this_config, directory)
    if not os.path.exists(os.path.join(directory, RESULTS_FILE)):
      from facialnet_jax.training import train  # pylint: disable=import-outside-toplevel
      train.train_and_evaluate(this_config, directory)
    elif os.path.exists(metrics_path):
      with open(metrics_path) as f:
        return json.load(f)
    run = restore.restore_run(directory, checkpoint)
    evaluation = evaluate.evaluate(run, evaluate.load_evaluation_data(run, 'test'))
    evaluate.write_evaluation(evaluation, evaluation_dir)
    return evaluation.to_json()


def _add_wall_seconds(directory: str, seconds: float) -> None:
  path = os.path.join(directory, WALL_TIME_FILE)
  total = _wall_seconds(directory) or 0.0
  with open(path, 'w') as f:
    json.dump({'seconds': total + seconds}, f)


def _wall_seconds(directory: str) -> float | None:
  try:
    with open(os.path.join(directory, WALL_TIME_FILE)) as f:
      return float(json.load(f)['seconds'])
  except FileNotFoundError:
    return None


def _fold_result(fold: int, metrics: dict) -> report.FoldResult:
  return report.FoldResult(
      fold=fold, num_examples=metrics['num_examples'],
      num_gender_labels=metrics['num_labelled']['gender'],
      num_age_labels=metrics['num_labelled']['age'], step=metrics['checkpoint']['step'],
      epoch=metrics['checkpoint']['epoch'],
      metrics={name: metrics[name] for name, _ in report.REPORTED_METRICS},
      majority=report.majority_class_metrics(
          {head: m['rows_true_columns_predicted']
           for head, m in metrics['confusion_matrices'].items()}))


def _setup_lines(config: ml_collections.ConfigDict, fold_metrics: dict[int, dict],
                 checkpoint: str) -> list[str]:
  data, optimizer, schedule = config.data, config.optimizer, config.schedule
  first = next(iter(fold_metrics.values()))
  augment = ('on (flip, zoom, shift, rotation, brightness/contrast)' if config.augment.enabled
             else 'off')
  chosen = (f'the best epoch by validation {config.checkpoint.best_metric} (validation subjects '
            'only; the test fold is not looked at)' if checkpoint == restore.BEST else
            'the last epoch')
  return [
      f'Data: `{first["data"]["dataset"]}` from `{first["data"]["data_dir"]}`'
      f'{" (SYNTHETIC demo faces: says nothing about real faces)" if data.demo else ""}; '
      f'{sum(m["num_examples"] for m in fold_metrics.values())} test images over the folds done.',
      'Protocol: five runs; run k tests on fold k and trains on the other four (the folds are '
      f'subject-exclusive); {100 * data.validation_fraction:g}% of the training subjects (by a '
      'hash of user_id) are held out for validation. Every test image counts (the last batch is '
      'padded and masked).',
      f'Reported checkpoint of each run: {chosen}.',
      f'Training: {config.num_epochs} epoch{"" if config.num_epochs == 1 else "s"}, batch {config.batch_size}, SGD lr '
      f'{optimizer.learning_rate:g}, momentum {optimizer.momentum:g}, weight decay '
      f'{optimizer.weight_decay:g}, schedule {schedule.name}, augmentation {augment}, '
      f'input {config.model.input_size}×{config.model.input_size}.',
  ]


def _group_section(workdir: str, fold_metrics: dict[int, dict]) -> list[str]:
  """Markdown of accuracy per age group and gender over the test folds pooled, and its
  picture; nothing for folds evaluated before metrics.json held per-group numbers."""
  tables = [m['per_group'] for m in fold_metrics.values() if 'per_group' in m]
  if not tables:
    return []
  pooled = groups.pool(tables)
  age_grouping = 'age_band' if 'age_band' in pooled else 'age_group'
  groups.plot_by_age(
      {label: (pooled[age_grouping], metric) for label, metric in (
          ('gender', 'gender_accuracy'), ('age exact', 'age_accuracy'),
          ('age 1-off', 'age_one_off_accuracy'))},
      os.path.join(workdir, GROUPS_PICTURE),
      f'Accuracy by age, {len(tables)} test folds pooled')
  return [f'## Accuracy by group ({len(tables)} test folds pooled)', '',
          *groups.markdown_table(pooled)]


def write_report(config: ml_collections.ConfigDict, workdir: str, fold_metrics: dict[int, dict],
                 checkpoint: str) -> str:
  """report.md, cross_validation.json, training curves and summed confusion matrices."""
  folds = [_fold_result(fold, metrics) for fold, metrics in sorted(fold_metrics.items())]
  pictures = []
  runs = []
  for fold, metrics in sorted(fold_metrics.items()):
    steps_per_epoch = metrics['checkpoint'].get('steps_per_epoch') or 1
    runs.append(curves.Curves(f'fold {fold}', curves.read_scalars(fold_dir(workdir, fold)),
                              steps_per_epoch))
  curves.plot_training_curves(runs, 'Training curves per run (named by test fold)',
                              os.path.join(workdir, CURVES_FILE))
  pictures.append(('Training curves (train dashed, validation solid)', CURVES_FILE))
  for head in ('age', 'gender'):
    matrix = sum(np.array(m['confusion_matrices'][head]['rows_true_columns_predicted'])
                 for m in fold_metrics.values())
    base = f'confusion_{head}'
    confusion.write_confusion_csv(matrix, age_groups.CLASS_NAMES[head],
                                  os.path.join(workdir, base + '.csv'))
    confusion.plot_confusion_matrix(
        matrix, age_groups.CLASS_NAMES[head],
        f'{confusion.HEAD_TITLES[head]}: test folds {", ".join(map(str, sorted(fold_metrics)))} '
        f'summed\n{int(matrix.sum())} labelled test images', os.path.join(workdir, base + '.png'))
    pictures.append((f'{confusion.HEAD_TITLES[head]} confusion matrix, test folds summed',
                     base + '.png'))
  group_lines = _group_section(workdir, fold_metrics)
  if group_lines:
    pictures.append(('Accuracy by age, test folds pooled', GROUPS_PICTURE))
  setup = _setup_lines(config, fold_metrics, checkpoint)
  seconds = [_wall_seconds(fold_dir(workdir, fold)) for fold in fold_metrics]
  if None not in seconds:
    setup.append(f'Wall time, training and test evaluation of the {len(seconds)} folds: '
                 f'{_format_duration(sum(seconds))} on {_machine()}.')
  data = config.data
  name = 'synthetic demo' if data.demo else f'{data.name}/{data.builder_config}'
  markdown = report.cross_validation_markdown(
      folds, title=f'{len(ALL_FOLDS)}-fold cross-validation: FacialNet on {name}',
      setup_lines=setup, num_folds_expected=len(ALL_FOLDS), pictures=pictures)
  path = os.path.join(workdir, REPORT_FILE)
  with open(path, 'w') as f:
    f.write(markdown)
    if group_lines:
      f.write('\n' + '\n'.join(group_lines) + '\n')
  with open(os.path.join(workdir, SUMMARY_FILE), 'w') as f:
    json.dump({'folds': {str(k): v for k, v in sorted(fold_metrics.items())},
               'mean_std': report.summarize_folds(folds), 'checkpoint': checkpoint}, f,
              indent=2, allow_nan=False)
  return path


def cross_validate(config: ml_collections.ConfigDict, workdir: str,
                   folds: Sequence[int] = ALL_FOLDS, checkpoint: str = restore.BEST) -> str:
  """Runs (or resumes) the folds and writes the report; returns the path of report.md.

  The report covers every finished fold in `workdir`, so folds run in separate invocations
  (or on separate machines sharing the workdir) end up in one table.
  """
  check_protocol(config)
  if checkpoint not in (restore.BEST, restore.LATEST):
    raise UserError(f'--checkpoint={checkpoint!r}: cross-validation reports the best or the '
                    'latest checkpoint of each fold.')
  unknown = sorted(set(folds) - set(ALL_FOLDS))
  if unknown or not folds:
    raise UserError(f'--folds={",".join(map(str, folds))}: folds are {ALL_FOLDS}.')
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  start = time.monotonic()
  trained_seconds = []
  fold_metrics = {}
  for position, fold in enumerate(folds):
    left = len(folds) - position
    estimate = (_format_duration(np.mean(trained_seconds) * left) if trained_seconds
                else 'unknown until a fold has run')
    logging.info('Fold %d/%d (test fold %d) in %s; elapsed %s, estimated remaining %s.',
                 position + 1, len(folds), fold, fold_dir(workdir, fold),
                 _format_duration(time.monotonic() - start), estimate)
    fold_start = time.monotonic()
    trained = not os.path.exists(os.path.join(fold_dir(workdir, fold), RESULTS_FILE))
    evaluated = not os.path.exists(os.path.join(fold_evaluation_dir(workdir, fold, checkpoint),
                                                evaluate.METRICS_FILE))
    fold_metrics[fold] = run_fold(config, workdir, fold, checkpoint)
    if trained or evaluated:
      _add_wall_seconds(fold_dir(workdir, fold), time.monotonic() - fold_start)
    if trained:
      trained_seconds.append(time.monotonic() - fold_start)
    logging.info('Fold %d/%d done: test fold %d (%d images): %s; took %s.', position + 1,
                 len(folds), fold, fold_metrics[fold]['num_examples'],
                 ', '.join(f'{label} {report.format_percent(fold_metrics[fold][name])}%'
                           for name, label in report.REPORTED_METRICS),
                 _format_duration(time.monotonic() - fold_start))
  # Invocations running other folds write the same report: one at a time, each reading the
  # folds finished so far (by earlier invocations too), so the last one written covers them all.
  with run_directory.hold(workdir, wait=True):
    for fold in sorted(set(ALL_FOLDS) - set(folds)):
      metrics_path = os.path.join(fold_evaluation_dir(workdir, fold, checkpoint),
                                  evaluate.METRICS_FILE)
      if os.path.exists(metrics_path):
        check_same_config(fold_config(config, fold), fold_dir(workdir, fold))
        with open(metrics_path) as f:
          fold_metrics[fold] = json.load(f)
    path = write_report(config, workdir, fold_metrics, checkpoint)
  logging.info('Wrote %s (%d folds) after %s.', path, len(fold_metrics),
               _format_duration(time.monotonic() - start))
  return path


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined only when run as a program, so importing is free)."""
  config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/adience.py).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for the five runs and the report.')
  flags.DEFINE_list('folds', [str(f) for f in ALL_FOLDS], 'Test folds to run now (the report '
                    'covers every finished fold in the workdir).')
  flags.DEFINE_string('checkpoint', restore.BEST, 'Which checkpoint of each run is reported: '
                      'best (by validation) or latest.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    folds = [int(f) for f in FLAGS.folds]
  except ValueError:
    raise UserError(f'--folds={",".join(FLAGS.folds)}: give fold numbers, for example '
                    '--folds=0,1,2,3,4.') from None
  path = cross_validate(FLAGS.config, FLAGS.workdir, folds, FLAGS.checkpoint)
  print(f'Cross-validation report: {path}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
