"""Train FacialNet: `python launch.py --config configs/adience.py --workdir runs/fold0`.

Any config key can be overridden: `--config.optimizer.learning_rate=0.01`. Re-running the same
command on the same --workdir resumes from its latest checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

from facialnet_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  from facialnet_jax import train  # pylint: disable=import-outside-toplevel
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
