"""Client-side privatisation of a model update: configurations and `privatize`.

Per client and round, on its update ΔW (all trainable tensors, N values)
and its local step count n (Li et al. 2019, "Privacy-preserving Federated
Brain Tumour Segmentation"):

1. optionally normalise by steps, w = ΔW / n;
2. clip every value to [-γ, γ];
3. c = ⌈q·N⌉, q the shared fraction;
4. `SelectiveSharing` (Shokri & Shmatikov 2015, "Privacy-preserving deep
   learning"): release the c values of largest |w| exactly, zero the rest.
   No differential-privacy claim;
5. `SparseVectorTechnique` (Lyu, Su & Li 2017, "Understanding the Sparse
   Vector Technique for Differential Privacy", VLDB; see `sparse_vector`):
   release at most c noisy values chosen by noisy threshold tests;
6. multiply back by n if normalised.

`NoPrivacy` returns the update unchanged, so callers treat the three modes
alike.

Guarantee. One `privatize` call with `SparseVectorTechnique` is (ε + ε3,
0)-differentially private for the client (ε = `selection_epsilon`, ε3 =
`release_epsilon`) with respect to any change of its local data that keeps
its step count n, because n is sent in the clear: it is the aggregation
weight and it rescales the release. A mode that sends a fixed public weight
instead of n (and does not normalise) removes this caveat. Selective
sharing and `NoPrivacy` make no claim (`epsilon_per_round` is +inf).

The report that `privatize` returns describes the client's data (e.g.
`clipped_fraction`, `released`, `noisy_threshold`) and is NOT privatised:
only `num_values`, `shared_count` and `epsilon` are public. Do not send the
rest to an untrusted server.

Randomness: see `randomness` (fresh OS entropy on every call by default; a
fixed seed is for reproducible experiments only and voids the guarantee in
a deployment, because the noise becomes predictable).

NVFlare's `SVTPrivacy` flaws (issues #343, #1214, #4470) are avoided: no
value is released without its noise, released coordinates are a subset
(no sampling with replacement, so q = 1 can release all N), the scan stops
at the c-th pass, and `epsilon` is the guarantee the noise gives.

Conventions: NaN values of the update are treated as 0 and ±inf are clipped
to ±γ (so the guarantee holds for any input); ties between equal
magnitudes in selective sharing go to the lowest flat index (in
`tf.nest.flatten` order, row-major within a tensor), as with
`tf.math.top_k`.
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import math
from typing import Any
from typing import ClassVar

import tensorflow as tf

from tff_brats.privacy import randomness
from tff_brats.privacy import selective_sharing
from tff_brats.privacy import sparse_vector
from tff_brats.privacy import structure
from tff_brats.utils import checks

REPORT_KEYS = (
  'released',
  'clipped_fraction',
  'noisy_threshold',
  'epsilon',
  'num_values',
  'shared_count',
  'passed',
)


@dataclasses.dataclass(frozen=True)
class NoPrivacy:
  """Sends the update unchanged (mode `'none'`); no privacy claim."""

  name: ClassVar[str] = 'none'

  @property
  def epsilon_per_round(self) -> float:
    """+inf: no guarantee."""
    return math.inf

  def to_json(self) -> str:
    return _to_json(self)

  @classmethod
  def from_json(cls, text: str) -> NoPrivacy:
    return _from_json(cls, text)


@dataclasses.dataclass(frozen=True)
class SelectiveSharing:
  """Selective parameter sharing (Shokri & Shmatikov 2015); no DP claim.

  Attributes:
    shared_fraction: q in (0, 1]; c = ⌈q·N⌉ values are released.
    clip_bound: γ > 0; values are clipped to [-γ, γ] before selection.
    normalize_by_steps: Clip and select on ΔW / n, then multiply by n.
  """

  name: ClassVar[str] = 'selective_sharing'

  shared_fraction: float
  clip_bound: float
  normalize_by_steps: bool = True

  def __post_init__(self):
    _set_fraction(self, 'shared_fraction')
    _set_positive(self, 'clip_bound')
    _check_bool('normalize_by_steps', self.normalize_by_steps)

  @property
  def epsilon_per_round(self) -> float:
    """+inf: selective sharing releases exact values (no DP claim)."""
    return math.inf

  def shared_count(self, num_values: int) -> int:
    """c = ⌈q·N⌉ (see `shared_count`)."""
    return shared_count(self.shared_fraction, num_values)

  def to_json(self) -> str:
    return _to_json(self)

  @classmethod
  def from_json(cls, text: str) -> SelectiveSharing:
    return _from_json(cls, text)


@dataclasses.dataclass(frozen=True)
class SparseVectorTechnique:
  """The sparse vector technique with numeric answers (Lyu et al. 2017).

  One call is (ε + ε3, 0)-DP for the client, for changes of its data that
  keep its step count n (see the module docstring).

  Attributes:
    shared_fraction: q in (0, 1]; at most c = ⌈q·N⌉ values are released.
    clip_bound: γ > 0; values are clipped to [-γ, γ] (the sensitivity).
    selection_epsilon: ε > 0, split into ε1 (threshold) and ε2 (queries).
    release_epsilon: ε3 > 0, for the noise on the released values.
    threshold: τ >= 0, compared with |w_i| + noise.
    normalize_by_steps: Work on ΔW / n, then multiply by n.
  """

  name: ClassVar[str] = 'sparse_vector'

  shared_fraction: float
  clip_bound: float
  selection_epsilon: float
  release_epsilon: float
  threshold: float
  normalize_by_steps: bool = True

  def __post_init__(self):
    _set_fraction(self, 'shared_fraction')
    _set_positive(self, 'clip_bound')
    _set_positive(self, 'selection_epsilon')
    _set_positive(self, 'release_epsilon')
    _set_non_negative(self, 'threshold')
    _check_bool('normalize_by_steps', self.normalize_by_steps)

  @property
  def epsilon_per_round(self) -> float:
    """ε + ε3, the pure-DP guarantee of one call (n kept fixed)."""
    return self.selection_epsilon + self.release_epsilon

  def shared_count(self, num_values: int) -> int:
    """c = ⌈q·N⌉ (see `shared_count`)."""
    return shared_count(self.shared_fraction, num_values)

  def noise_scales(self, num_values: int) -> sparse_vector.NoiseScales:
    """ε1, ε2 and the Laplace scales for an update of N values."""
    return sparse_vector.noise_scales(
      shared_count=self.shared_count(num_values),
      clip_bound=self.clip_bound,
      selection_epsilon=self.selection_epsilon,
      release_epsilon=self.release_epsilon,
    )

  def to_json(self) -> str:
    return _to_json(self)

  @classmethod
  def from_json(cls, text: str) -> SparseVectorTechnique:
    return _from_json(cls, text)


Mechanism = NoPrivacy | SelectiveSharing | SparseVectorTechnique
MECHANISM_TYPES = (NoPrivacy, SelectiveSharing, SparseVectorTechnique)
MECHANISMS_BY_NAME = {t.name: t for t in MECHANISM_TYPES}


def from_json(text: str) -> Mechanism:
  """The mechanism that `to_json` wrote, whatever its type.

  Raises:
    ValueError: `text` is not such a JSON object, or a field is invalid.
  """
  name = _load(text).get('name')
  if name not in MECHANISMS_BY_NAME:
    raise ValueError(
      f'name must be one of {", ".join(MECHANISMS_BY_NAME)}. Found {name!r}.'
    )
  return MECHANISMS_BY_NAME[name].from_json(text)


def shared_count(shared_fraction: float, num_values: int) -> int:
  """c = ⌈q·N⌉, in exact decimal arithmetic.

  q is read as the shortest decimal that gives back the float (Python's
  `repr`), so 0.1 × 30 is 3, not 4 (the binary value of 0.1 is slightly
  above 1/10). Always in [1, N] for q in (0, 1] and N >= 1.
  """
  checks.check_positive_int('num_values', num_values)
  if not checks.is_number(shared_fraction) or not 0 < shared_fraction <= 1:
    raise ValueError(
      f'shared_fraction must be in (0, 1]. Found {shared_fraction!r}.'
    )
  exact = fractions.Fraction(repr(float(shared_fraction))) * num_values
  return max(1, min(num_values, math.ceil(exact)))


def privatize(
  update: Any,
  local_steps: Any,
  mechanism: Mechanism,
  *,
  seed: Any = None,
) -> tuple[Any, dict[str, tf.Tensor]]:
  """Privatises one client's model update (see the module docstring).

  Traceable TensorFlow: call it eagerly, in a `tf.function` or in a TFF
  `tff.tensorflow.computation`; the mechanism's structure is static.

  Args:
    update: The update ΔW, a nest of float tensors with static shapes (e.g.
      one delta per trainable variable), N >= 1 values in all.
    local_steps: n, the client's number of local steps (scalar, int or
      float, tensor or number); must be positive and finite when the
      mechanism normalises by steps, else unused.
    mechanism: `NoPrivacy`, `SelectiveSharing` or `SparseVectorTechnique`.
    seed: None (default): fresh, unpredictable randomness drawn when the
      graph runs, on every call (see `randomness.fresh_seed`). Otherwise an
      int64 `[2]` seed that makes the noise reproducible. A FIXED SEED MAKES
      THE NOISE PREDICTABLE AND REPLAYABLE AND VOIDS THE PRIVACY GUARANTEE:
      use it for tests and reproducible experiments only, never in a
      deployment. Ignored by `NoPrivacy` and `SelectiveSharing` (they draw
      no randomness).

  Returns:
    `(privatized, report)`: a nest like `update` (same shapes and dtypes)
    and a dict of scalar tensors, the same keys for every mechanism
    (`REPORT_KEYS`):

    * `released` (int32): values the mechanism sent (selected for release):
      N for `NoPrivacy`, c for selective sharing (a selected value may be
      0), at most c for the SVT (min(c, passes)).
    * `clipped_fraction` (float32): fraction of the N values with |w| > γ
      before clipping, tested as |ΔW| > n·γ when normalising (0 for
      `NoPrivacy`).
    * `noisy_threshold` (float32): τ + ρ for the SVT; NaN for the others
      (they have no threshold).
    * `epsilon` (float32): ε + ε3 for the SVT, +inf for the others.
    * `num_values` (int32): N.
    * `shared_count` (int32): c (N for `NoPrivacy`).
    * `passed` (int32): SVT threshold tests passed among the coordinates
      this call visited (0 for the others); more than `released` means the
      scan stopped at the c-th pass (this implementation may visit
      coordinates past the stop; they do not change the release).

    Only `num_values`, `shared_count` and `epsilon` are public; the other
    entries depend on the data and are not privatised.

  Raises:
    ValueError: An argument is invalid (checked when the graph is built; a
      tensor `local_steps` that is not positive and finite fails with
      `tf.errors.InvalidArgumentError` when the graph runs).
    TypeError: `mechanism` is not one of the three configurations.
  """
  if not isinstance(mechanism, MECHANISM_TYPES):
    names = ', '.join(t.__name__ for t in MECHANISM_TYPES)
    raise TypeError(
      f'mechanism must be one of {names}. Found {type(mechanism).__name__}.'
    )
  if seed is not None:
    seed = randomness.as_seed(seed)
  flat, spec = structure.flatten(update)
  size = spec.num_values
  if size < 1:
    raise ValueError('update must hold at least one value. Found 0.')
  if isinstance(mechanism, NoPrivacy):
    return _unchanged(update, spec)
  steps = _checked_steps(local_steps) if mechanism.normalize_by_steps else None
  count = mechanism.shared_count(size)
  # |ΔW / n| > γ, tested as |ΔW| > n·γ to spare a pass over the update.
  bound = (
    mechanism.clip_bound if steps is None else mechanism.clip_bound * steps
  )
  clipped_fraction = tf.reduce_sum(
    tf.cast(tf.abs(flat) > bound, tf.float32)
  ) / float(size)
  if isinstance(mechanism, SelectiveSharing):
    # n·clip(ΔW / n, -γ, γ) = clip(ΔW, -n·γ, n·γ): released values that were
    # not clipped are exactly the client's.
    clipped = tf.clip_by_value(_nan_to_zero(flat), -bound, bound)
    private = selective_sharing.share_largest(clipped, count)
    stats = {
      'released': tf.constant(count, tf.int32),
      'noisy_threshold': tf.constant(math.nan, tf.float32),
      'passed': tf.constant(0, tf.int32),
    }
  else:
    if seed is None:
      seed = randomness.fresh_seed()
    private, stats = sparse_vector.sparse_vector(
      flat,
      steps,
      shared_count=count,
      clip_bound=mechanism.clip_bound,
      threshold=mechanism.threshold,
      selection_epsilon=mechanism.selection_epsilon,
      release_epsilon=mechanism.release_epsilon,
      seed=seed,
    )
  report = {
    **stats,
    'clipped_fraction': clipped_fraction,
    'epsilon': tf.constant(mechanism.epsilon_per_round, tf.float32),
    'num_values': tf.constant(size, tf.int32),
    'shared_count': tf.constant(count, tf.int32),
  }
  return structure.unflatten(private, spec), _ordered(report)


def _unchanged(update, spec):
  size = spec.num_values
  report = {
    'released': tf.constant(size, tf.int32),
    'clipped_fraction': tf.constant(0.0, tf.float32),
    'noisy_threshold': tf.constant(math.nan, tf.float32),
    'epsilon': tf.constant(math.inf, tf.float32),
    'num_values': tf.constant(size, tf.int32),
    'shared_count': tf.constant(size, tf.int32),
    'passed': tf.constant(0, tf.int32),
  }
  return tf.nest.map_structure(tf.identity, update), _ordered(report)


def _ordered(report: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  return {key: report[key] for key in REPORT_KEYS}


def _checked_steps(local_steps: Any) -> tf.Tensor:
  """local_steps as a float32 scalar, checked positive and finite."""
  if isinstance(local_steps, bool | str) or (
    checks.is_number(local_steps)
    and not (math.isfinite(local_steps) and local_steps > 0)
  ):
    raise ValueError(
      f'local_steps must be a positive finite number. Found {local_steps!r}.'
    )
  steps = tf.convert_to_tensor(local_steps)
  if steps.shape.rank != 0 or not (
    steps.dtype.is_integer or steps.dtype.is_floating
  ):
    raise ValueError(
      'local_steps must be a real scalar. Found dtype '
      f'{steps.dtype.name} and shape {steps.shape}.'
    )
  steps = tf.cast(steps, tf.float32)
  check = tf.debugging.Assert(
    tf.logical_and(steps > 0.0, tf.math.is_finite(steps)),
    ['local_steps must be a positive finite number. Found', steps],
  )
  with tf.control_dependencies([check]):
    return tf.identity(steps)


def _nan_to_zero(values: tf.Tensor) -> tf.Tensor:
  return tf.where(tf.math.is_nan(values), tf.zeros_like(values), values)


def _set_fraction(config, name: str) -> None:
  value = getattr(config, name)
  if not checks.is_number(value) or not 0 < value <= 1:
    raise ValueError(f'{name} must be in (0, 1]. Found {value!r}.')
  object.__setattr__(config, name, float(value))


def _set_positive(config, name: str) -> None:
  value = getattr(config, name)
  if not checks.is_number(value) or not (math.isfinite(value) and value > 0):
    raise ValueError(
      f'{name} must be a positive finite number. Found {value!r}.'
    )
  object.__setattr__(config, name, float(value))


def _set_non_negative(config, name: str) -> None:
  value = getattr(config, name)
  if not checks.is_number(value) or not (math.isfinite(value) and value >= 0):
    raise ValueError(
      f'{name} must be a non-negative finite number. Found {value!r}.'
    )
  object.__setattr__(config, name, float(value))


def _check_bool(name: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise ValueError(f'{name} must be a bool. Found {value!r}.')


def _to_json(config) -> str:
  return json.dumps(
    {'name': config.name, **dataclasses.asdict(config)}, sort_keys=True
  )


def _load(text: str) -> dict[str, Any]:
  try:
    data = json.loads(text)
  except (TypeError, json.JSONDecodeError) as e:
    raise ValueError(
      f'text must be a JSON object of a mechanism. Found {text!r}.'
    ) from e
  if not isinstance(data, dict):
    raise ValueError(
      f'text must be a JSON object of a mechanism. Found {text!r}.'
    )
  return data


def _from_json(cls, text: str):
  data = _load(text)
  name = data.pop('name', None)
  if name != cls.name:
    raise ValueError(f'name must be {cls.name!r}. Found {name!r}.')
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - fields)
  if unknown:
    raise ValueError(
      f'{cls.__name__} has no field {unknown[0]!r}. Found {text!r}.'
    )
  missing = sorted(
    f.name
    for f in dataclasses.fields(cls)
    if f.name not in data
    and f.default is dataclasses.MISSING
    and f.default_factory is dataclasses.MISSING
  )
  if missing:
    raise ValueError(f'{missing[0]} must be given. Found {text!r}.')
  return cls(**data)
