"""Multi-process training on JAX's distributed runtime: two processes on this machine train one
model and end where a single process with as many devices does."""

import socket
import subprocess

from tests.test_training import DEVICE_COMPARISON
from tests.conftest import (final_params, initial_params, launch_command, relative_difference,
                            run_launch, tiny_config, tiny_flags)

# As in test_training's device-count test (see DEVICE_COMPARISON there for why).
FLAGS = ('--config', 'configs/synthetic.py', *tiny_flags(**DEVICE_COMPARISON))


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(('localhost', 0))
    return probe.getsockname()[1]


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
  address = f'localhost:{_free_port()}'
  workers = []
  for process in range(2):
    argv, options = launch_command(
        '--workdir', str(tmp_path / 'two_processes'), *FLAGS, '--coordinator_address', address,
        '--num_processes', '2', '--process_id', str(process), devices=2)
    workers.append(subprocess.Popen(argv, **options, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True))
  outputs = [worker.communicate(timeout=600) for worker in workers]
  for worker, (_, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-3000:]
  assert '4 devices (cpu)' in outputs[0][1]
  assert 'Epoch 1/1' in outputs[0][1] and 'Epoch 1/1' not in outputs[1][1]  # process 0 reports
  assert len(list((tmp_path / 'two_processes').glob('events.out.tfevents.*'))) == 1

  single = run_launch('--workdir', str(tmp_path / 'one_process'), *FLAGS, devices=4)
  assert single.returncode == 0, single.stderr[-3000:]

  two = final_params(tmp_path / 'two_processes')
  one = final_params(tmp_path / 'one_process')
  assert relative_difference(two, one, initial_params(tiny_config())) < 1e-4
