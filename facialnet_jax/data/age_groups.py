"""The eight Adience age groups and two genders, and the mapping of raw labels onto them.

Mapping rules (tested against every age string in the official Adience fold files):

* The groups are 0-2, 4-6, 8-13, 15-20, 25-32, 38-43, 48-53 and 60-100, in years, inclusive.
  60-100 is open-ended: any age of 60 or more belongs to it (UTKFace goes up to 116).
* An exact age in years (UTKFace's ages, Adience's bare-year strings such as ``'35'``) maps to the
  group that contains it, or to -1 when it falls between two groups (3, 7, 14, 21-24, 33-37,
  44-47, 54-59). We do not snap to the nearest group: a 35-year-old is as far from 25-32 as
  from 38-43, and guessing would put label noise into the very groups the model confuses most.
* A range string ``'(lo, hi)'`` maps to the group that contains the whole range: ``'(8, 12)'``
  (the official spelling of group 8-13), ``'(27, 32)'`` → 25-32 and ``'(38, 42)'`` → 38-43.
  A range that spans two groups maps to -1: ``'(38, 48)'`` (6 rows) and ``'(8, 23)'`` (1 row)
  could mean either neighbour.
* One known typo: ``'(25, 23)'`` (72 rows) is ``'(25, 32)'`` with the digits of 32 swapped, so
  it maps to 25-32. No other reversed range occurs; any other maps to -1.
* ``'None'``, an empty string and anything else that is not a year or a range map to -1.

Genders: ``'m'`` → 0, ``'f'`` → 1; ``'u'``, empty and anything else → -1.
"""

import re

AGE_GROUP_NAMES = ('0-2', '4-6', '8-13', '15-20', '25-32', '38-43', '48-53', '60-100')
GENDER_NAMES = ('m', 'f')  # as Adience's fold files spell them
NUM_AGE_GROUPS = len(AGE_GROUP_NAMES)
NUM_GENDERS = len(GENDER_NAMES)
# The label value for "no label": models mask these examples out of the loss of that head.
UNKNOWN = -1

# The two heads: the label key each is trained on, its class names as reports and predictions
# show them, and its number of classes.
HEADS = ('gender', 'age')
LABEL_KEYS = {'gender': 'gender', 'age': 'age_group'}
# Keys of a batch: uint8 images (B, S, S, C) and int32 labels, UNKNOWN where unknown.
BATCH_KEYS = ('image', *LABEL_KEYS.values())
GENDER_CLASS_NAMES = tuple({'m': 'male', 'f': 'female'}[g] for g in GENDER_NAMES)
AGE_CLASS_NAMES = AGE_GROUP_NAMES
CLASS_NAMES = {'gender': GENDER_CLASS_NAMES, 'age': AGE_CLASS_NAMES}
NUM_CLASSES = {head: len(names) for head, names in CLASS_NAMES.items()}

# Inclusive year bounds per group; the last group has no upper bound.
AGE_GROUP_YEARS = ((0, 2), (4, 6), (8, 13), (15, 20), (25, 32), (38, 43), (48, 53), (60, None))

# Adience typos whose meaning is clear, as (lo, hi) exactly as written in the fold files.
_ADIENCE_RANGE_TYPOS = {(25, 23): AGE_GROUP_NAMES.index('25-32')}

_YEARS_RE = re.compile(r'^\d+$')
_RANGE_RE = re.compile(r'^\(\s*(\d+)\s*,\s*(\d+)\s*\)$')


def age_group_from_years(years: int) -> int:
  """Returns the index of the age group that contains an exact age in years, else -1."""
  if years < 0:
    return UNKNOWN
  for group, (low, high) in enumerate(AGE_GROUP_YEARS):
    if low <= years and (high is None or years <= high):
      return group
  return UNKNOWN


def _age_group_from_range(low: int, high: int) -> int:
  if (low, high) in _ADIENCE_RANGE_TYPOS:
    return _ADIENCE_RANGE_TYPOS[(low, high)]
  if low > high:
    return UNKNOWN
  group = age_group_from_years(low)
  if group != UNKNOWN and age_group_from_years(high) == group:
    return group
  return UNKNOWN


def age_group_from_label(age_string: str) -> int:
  """Returns the age group index for an Adience age string (see the module docstring), else -1."""
  text = age_string.strip()
  if _YEARS_RE.match(text):
    return age_group_from_years(int(text))
  match = _RANGE_RE.match(text)
  if match:
    return _age_group_from_range(int(match.group(1)), int(match.group(2)))
  return UNKNOWN


def gender_from_label(gender_string: str) -> int:
  """Returns 0 for ``'m'``, 1 for ``'f'`` and -1 for anything else (``'u'``, empty, ...)."""
  text = gender_string.strip().lower()
  return GENDER_NAMES.index(text) if text in GENDER_NAMES else UNKNOWN
