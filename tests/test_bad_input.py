"""Every bad input a user can give answered by one clear line: the table below is the coverage.

Each row: what the user does → the message they must see (a regex) and the exit status.
No row may print a traceback.
"""

import re

import pytest

from tests.conftest import run_launch, tiny_flags

SYNTHETIC = ('--config', 'configs/synthetic.py')
ADIENCE = ('--config', 'configs/adience.py')

# (case, launch.py arguments after --workdir, simulated devices, expected message, exit status)
LAUNCH_CASES = [
    ('unknown config key', (*SYNTHETIC, '--config.optimizer.learning_rat=0.1'), 1,
     r'Did you mean "learning_rate" instead of "learning_rat"\?', 2),
    ('wrong type for a key', (*SYNTHETIC, '--config.batch_size=abc'), 1,
     r"--config.batch_size=abc: invalid literal for int\(\)", 2),
    ('config file that does not exist', ('--config', 'configs/no_such_config.py'), 1,
     r"No such file or directory: 'configs/no_such_config.py'", 2),
    ('negative learning rate', (*SYNTHETIC, '--config.optimizer.learning_rate=-1'), 1,
     r'config.optimizer.learning_rate=-1.0 must not be negative', 1),
    ('unknown schedule', (*SYNTHETIC, '--config.schedule.name=exponential'), 1,
     r"config.schedule.name='exponential' is not one of constant, piecewise, cosine, plateau", 1),
    ('batch size that does not split across devices', (*SYNTHETIC, *tiny_flags(batch_size=25)),
     8, r'config.batch_size=25 does not split across the 8 devices of this run; use a multiple '
     r'of 8 \(for example --config.batch_size=24\)', 1),
    ('data set that has not been built', (*ADIENCE, '--config.data.data_dir={tmp}/no_data'), 1,
     r'The data set tfds_adience/gray75 has not been built in .*no_data; build it with `tfds '
     r'build tfds_adience --config gray75 --manual_dir DIR --data_dir .*no_data`', 1),
    ('test fold that does not exist', (*ADIENCE, '--config.data.test_fold=5'), 1,
     r'config.data.test_fold=5 does not exist; use 0..4 \(or -1 for named', 1),
]


@pytest.mark.parametrize('case, args, devices, expected, status', LAUNCH_CASES,
                         ids=[case[0] for case in LAUNCH_CASES])
def test_launch_answers_bad_input_in_one_line(tmp_path, case, args, devices, expected, status):
  del case
  args = [a.replace('{tmp}', str(tmp_path)) for a in args]
  finished = run_launch('--workdir', str(tmp_path / 'run'), *args, devices=devices)
  assert finished.returncode == status, finished.stderr[-2000:]
  assert 'Traceback' not in finished.stderr, finished.stderr[-2000:]
  last_line = finished.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: ')
  assert re.search(expected, last_line), last_line


def test_workdir_that_cannot_be_written(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  finished = run_launch('--workdir', str(blocker / 'run'), *SYNTHETIC)
  assert finished.returncode == 1
  assert 'Traceback' not in finished.stderr
  assert re.search(r'error: --workdir .*a_file/run cannot be written \(Not a directory\); '
                   r'choose a directory you can write to', finished.stderr)
