"""The guarantee of one round as a dp_accounting `DpEvent`, and its JSON form.

Mechanisms and accounting meet through `DpEvent`s (dp_accounting): every
mechanism states what one round guarantees one client as an event, and the
accountant composes events. dp_accounting 0.4.3 has events for the Gaussian
and Laplace mechanisms, sampling, composition, `NoOpDpEvent` and
`NonPrivateDpEvent` (no guarantee), but none for a mechanism that is known
only by its (ε, δ) guarantee, such as one round of the sparse vector
technique (Lyu, Su & Li 2017), whose privacy loss is not a Laplace
mechanism's. `EpsilonDeltaDpEvent` is that event; `tff_brats.privacy.
accounting` composes it with the privacy-loss distribution that dominates
every (ε, δ)-DP mechanism (Kairouz, Oh & Viswanath 2015).

JSON. `event_to_dict` / `event_from_dict` use dp_accounting's own
`to_named_tuple` / `from_named_tuple` and write each named tuple as a dict
`{"class_name": ..., <field>: ...}`. Only dp_accounting's event classes and
`EpsilonDeltaDpEvent` are read back: a file never names a module to import.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import attr
import dp_accounting
from dp_accounting import dp_event as dp_event_lib
import numpy as np

from tff_brats.utils import checks


@attr.s(frozen=True)
class EpsilonDeltaDpEvent(dp_event_lib.DpEvent):
  """A mechanism known by its (ε, δ)-DP guarantee alone.

  Attributes:
    epsilon: ε >= 0 (finite; use `NonPrivateDpEvent` for no guarantee).
    delta: δ in [0, 1); 0 for pure ε-DP.
  """

  epsilon = attr.ib()
  delta = attr.ib(default=0.0)

  def __attrs_post_init__(self):
    if not checks.is_number(self.epsilon) or not 0 <= self.epsilon < math.inf:
      raise ValueError(
        f'epsilon must be a finite non-negative number. Found {self.epsilon!r}.'
      )
    if not checks.is_number(self.delta) or not 0 <= self.delta < 1:
      raise ValueError(f'delta must be in [0, 1). Found {self.delta!r}.')


_CLASSES = {
  cls.__name__: cls
  for cls in (
    *(
      value
      for value in vars(dp_event_lib).values()
      if isinstance(value, type) and issubclass(value, dp_event_lib.DpEvent)
    ),
    EpsilonDeltaDpEvent,
  )
}


def is_non_private(event: dp_accounting.DpEvent) -> bool:
  """Whether `event` makes no DP claim (ε = ∞)."""
  return isinstance(event, dp_accounting.NonPrivateDpEvent)


def event_to_dict(event: dp_accounting.DpEvent) -> dict[str, Any]:
  """`event` as a JSON-ready dict (numbers as Python numbers, ∞ as 'inf').

  Raises:
    ValueError: `event` is not one of the readable classes (see the module
      docstring) or not serialisable.
  """
  if not isinstance(event, dp_event_lib.DpEvent):
    raise ValueError(
      f'dp_event must be a dp_accounting DpEvent. Found {event!r}.'
    )
  try:
    named = event.to_named_tuple()
  except ValueError as e:
    raise ValueError(
      f'dp_event must be serialisable. Found {event!r}: {e}'
    ) from None
  return _plain(named)


def event_from_dict(data: Any) -> dp_accounting.DpEvent:
  """Inverse of `event_to_dict`.

  Raises:
    ValueError: `data` does not describe an event of a readable class, or
      its fields do not fit the class.
  """
  return dp_accounting.DpEvent.from_named_tuple(_named(data))


def canonical(event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
  """`event` with every number a Python number (numpy scalars converted)."""
  return event_from_dict(event_to_dict(event))


def _plain(value):
  if isinstance(value, dp_event_lib.DpEventNamedTuple):
    if _CLASSES.get(value.class_name) is None or (
      _CLASSES[value.class_name].__module__ != value.module_name
    ):
      raise ValueError(
        'dp_event must be a dp_accounting event or EpsilonDeltaDpEvent. Found '
        f'{value.module_name}.{value.class_name}.'
      )
    out = {'class_name': value.class_name}
    for field in value._fields:
      if field not in ('module_name', 'class_name'):
        out[field] = _plain(getattr(value, field))
    return out
  if isinstance(value, list | tuple):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic | np.ndarray):
    value = value.item()
  if value is None or isinstance(value, bool | int | str):
    return value
  if isinstance(value, float):
    if math.isnan(value):
      raise ValueError('dp_event fields must not be NaN. Found nan.')
    if math.isinf(value):
      return 'inf' if value > 0 else '-inf'
    return value
  raise ValueError(f'dp_event fields must be numbers. Found {value!r}.')


def _named(data):
  """A dict of `_plain` as the named tuple dp_accounting reads."""
  if not isinstance(data, dict) or data.get('class_name') not in _CLASSES:
    raise ValueError(
      f'dp_event must name a dp_accounting DpEvent class. Found {data!r}.'
    )
  cls = _CLASSES[data['class_name']]
  fields = {f.name for f in attr.fields(cls)}
  given = set(data) - {'class_name'}
  if given != fields:
    raise ValueError(
      f'dp_event fields must be {sorted(fields)} for {cls.__name__}. '
      f'Found {sorted(given)}.'
    )
  values = {'module_name': cls.__module__, 'class_name': cls.__name__}
  for field in sorted(fields):
    values[field] = _value(data[field])
  named_tuple = collections.namedtuple(f'_{cls.__name__}Named', list(values))
  try:
    return named_tuple(**values)
  except TypeError as e:
    raise ValueError(f'dp_event fields do not match its class: {e}') from None


def _value(value):
  if isinstance(value, dict):
    return _named(value)
  if isinstance(value, list):
    return [_value(v) for v in value]
  if value == 'inf':
    return math.inf
  if value == '-inf':
    return -math.inf
  return value
