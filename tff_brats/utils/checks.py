"""Argument checks shared by the library, with one message pattern.

Messages follow tensorflow_privacy's pattern, naming the argument and the
value: `'crops_per_case must be a positive integer. Found 0.'`.
"""

from __future__ import annotations

from collections.abc import Iterable
import numbers
import operator
from typing import Any

import numpy as np


def is_int(value: Any) -> bool:
  """Whether `value` is an integer (Python or numpy), bools excluded."""
  if isinstance(value, bool | np.bool_):
    return False
  try:
    operator.index(value)
  except TypeError:
    return False
  return True


def is_number(value: Any) -> bool:
  """Whether `value` is a real number (Python or numpy), bools excluded."""
  return isinstance(value, numbers.Real) and not isinstance(
    value, bool | np.bool_
  )


def check_positive_int(name: str, value: Any) -> None:
  """Raises ValueError unless `value` is an integer >= 1."""
  if not is_int(value) or value < 1:
    raise ValueError(f'{name} must be a positive integer. Found {value!r}.')


def check_non_negative_int(name: str, value: Any) -> None:
  """Raises ValueError unless `value` is an integer >= 0."""
  if not is_int(value) or value < 0:
    raise ValueError(f'{name} must be a non-negative integer. Found {value!r}.')


def check_positive_number(name: str, value: Any) -> None:
  """Raises ValueError unless `value` is a finite real number > 0."""
  if not is_number(value) or not 0 < value < float('inf'):
    raise ValueError(f'{name} must be a positive number. Found {value!r}.')


def check_non_negative_number(name: str, value: Any) -> None:
  """Raises ValueError unless `value` is a finite real number >= 0."""
  if not is_number(value) or not 0 <= value < float('inf'):
    raise ValueError(f'{name} must be a non-negative number. Found {value!r}.')


def check_fraction(name: str, value: Any) -> None:
  """Raises ValueError unless `value` is a real number in (0, 1]."""
  if not is_number(value) or not 0 < value <= 1:
    raise ValueError(f'{name} must be in (0, 1]. Found {value!r}.')


def check_probability(name: str, value: Any) -> None:
  """Raises ValueError unless `value` is a real number in [0, 1]."""
  if not is_number(value) or not 0 <= value <= 1:
    raise ValueError(f'{name} must be in [0, 1]. Found {value!r}.')


def check_bool(name: str, value: Any) -> None:
  """Raises ValueError unless `value` is a bool (Python or numpy)."""
  if not isinstance(value, bool | np.bool_):
    raise ValueError(f'{name} must be a bool. Found {value!r}.')


def check_one_of(name: str, value: Any, choices: Iterable[Any]) -> None:
  """Raises ValueError unless `value` is one of `choices`."""
  choices = tuple(choices)
  if isinstance(value, bool) or value not in choices:
    names = ', '.join(str(c) for c in choices)
    raise ValueError(f'{name} must be one of {names}. Found {value!r}.')
