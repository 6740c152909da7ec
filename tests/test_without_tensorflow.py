"""Training, evaluation and prediction where TensorFlow is not installed (the usual GPU image)."""

import os
import pathlib
import subprocess
import sys

import matplotlib
import pytest

from tests.conftest import launch_command

# On PYTHONPATH, this folder's sitecustomize hides TensorFlow from the process and its children.
WITHOUT_TENSORFLOW = pathlib.Path(__file__).parent / 'without_tensorflow'
# A portrait photo shipped with matplotlib: one face.
PORTRAIT = pathlib.Path(matplotlib.get_data_path()) / 'sample_data' / 'grace_hopper.jpg'

pytestmark = pytest.mark.slow


def _without_tensorflow(options: dict) -> dict:
  env = dict(options['env'])
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(WITHOUT_TENSORFLOW),
                                                    env.get('PYTHONPATH')]))
  return options | {'env': env}


def _run(argv, options) -> subprocess.CompletedProcess:
  return subprocess.run(argv, **_without_tensorflow(options), capture_output=True, text=True,
                        timeout=900, check=False)


def test_the_hider_really_hides_tensorflow():
  argv, options = launch_command()
  probe = _run([sys.executable, '-c', 'import importlib.util as u, sys; '
                'print(u.find_spec("tensorflow")); import tensorflow'], options)
  assert probe.stdout.strip() == 'None'
  assert "No module named 'tensorflow'" in probe.stderr


def test_demo_builds_trains_evaluates_and_predicts_without_tensorflow(tmp_path):
  workdir, data_dir = tmp_path / 'run', tmp_path / 'data'
  argv, options = launch_command(
      '--config', 'configs/demo.py', f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
      '--config.num_epochs=1', '--config.batch_size=50', '--config.log_every_steps=20')
  trained = _run(argv, options)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert 'Run time' in trained.stderr
  assert list(data_dir.glob('synthetic_adience_demo/*/tfds_adience/gray75/*/*.array_record*'))

  # TensorBoard event files written without TensorFlow, readable by TensorBoard.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  assert {'validation/gender_accuracy', 'train/loss', 'learning_rate'} <= set(
      events.Tags()['tensors'])

  evaluated = _run([sys.executable, '-m', 'facialnet_jax.evaluate', f'--workdir={workdir}',
                    f'--output_dir={tmp_path / "evaluation"}'], options)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert (tmp_path / 'evaluation' / 'metrics.json').exists()

  predicted = _run([sys.executable, '-m', 'facialnet_jax.predict', f'--workdir={workdir}',
                    str(PORTRAIT)], options)
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  assert f'{PORTRAIT}: 1 face' in predicted.stdout.splitlines()


def test_a_tfrecord_build_without_tensorflow_says_how_to_rebuild(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from facialnet_jax.data import demo_data  # pylint: disable=import-outside-toplevel
  from tfds_adience import tfds_adience_dataset_builder  # pylint: disable=import-outside-toplevel
  raw = tmp_path / 'raw'
  demo_data.write_demo_raw(raw, num_subjects=10, images_per_subject=1, image_size=40)
  builder = tfds_adience_dataset_builder.Builder(config='gray75', data_dir=tmp_path / 'tfrecord',
                                                 file_format='tfrecord')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw))

  argv, options = launch_command(
      '--config', 'configs/adience.py', f'--workdir={tmp_path / "run"}',
      f'--config.data.data_dir={tmp_path / "tfrecord"}', '--config.num_epochs=1')
  failed = _run(argv, options)
  assert failed.returncode == 1
  last = failed.stderr.strip().splitlines()[-1]
  assert last.startswith('error: tfds_adience in ') and 'was built as TFRecord' in last
  assert 'run the same `tfds build` command again' in last
