"""Runs the README's commands after the quick start, as written, on the real data in ../shared.

Every command of the README's ```bash blocks runs in a scratch copy of the repository (so the
checkout stays clean) with the virtual environment active (`.venv` linked in) and an empty home
(the real cache kept) whose `~/adience` is ../shared/data/adience-mini and `~/utkface`
../shared/data/utkface, in the
README's order, so that each command finds what the ones before it made. The first command that
fails stops the script with exit status 1 and its output.

What is changed, and why (each is printed beside the command it changes):
- A training (`launch.py`, `facialnet_jax.cross_validate`) runs 1 epoch (`--config.num_epochs=1`
  appended), and a cross-validation folds 0 and 1 (`--folds=0,1`; the report then has two
  rows): the point is that the command runs, not a 100-epoch model.
- `facialnet_jax.benchmark` times one short window per measurement.
- `pip install -e '.[EXTRA]'` resolves with `--dry-run`: the venv already holds every extra the
  tests need, and a real editable install from the scratch copy would re-point the venv at it.
- `[--optional flags]` in brackets are left out.
- `photo.jpg`, `photos/` and `clip.mp4` are made from fairface-dev photos before the first
  command.
Skipped sections, with the reason printed: the quick start (CI runs it), "On a GPU" (CUDA),
"Several hosts" (a cluster), and lines naming `/path/to/` (a PyTorch venv).

Usage: `.venv/bin/python .ci/readme_commands.py [VENV]` from the repository root; VENV (default
`.venv`) is the environment the commands run in (CI: `.ci/run` runs them in `.venv312`).
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / 'shared' / 'data'
SKIPPED_SECTIONS = {
    'Quick start': 'CI runs the quick start itself',
    'On a GPU': 'needs a CUDA machine',
    'Several hosts': 'needs a cluster',
}
COMMAND_TIMEOUT_SECONDS = 1800


def readme_commands(readme: str) -> list[tuple[str, str]]:
  """(section, command) for each command of the README's ```bash blocks, comments removed and
  backslash-continued lines joined."""
  commands, section, in_block, pending = [], '', False, ''
  for line in readme.splitlines():
    if not in_block and line.startswith('#'):
      section = line.lstrip('#').strip()
    elif line.startswith('```'):
      in_block = not in_block and line.strip() == '```bash'
    elif in_block:
      code = re.sub(r'(^|\s)#.*$', '', line).rstrip()
      if code.endswith('\\'):
        pending += code[:-1] + ' '
        continue
      command = ' '.join((pending + code).split())
      pending = ''
      if command:
        commands.append((section, command))
  return commands


def adapted(command: str) -> tuple[str, list[str]]:
  """The command as this script runs it, and the changes made (see the module docstring)."""
  changes = []
  without_optional = re.sub(r'\s*\[--[^\]]*\]', '', command)
  if without_optional != command:
    changes.append('optional [flags] left out')
  command = without_optional
  if re.search(r'\bpip install\b', command):
    command = command.replace('pip install', 'pip install --dry-run --quiet', 1)
    changes.append('pip --dry-run')
  if 'launch.py' in command or 'facialnet_jax.cross_validate' in command:
    command += ' --config.num_epochs=1'
    changes.append('1 epoch')
  if 'facialnet_jax.cross_validate' in command:
    command += ' --folds=0,1'
    changes.append('folds 0 and 1')
  if 'facialnet_jax.benchmark' in command:
    command += ' --windows=1 --window_seconds=0.5'
    changes.append('one short timing window')
  return command, changes


def make_inputs(root: pathlib.Path) -> None:
  """photo.jpg, photos/ (three photos) and clip.mp4 (2 s of photos at 10 fps) in `root`."""
  import cv2  # pylint: disable=g-import-not-at-top
  photos = sorted((SHARED_DATA / 'fairface-dev').glob('*.jpg'))
  shutil.copy(photos[0], root / 'photo.jpg')
  (root / 'photos').mkdir()
  for photo in photos[1:4]:
    shutil.copy(photo, root / 'photos' / photo.name)
  writer = cv2.VideoWriter(os.fspath(root / 'clip.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), 10,
                           (320, 320))
  for photo in photos[:20]:
    writer.write(cv2.resize(cv2.imread(os.fspath(photo)), (320, 320)))
  writer.release()


def scratch_copy(scratch: pathlib.Path, venv: pathlib.Path) -> pathlib.Path:
  """The repository's files (tracked and untracked, not ignored) under scratch/repo, `venv`
  linked as its .venv, ../shared beside it, and an empty home with the raw data where the
  README puts it."""
  repo = scratch / 'repo'
  listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                          cwd=REPO, check=True, capture_output=True).stdout.decode().split('\0')
  for name in filter(None, listed):
    source = REPO / name
    if source.is_file():
      (repo / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, repo / name)
  (repo / '.venv').symlink_to(venv)
  (scratch / 'shared').symlink_to(REPO.parent / 'shared')
  home = scratch / 'home'
  home.mkdir()
  (home / 'adience').symlink_to(SHARED_DATA / 'adience-mini')
  (home / 'utkface').symlink_to(SHARED_DATA / 'utkface')
  return repo


def main(argv: list[str]) -> int:
  venv = (REPO / (argv[1] if len(argv) > 1 else '.venv')).resolve()
  if not (venv / 'bin' / 'python').exists():
    print(f'error: {venv} is not a virtual environment; make it as the README says first.')
    return 1
  if not SHARED_DATA.is_dir():
    print(f'error: {SHARED_DATA} is not there; this script runs the README on its data.')
    return 1
  commands = readme_commands((REPO / 'README.md').read_text())
  with tempfile.TemporaryDirectory(prefix='readme_commands_') as scratch_name:
    scratch = pathlib.Path(scratch_name)
    repo = scratch_copy(scratch, venv)
    make_inputs(repo)
    venv_bin = venv / 'bin'
    # An empty home, but the real cache: compiled XLA programs and the oneDNN build are reused
    # (a new user compiles them once; CI need not pay that again for each command).
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
    env = {**os.environ, 'HOME': os.fspath(scratch / 'home'), 'XDG_CACHE_HOME': cache,
           'VIRTUAL_ENV': os.fspath(venv),
           'PATH': os.pathsep.join([os.fspath(venv_bin), os.environ.get('PATH', '')])}
    env.pop('PYTHONPATH', None)
    ran = 0
    started = time.monotonic()
    for section, command in commands:
      if section in SKIPPED_SECTIONS or '/path/to/' in command:
        why = SKIPPED_SECTIONS.get(section, 'needs a PyTorch venv')
        print(f'skipped ({section}: {why}): {command}', flush=True)
        continue
      to_run, changes = adapted(command)
      note = f'   [{"; ".join(changes)}]' if changes else ''
      print(f'$ {command}{note}', flush=True)
      begin = time.monotonic()
      result = subprocess.run(['bash', '-c', to_run], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT_SECONDS, check=False)
      print(f'  rc {result.returncode}, {time.monotonic() - begin:.0f} s', flush=True)
      if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        print('\n'.join(output[-40:]))
        print(f'error: the README command in section "{section}" failed: {command}\n'
              f'(run as: {shlex.quote(to_run)})')
        return 1
      ran += 1
  print(f'The README\'s {ran} commands ran as written in {time.monotonic() - started:.0f} s '
        f'({venv.name}).')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
