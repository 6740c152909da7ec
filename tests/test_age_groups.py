"""The age-group and gender mapping: boundaries, every Adience age string, UTKFace's counts."""

import collections
import pathlib

import pytest

from facialnet_jax.data import age_groups

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data'

# Every age string in the official fold files, with the group it must map to (-1: none).
ADIENCE_AGE_STRINGS = {
    '(0, 2)': '0-2', '(4, 6)': '4-6', '(8, 12)': '8-13', '(15, 20)': '15-20',
    '(25, 32)': '25-32', '(38, 43)': '38-43', '(48, 53)': '48-53', '(60, 100)': '60-100',
    '(27, 32)': '25-32', '(38, 42)': '38-43', '(25, 23)': '25-32',
    '(38, 48)': None, '(8, 23)': None, 'None': None,
    '2': '0-2', '3': None, '13': '8-13', '22': None, '23': None, '29': '25-32', '32': '25-32',
    '34': None, '35': None, '36': None, '42': '38-43', '45': None, '46': None, '55': None,
    '56': None, '57': None, '58': None,
}


def test_constants():
  assert age_groups.AGE_GROUP_NAMES == ('0-2', '4-6', '8-13', '15-20', '25-32', '38-43',
                                        '48-53', '60-100')
  assert age_groups.GENDER_NAMES == ('m', 'f')


@pytest.mark.parametrize('years, group', [
    (0, '0-2'), (2, '0-2'), (3, None), (4, '4-6'), (6, '4-6'), (7, None), (8, '8-13'),
    (13, '8-13'), (14, None), (15, '15-20'), (20, '15-20'), (21, None), (24, None),
    (25, '25-32'), (32, '25-32'), (33, None), (37, None), (38, '38-43'), (43, '38-43'),
    (44, None), (47, None), (48, '48-53'), (53, '48-53'), (54, None), (59, None),
    (60, '60-100'), (100, '60-100'), (116, '60-100'), (-1, None)])
def test_age_group_from_years(years, group):
  expected = age_groups.AGE_GROUP_NAMES.index(group) if group else -1
  assert age_groups.age_group_from_years(years) == expected


@pytest.mark.parametrize('age_string, group', sorted(ADIENCE_AGE_STRINGS.items()))
def test_every_adience_age_string(age_string, group):
  expected = age_groups.AGE_GROUP_NAMES.index(group) if group else -1
  assert age_groups.age_group_from_label(age_string) == expected


@pytest.mark.parametrize('age_string', ['', '  ', 'unknown', '(25,32', '25-32', '(a, b)', '-5'])
def test_unparseable_age_strings_have_no_group(age_string):
  assert age_groups.age_group_from_label(age_string) == -1


def test_age_string_spacing_does_not_matter():
  assert age_groups.age_group_from_label(' (25,32) ') == age_groups.AGE_GROUP_NAMES.index('25-32')


@pytest.mark.parametrize('gender_string, expected',
                         [('m', 0), ('f', 1), ('M', 0), (' f ', 1), ('u', -1), ('', -1),
                          ('x', -1)])
def test_gender_from_label(gender_string, expected):
  assert age_groups.gender_from_label(gender_string) == expected


@pytest.mark.skipif(not (SHARED_DATA / 'utkface').is_dir(), reason='needs ../shared/data/utkface')
def test_utkface_ages_map_to_the_counts_in_the_data_readme():
  counts = collections.Counter()
  for path in (SHARED_DATA / 'utkface').iterdir():
    fields = path.name.split('_')
    if len(fields) == 4:  # The three malformed names (race missing) are left out there too.
      counts[age_groups.age_group_from_years(int(fields[0]))] += 1
  assert [counts[group] for group in range(8)] == [1057, 409, 561, 785, 4393, 1108, 806, 1724]
  assert counts[-1] == 4558
