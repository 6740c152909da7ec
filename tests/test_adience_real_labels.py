"""The official Adience label files (../shared/data/adience): all 19,487 rows parse, map to the
documented counts, and the folds are subject-exclusive."""

import collections
import pathlib

import pytest

from facialnet_jax.data import adience_files
from facialnet_jax.data import age_groups

ADIENCE_LABELS = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'adience'
pytestmark = pytest.mark.skipif(not ADIENCE_LABELS.is_dir(),
                                reason='needs ../shared/data/adience (the real label files)')


@pytest.fixture(scope='module')
def rows():
  rows, malformed = adience_files.read_folds(ADIENCE_LABELS)
  assert malformed == []
  return rows


def test_all_rows_parse(rows):
  assert len(rows) == 19487
  assert collections.Counter(row.fold for row in rows) == {0: 4496, 1: 3745, 2: 3953, 3: 3459,
                                                           4: 3834}


def test_age_group_counts_after_mapping(rows):
  counts = collections.Counter(age_groups.age_group_from_label(row.age_label) for row in rows)
  by_name = {age_groups.AGE_GROUP_NAMES[group] if group >= 0 else 'unknown': count
             for group, count in counts.items()}
  assert by_name == {'0-2': 2522, '4-6': 2163, '8-13': 2301, '15-20': 1655, '25-32': 5114,
                     '38-43': 2351, '48-53': 830, '60-100': 875, 'unknown': 1676}


def test_gender_counts_after_mapping(rows):
  counts = collections.Counter(age_groups.gender_from_label(row.gender_label) for row in rows)
  assert counts == {0: 8192, 1: 9411, -1: 1884}  # -1: 1,100 'u' and 784 empty.


def test_every_age_string_is_one_the_mapping_was_checked_against(rows):
  # A new string in a future release of the files must be looked at, not silently mapped.
  from tests.test_age_groups import ADIENCE_AGE_STRINGS  # pylint: disable=import-outside-toplevel
  assert {row.age_label for row in rows} == set(ADIENCE_AGE_STRINGS)


def test_no_user_id_in_two_folds(rows):
  folds_of_user = collections.defaultdict(set)
  for row in rows:
    folds_of_user[row.user_id].add(row.fold)
  assert all(len(folds) == 1 for folds in folds_of_user.values())
  assert len(folds_of_user) > 100


def test_repeated_lines_name_the_same_image(rows):
  """117 rows repeat an earlier row's image: the builder drops them as duplicate_row."""
  paths = collections.Counter(row.image_path('faces') for row in rows)
  assert sum(count - 1 for count in paths.values()) == 117
  assert len(paths) == 19370

