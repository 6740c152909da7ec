"""Multi-process training on JAX's distributed runtime: one process per host (or per GPU)."""

import jax
from absl import logging

from facialnet_jax.runtime.errors import UserError


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, auto_detect: bool) -> None:
  """Joins the processes of one run before anything touches a device.

  Either all three of coordinator_address, num_processes and process_id are given (any
  cluster, or several processes on one machine), or `auto_detect` lets JAX read them from the
  cluster environment (SLURM, Open MPI, Kubernetes, TPU pods). Without either, the run is a
  single process. After this, jax.devices() spans every process's devices and the `data` mesh
  axis covers them all.
  """
  explicit = [coordinator_address, num_processes, process_id]
  if any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise UserError('Multi-process training needs all of --coordinator_address, '
                      '--num_processes and --process_id (or --distributed to read them from '
                      'the cluster environment).')
    if not 0 <= process_id < num_processes:
      raise UserError(f'--process_id={process_id} must be in 0..{num_processes - 1}.')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif auto_detect:
    jax.distributed.initialize()
  else:
    return
  logging.info('Process %d of %d: %d local devices, %d in all.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.process_index() > 0:
    # Process 0 reports for the run; the others speak only of problems.
    logging.set_verbosity(logging.WARNING)
