"""Train FacialNet: `python launch.py --config configs/adience.py --workdir runs/fold0`.

Any config key can be overridden: `--config.optimizer.learning_rate=0.01`. Re-running the same
command on the same --workdir resumes from its latest checkpoint. Several processes (hosts)
train one model when each is started with --coordinator_address, --num_processes and
--process_id, or with --distributed under SLURM and similar schedulers (README.md).
"""

from facialnet_jax.runtime import cpu_env

# Before anything heavy is imported: the CPU settings only take effect at process start.
cpu_env.reexec_with_cpu_env()

# pylint: disable=wrong-import-position
from absl import app, flags
from ml_collections import config_flags

from facialnet_jax.runtime import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for multi-process training (jax.distributed).')
flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process\'s index, 0 … num_processes - 1.')
flags.DEFINE_bool('distributed', False,
                  'Join a multi-process run described by the cluster environment (SLURM, ...).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # Config values are checked, and flag errors reported, before JAX and TensorFlow load.
  from facialnet_jax.training import config_checks  # pylint: disable=import-outside-toplevel
  config_checks.check_config(FLAGS.config)
  from facialnet_jax.runtime import distributed  # pylint: disable=import-outside-toplevel
  from facialnet_jax.training import train  # pylint: disable=import-outside-toplevel
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         FLAGS.distributed)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
