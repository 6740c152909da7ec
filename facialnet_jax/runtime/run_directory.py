"""A run's directory (the workdir): its file names, made and checked writable, held by one run
at a time, its config written, whole files or nothing, and removed again when a failed run
left nothing in it.

One run per workdir: an exclusive lock on W/.lock, held while the run lives and released by the
kernel when its process ends, however it ends (SIGKILL included), so a stale file never blocks.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
from typing import Iterator

import jax
from absl import logging

from facialnet_jax.runtime.errors import UserError

CONFIG_FILE = 'config.json'  # the resolved training config
RESULTS_FILE = 'results.json'  # test and validation metrics, groups, timing: the run finished
ERRORS_FILE = 'errors.log'  # library error reports (orbax's tracebacks of a failed write)
LOCK_FILE = '.lock'  # who holds the workdir

# Lock files this process holds, with how deeply. flock counts a second open() of the same file as
# another holder, so a nested hold (cross_validate's fold runs; tests that train in-process)
# re-enters instead of failing against its own process.
_held: dict[str, int] = {}


class WorkdirBusy(UserError):
  """Another process holds the workdir."""


def _holder(fd: int) -> str:
  """Who holds the lock, as its file says (written right after the lock was taken)."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 4096).decode())
    return f'PID {info["pid"]} on {info["host"]}, started {info["started"]}'
  except (OSError, ValueError, KeyError, TypeError):
    # The holder took the lock a moment ago and has not written its details yet.
    return 'a process that has just started'


def _acquire(path: str, workdir: str, wait: bool) -> int | None:
  """The descriptor that holds the lock (kept open for the run), or None where the file system
  cannot lock. When another process holds it: waits for it, or raises WorkdirBusy."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _holder(fd)
    if not wait:
      os.close(fd)
      raise WorkdirBusy(f'{workdir} is in use by another run ({holder}); wait for it to '
                        'finish, stop it, or use another --workdir.') from None
    logging.info('Waiting for %s to release %s.', holder, workdir)
    fcntl.flock(fd, fcntl.LOCK_EX)
  except OSError as error:
    # Some network file systems refuse locks (ENOLCK, EOPNOTSUPP): train without one.
    os.close(fd)
    logging.warning('Cannot lock %s (%s): make sure no other run uses %s at the same time.',
                    path, error.strerror, workdir)
    return None
  info = {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)
  return fd


@contextlib.contextmanager
def hold(workdir: str, wait: bool = False) -> Iterator[None]:
  """Holds `workdir` (which must exist) for the duration of the block. When another process
  holds it, raises WorkdirBusy at once (or with `wait`, waits for it). The lock file stays
  behind (removing it would let two runs lock two different files of the same name); only the
  lock matters, not the file."""
  workdir = os.path.abspath(workdir)
  # The real path: a workdir named through a symlink is the same workdir.
  path = os.path.join(os.path.realpath(workdir), LOCK_FILE)
  if path in _held:
    _held[path] += 1
    try:
      yield
    finally:
      _held[path] -= 1
    return
  fd = _acquire(path, workdir, wait)
  _held[path] = 1
  try:
    yield
  finally:
    del _held[path]
    if fd is not None:
      os.close(fd)  # closing the last descriptor releases the lock


def hold_for_run(workdir: str):
  """The workdir's lock, taken by process 0 for the whole run (the other processes follow it
  through the collectives). Without jax.distributed the run is one process: asking JAX which
  process this is would start its backend (seconds on a GPU) before a busy workdir is reported."""
  if jax.distributed.is_initialized() and jax.process_index() > 0:
    return contextlib.nullcontext()
  return hold(workdir)


def prepare(workdir: str) -> tuple[str, bool]:
  """The workdir's absolute path, made if needed, and whether this call made it."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  created = not os.path.isdir(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    # Named without asking JAX for the process index, which would start its backend.
    probe = os.path.join(workdir, f'.write_test_{socket.gethostname()}_{os.getpid()}')
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as error:
    raise UserError(f'--workdir {workdir} cannot be written ({error.strerror}); choose a '
                    'directory you can write to.') from None
  return workdir, created


def remove_if_unused(workdir: str) -> None:
  """Removes a workdir this run made when the run failed before writing anything there (a data
  set not built, a batch that does not split): a folder holding only a lock file reads as a run
  that started. Called with the lock held, so no other run can be using it."""
  try:
    if set(os.listdir(workdir)) <= {LOCK_FILE}:
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(workdir, LOCK_FILE))
      os.rmdir(workdir)
  except OSError:
    pass  # the folder is only left behind, as before


def write_atomically(path: str, text: str) -> None:
  """Writes a whole file or nothing: a crash mid-write leaves the previous version in place."""
  temporary = f'{path}.tmp-{os.getpid()}'
  with open(temporary, 'w') as f:
    f.write(text)
  os.replace(temporary, path)


def save_config(config, workdir: str) -> None:
  """Writes the resolved config beside the checkpoints (process 0 only)."""
  if jax.process_index() == 0:
    write_atomically(os.path.join(workdir, CONFIG_FILE),
                     config.to_json_best_effort(indent=2, sort_keys=True))
