"""Faults users hit: a second run on a busy workdir stops at once and touches nothing (a killed
run's lock does not linger); a full disk stops the run with one line and a re-run resumes from the
last good checkpoint; SIGTERM saves where the run is, and the re-run ends bit for bit where an
uninterrupted run ends."""

import contextlib
import errno
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

from facialnet_jax import cross_validate
from facialnet_jax.runtime import interrupts
from facialnet_jax.runtime import run_directory
from facialnet_jax.training import checkpointing
from facialnet_jax.training import restore
from facialnet_jax.training import train
from tests.conftest import (REPO_ROOT, final_params, launch_command, run_launch, tiny_config,
                            tiny_flags)
from tests.test_crash_safety import TMP_MARK, _assert_same_params, _leftovers, _steps


def _snapshot(directory: pathlib.Path) -> dict[str, tuple[int, int, bytes]]:
  return {str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns,
                                             path.read_bytes())
          for path in sorted(directory.rglob('*')) if path.is_file()}


class _Holder:
  """Another process holding a workdir's lock (and doing nothing else) until it is killed."""

  def __init__(self, workdir: pathlib.Path):
    code = ('import sys, time; from facialnet_jax.runtime import run_directory; '
            'lock = run_directory.hold(sys.argv[1]); lock.__enter__(); print("held", flush=True); '
            'time.sleep(600)')
    self.process = subprocess.Popen([sys.executable, '-c', code, str(workdir)], cwd=REPO_ROOT,
                                    stdout=subprocess.PIPE, text=True)
    assert self.process.stdout.readline() == 'held\n'

  def kill(self) -> None:
    if self.process.poll() is None:
      self.process.kill()
    self.process.wait()
    self.process.stdout.close()


def _lock_elsewhere(workdir: pathlib.Path) -> subprocess.CompletedProcess:
  """Another process's attempt to hold `workdir` (its status is 0 when it could)."""
  code = ('import sys; from facialnet_jax.runtime import run_directory; '
          'run_directory.hold(sys.argv[1]).__enter__()')
  return subprocess.run([sys.executable, '-c', code, str(workdir)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=60, check=False)


# ---------------------------------------------------------------------------------------------
# One run per workdir.


def test_second_launch_on_a_busy_workdir_fails_fast_naming_the_holder_and_touches_nothing(
    tmp_path):
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '2').mkdir(parents=True)
  (workdir / 'checkpoints' / '2' / 'state').write_bytes(b'first run')
  (workdir / 'config.json').write_text('{"first": "run"}')
  with run_directory.hold(str(workdir)):
    before = _snapshot(workdir)
    second = run_launch('--config', 'configs/synthetic.py', '--workdir', str(workdir),
                        *tiny_flags())
    assert _snapshot(workdir) == before
  assert second.returncode == 1, second.stderr[-3000:]
  errors = [line for line in second.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [second.stderr.strip().splitlines()[-1]]
  assert errors[0].startswith(
      f'error: {workdir} is in use by another run (PID {os.getpid()} on '
      f'{socket.gethostname()}, started 20'), errors[0]
  assert errors[0].endswith('); wait for it to finish, stop it, or use another --workdir.')
  assert 'Data:' not in second.stderr  # it stopped before loading anything


def test_a_killed_runs_lock_does_not_block_and_nested_holds_do_not_block_themselves(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  holder = _Holder(workdir)
  try:
    with pytest.raises(run_directory.WorkdirBusy, match=f'PID {holder.process.pid} on '):
      with run_directory.hold(str(workdir)):
        pass
    # A cross-validation fold held by another process is refused before any data is read.
    (tmp_path / 'cv' / 'fold_0').mkdir(parents=True)
    fold = _Holder(tmp_path / 'cv' / 'fold_0')
    try:
      config = tiny_config(**{'data.source': 'tfds', 'data.demo': True,
                              'data.data_dir': str(tmp_path / 'no_data_here')})
      with pytest.raises(run_directory.WorkdirBusy, match=f'cv/fold_0 is in use .*PID '
                         f'{fold.process.pid} '):
        cross_validate.cross_validate(config, str(tmp_path / 'cv'), folds=[0])
    finally:
      fold.kill()
    assert not (tmp_path / 'no_data_here').exists()
  finally:
    holder.kill()
  assert holder.process.returncode == -signal.SIGKILL
  assert (workdir / run_directory.LOCK_FILE).exists()  # the file stays; its lock went with PID
  with run_directory.hold(str(workdir)):
    assert json.loads((workdir / run_directory.LOCK_FILE).read_text())['pid'] == os.getpid()
    with run_directory.hold(str(workdir)):  # e.g. cross_validate's fold lock, then training's
      pass
    attempt = _lock_elsewhere(workdir)  # still held by the outer block
    assert attempt.returncode == 1 and 'WorkdirBusy' in attempt.stderr, attempt.stderr
  assert _lock_elsewhere(workdir).returncode == 0


# ---------------------------------------------------------------------------------------------
# A full disk.


# One epoch of 8 steps, a checkpoint every 2: the save of step 4 fails, 2 is the last good one.
DISK_OVERRIDES = {'num_epochs': 1, 'checkpoint.every_steps': 2}
FAILED_STEP, LAST_GOOD = 4, 2


def _fill_disk_at_failed_step(monkeypatch, disk: pathlib.Path) -> None:
  """Before the save of FAILED_STEP, fills the file system of `disk` to the last byte."""
  real_save = checkpointing.RunCheckpoints.save

  def save(self, step, state, meta):
    if step == FAILED_STEP:
      self.wait()
      with open(disk / 'filler', 'wb') as f:
        os.posix_fallocate(f.fileno(), 0, os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize)
    real_save(self, step, state, meta)

  monkeypatch.setattr(checkpointing.RunCheckpoints, 'save', save)


def _fail_meta_write_at_failed_step(monkeypatch) -> None:
  """Orbax's background write of FAILED_STEP's meta file raises ENOSPC, as a full disk would."""
  real_save_fn = ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  async def save_fn(self, item, directory):
    if f'/{checkpointing.LATEST_DIR}/{FAILED_STEP}.' in str(directory):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    await real_save_fn(self, item, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, '_save_fn', save_fn)


@contextlib.contextmanager
def _small_disk(tmp_path, size: str):
  """W/checkpoints on its own file system of `size` (a tmpfs: needs root; skips otherwise)."""
  disk = tmp_path / 'run' / checkpointing.LATEST_DIR
  disk.mkdir(parents=True)
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(disk)],
                           capture_output=True, text=True, check=False)
  if mounted.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
  try:
    yield disk
  finally:
    subprocess.run(['umount', '-l', str(disk)], check=False)


@pytest.fixture
def checkpoints_on_small_disk(tmp_path):
  """W/checkpoints on its own 64 MB file system."""
  with _small_disk(tmp_path, '64m') as disk:
    yield disk


# After the failed write, orbax's background thread reports to an event loop that has closed;
# Python shows it when collected. Harmless: the failure has been reported and handled.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.slow
@pytest.mark.parametrize('fault', ['full tmpfs', 'injected ENOSPC'])
def test_full_disk_stops_with_one_line_and_a_rerun_resumes_from_the_last_good_checkpoint(
    fault, tmp_path, monkeypatch, caplog, request):
  workdir = tmp_path / 'run'
  config = tiny_config(**DISK_OVERRIDES)
  if fault == 'full tmpfs':
    disk = request.getfixturevalue('checkpoints_on_small_disk')
    _fill_disk_at_failed_step(monkeypatch, disk)
  else:
    _fail_meta_write_at_failed_step(monkeypatch)
  handlers = [signal.getsignal(s) for s in interrupts.SIGNALS]
  with pytest.raises(checkpointing.CheckpointWriteError) as failure:
    train.train_and_evaluate(config, str(workdir))
  assert [signal.getsignal(s) for s in interrupts.SIGNALS] == handlers
  message = str(failure.value)
  assert '\n' not in message
  latest = workdir / checkpointing.LATEST_DIR
  assert message.startswith(f'Writing the checkpoint of step {FAILED_STEP} to {latest} failed '
                            '(No space left on device); the file system at '), message
  assert message.endswith(f'The last good checkpoint is step {LAST_GOOD} ({latest}/{LAST_GOOD});'
                          ' once space is freed, run the same command to resume from it.')
  if fault == 'full tmpfs':
    assert re.search(f'the file system at {latest} has [^ ]+ (bytes|KB) free of 64.0 MB\\. ',
                     message), message
    # The warning before training: 64 MB cannot hold 3 + 1 checkpoints of this state.
    assert any(record.getMessage().startswith('Only ') and 'need about' in record.getMessage()
               for record in caplog.records)
    # Space freed: the filler goes, and the disk grows to hold the run's checkpoints.
    (disk / 'filler').unlink()
    subprocess.run(['mount', '-o', 'remount,size=256m', str(disk)], check=True)
  monkeypatch.undo()

  caplog.clear()
  with caplog.at_level('INFO'):
    train.train_and_evaluate(config, str(workdir))
  assert any(record.getMessage().startswith(f'Resuming from the checkpoint at step {LAST_GOOD} ')
             for record in caplog.records)
  assert _leftovers(workdir) == []  # the failed save's tmp folder was removed at the start
  assert _steps(latest)[-1] == 8

  # Readers consider finished saves only: a save in progress (a tmp folder) is not 'latest'.
  (latest / f'10{TMP_MARK}' / 'meta').mkdir(parents=True)
  assert restore.restore_run(str(workdir), restore.LATEST).step == 8


@pytest.mark.slow
def test_full_disk_on_the_command_line_is_one_error_line_last_without_tracebacks(tmp_path):
  """A real full disk under launch.py (W/checkpoints is a 40 MB tmpfs: the second save does not
  fit): exit status 1, no traceback on stderr, the error line last, orbax's reports in
  W/errors.log; after space is freed the same command resumes and finishes."""
  workdir = tmp_path / 'run'
  with _small_disk(tmp_path, '40m') as disk:
    flags = ['--config', str(REPO_ROOT / 'configs' / 'synthetic.py'), '--workdir', str(workdir),
             *tiny_flags(**{'num_epochs': 1, 'checkpoint.every_steps': 2})]
    failed = run_launch(*flags)
    assert failed.returncode == 1
    assert 'Traceback' not in failed.stderr, failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith('error: Writing the checkpoint of step 4 to ') and 'No space left' in last
    assert 'Traceback' in (workdir / run_directory.ERRORS_FILE).read_text()
    subprocess.run(['mount', '-o', 'remount,size=256m', str(disk)], check=True)
    resumed = run_launch(*flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'Resuming from the checkpoint at step 2 ' in resumed.stderr


# ---------------------------------------------------------------------------------------------
# SIGTERM and Ctrl-C.


def test_a_second_signal_has_the_default_effect_and_handlers_are_restored():
  before = [signal.getsignal(s) for s in interrupts.SIGNALS]
  with interrupts.StopSignals() as stop_signals:
    assert not stop_signals.stop_now(at_boundary=False)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop_signals.stop_now(at_boundary=False) and stop_signals.name == 'SIGINT'
    assert [signal.getsignal(s) for s in interrupts.SIGNALS] == [signal.SIG_DFL] * 2
  assert [signal.getsignal(s) for s in interrupts.SIGNALS] == before


# 2 epochs of 8 steps; the loop's stops are every 4 steps (checkpoints) and 8 (logs, epochs), so
# a signal soon after checkpoint 4 lands between stops, and the run stops within one step.
SIGTERM_OVERRIDES = {'num_epochs': 2, 'checkpoint.every_steps': 4, 'log_every_steps': 8}
SIGTERM_ARGS = ('--config', 'configs/synthetic.py', *tiny_flags(**SIGTERM_OVERRIDES))
TOTAL_STEPS = 16


@pytest.mark.slow
def test_sigterm_saves_where_it_stops_and_the_rerun_ends_bit_for_bit_like_an_uninterrupted_run(
    tmp_path):
  reference, interrupted = tmp_path / 'uninterrupted', tmp_path / 'interrupted'
  argv, options = launch_command('--workdir', str(reference), *SIGTERM_ARGS)
  with open(tmp_path / 'uninterrupted.log', 'w') as reference_log:
    reference_run = subprocess.Popen(argv, **options, stdout=reference_log,
                                     stderr=subprocess.STDOUT)
    try:
      argv, options = launch_command('--workdir', str(interrupted), *SIGTERM_ARGS)
      log_path = tmp_path / 'interrupted.log'
      with open(log_path, 'w') as log:
        run = subprocess.Popen(argv, **options, stdout=log, stderr=subprocess.STDOUT)
        try:
          deadline = time.monotonic() + 300
          while 4 not in _steps(interrupted / 'checkpoints'):
            assert run.poll() is None and time.monotonic() < deadline, 'no checkpoint 4'
            time.sleep(0.01)
          run.send_signal(signal.SIGTERM)
          run.wait(timeout=300)
        finally:
          if run.poll() is None:
            run.kill()
            run.wait()
      stderr = log_path.read_text()
      assert run.returncode == 128 + signal.SIGTERM, stderr[-3000:]
      last_line = stderr.strip().splitlines()[-1]
      stopped_at = int(last_line.split(' at step ')[1].split(';')[0])
      print('stopped at step', stopped_at)
      assert 4 <= stopped_at < TOTAL_STEPS
      assert last_line == (f'error: Stopped by SIGTERM at step {stopped_at}; checkpoint saved in '
                           f'{interrupted}/checkpoints/{stopped_at}. Run the same command to '
                           'resume.')
      assert _steps(interrupted / 'checkpoints')[-1] == stopped_at
      assert not (interrupted / run_directory.RESULTS_FILE).exists()

      resumed = run_launch('--workdir', str(interrupted), *SIGTERM_ARGS)
      assert resumed.returncode == 0, resumed.stderr[-3000:]
      assert f'Resuming from the checkpoint at step {stopped_at} ' in resumed.stderr
      assert reference_run.wait(timeout=600) == 0, (tmp_path / 'uninterrupted.log').read_text()
    finally:
      if reference_run.poll() is None:
        reference_run.kill()
        reference_run.wait()

  # As in the SIGKILL test: the same steps from the same bits, so equality, not a tolerance.
  _assert_same_params(final_params(interrupted), final_params(reference))
  results = json.loads((interrupted / run_directory.RESULTS_FILE).read_text())
  expected = json.loads((reference / run_directory.RESULTS_FILE).read_text())
  del results['timing'], expected['timing']  # seconds differ; every metric must not
  assert results == expected
