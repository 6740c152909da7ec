"""One run per workdir: an exclusive lock on W/.lock, held while the run lives and released by the
kernel when its process ends, however it ends (SIGKILL included), so a stale file never blocks."""

import contextlib
import datetime
import fcntl
import json
import os
import socket
from typing import Iterator

from absl import logging

from facialnet_jax.errors import UserError

LOCK_FILE = '.lock'

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
