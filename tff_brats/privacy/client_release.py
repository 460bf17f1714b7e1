"""One client's model update through a release: normalise, clip, release.

Per client and round, on its update ΔW (all trainable tensors, N values)
and its local step count n (Li et al. 2019, "Privacy-preserving Federated
Brain Tumour Segmentation"):

1. optionally normalise by steps, w = ΔW / n;
2. clip every value to [-γ, γ];
3. c = ⌈q·N⌉ (`budget.shared_count`), q the shared fraction;
4. release: a function of the flat update that returns at most c values
   (`selective_sharing.select`: the c largest exactly;
   `sparse_vector.sparse_vector`: noisy values chosen by noisy threshold
   tests), the rest exactly 0;
5. multiply back by n if normalised.

`privatize` does the steps every client-side mechanism shares (flatten the
nest, check n, measure clipping, build the report, unflatten); each
mechanism of `tff_brats.mechanisms` passes its own release. `unchanged`
is the release of a client without privacy.

The report describes the client's data (e.g. `clipped_fraction`,
`released`, `noisy_threshold`) and is NOT privatised: only `num_values`,
`shared_count` and `epsilon` are public. Do not send the rest to an
untrusted server.

Conventions: NaN values of the update are treated as 0 and ±inf are clipped
to ±γ (so a guarantee holds for any input).
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any

import tensorflow as tf

from tff_brats.privacy import budget
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

# (flat update, n or None, clip bound on the flat update, c) ->
# (flat release, stats with `released`, `noisy_threshold`, `passed`).
Release = Callable[
  [tf.Tensor, tf.Tensor | None, Any, int],
  tuple[tf.Tensor, dict[str, tf.Tensor]],
]


def privatize(
  update: Any,
  local_steps: Any,
  release: Release,
  *,
  shared_fraction: float,
  clip_bound: float,
  normalize_by_steps: bool,
  epsilon: float,
) -> tuple[Any, dict[str, tf.Tensor]]:
  """Privatises one client's model update (see the module docstring).

  Traceable TensorFlow: call it eagerly, in a `tf.function` or in a TFF
  `tff.tensorflow.computation`; the parameters are static.

  Args:
    update: The update ΔW, a nest of float tensors with static shapes (e.g.
      one delta per trainable variable), N >= 1 values in all.
    local_steps: n, the client's number of local steps (scalar, int or
      float, tensor or number); must be positive and finite when
      normalising by steps, else unused.
    release: The mechanism's release of the flat float32 `[N]` update:
      `release(flat, steps, bound, c)` with `steps` the float32 n (None
      without normalisation) and `bound` the clip bound on `flat` (γ, or
      n·γ when normalising: |ΔW / n| <= γ is |ΔW| <= n·γ). It returns the
      flat release (at most c non-zero values, on the scale of `flat`) and
      the scalar tensors `released` (int32), `noisy_threshold` (float32)
      and `passed` (int32).
    shared_fraction: q in (0, 1]; c = ⌈q·N⌉.
    clip_bound: γ > 0, the bound on every value of w.
    normalize_by_steps: Work on w = ΔW / n.
    epsilon: The release's ε per round (+inf without a DP claim), reported.

  Returns:
    `(privatized, report)`: a nest like `update` (same shapes and dtypes)
    and a dict of scalar tensors, the same keys for every mechanism
    (`REPORT_KEYS`):

    * `released` (int32): values the mechanism sent (selected for release).
    * `clipped_fraction` (float32): fraction of the N values with |w| > γ
      before clipping, tested as |ΔW| > n·γ when normalising.
    * `noisy_threshold` (float32): the SVT's τ + ρ; NaN without a threshold.
    * `epsilon` (float32): the round's ε (+inf without a DP claim).
    * `num_values` (int32): N.
    * `shared_count` (int32): c.
    * `passed` (int32): SVT threshold tests passed among the coordinates
      the call visited (0 for the others).

    Only `num_values`, `shared_count` and `epsilon` are public; the other
    entries depend on the data and are not privatised.

  Raises:
    ValueError: An argument is invalid (checked when the graph is built; a
      tensor `local_steps` that is not positive and finite fails with
      `tf.errors.InvalidArgumentError` when the graph runs).
  """
  checks.check_positive_number('clip_bound', clip_bound)
  checks.check_bool('normalize_by_steps', normalize_by_steps)
  flat, spec = _flatten(update)
  size = spec.num_values
  count = budget.shared_count(shared_fraction, size)
  steps = _checked_steps(local_steps) if normalize_by_steps else None
  # |ΔW / n| > γ, tested as |ΔW| > n·γ to spare a pass over the update.
  bound = clip_bound if steps is None else clip_bound * steps
  clipped_fraction = tf.reduce_sum(
    tf.cast(tf.abs(flat) > bound, tf.float32)
  ) / float(size)
  private, stats = release(flat, steps, bound, count)
  report = {
    **stats,
    'clipped_fraction': clipped_fraction,
    'epsilon': tf.constant(epsilon, tf.float32),
    'num_values': tf.constant(size, tf.int32),
    'shared_count': tf.constant(count, tf.int32),
  }
  return structure.unflatten(private, spec), _ordered(report)


def unchanged(update: Any) -> tuple[Any, dict[str, tf.Tensor]]:
  """The update as it is, with a report like `privatize`'s.

  `released` and `shared_count` are N, `clipped_fraction` 0, `epsilon`
  +inf (no claim), `noisy_threshold` NaN, `passed` 0.
  """
  _, spec = _flatten(update)
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


def _flatten(update):
  flat, spec = structure.flatten(update)
  if spec.num_values < 1:
    raise ValueError('update must hold at least one value. Found 0.')
  return flat, spec


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
