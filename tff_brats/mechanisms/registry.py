"""Every privacy mechanism of the package, by name.

`MECHANISMS` lists the classes; flags offer their names and hparams.json
stores `to_dict()`, which `from_dict` reads back. Lookup by name happens
only here.
"""

from __future__ import annotations

from typing import Any

from tff_brats.mechanisms import base
from tff_brats.mechanisms import dp_sgd
from tff_brats.mechanisms import gaussian
from tff_brats.mechanisms import no_privacy
from tff_brats.mechanisms import selective_sharing
from tff_brats.mechanisms import sparse_vector

MECHANISMS: tuple[type[base.PrivacyMechanism], ...] = (
  no_privacy.NoPrivacy,
  selective_sharing.SelectiveSharing,
  sparse_vector.SparseVector,
  gaussian.Gaussian,
  dp_sgd.DpSgd,
)
NAMES = tuple(m.name for m in MECHANISMS)
_BY_NAME = {m.name: m for m in MECHANISMS}


def get(name: str) -> type[base.PrivacyMechanism]:
  """The mechanism class called `name`.

  Raises:
    ValueError: No mechanism has that name.
  """
  if name not in _BY_NAME:
    raise ValueError(
      f'privacy_mechanism must be one of {", ".join(NAMES)}. Found {name!r}.'
    )
  return _BY_NAME[name]


def from_dict(data: Any) -> base.PrivacyMechanism:
  """The mechanism that `to_dict()` wrote.

  Raises:
    ValueError: Not such a dict, an unknown name or parameter, or an
      invalid value.
  """
  if not isinstance(data, dict) or 'name' not in data:
    raise ValueError(f'mechanism must be a dict with a name. Found {data!r}.')
  parameters = dict(data)
  return get(parameters.pop('name')).from_parameters(parameters)
