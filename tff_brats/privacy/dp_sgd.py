"""Patient-level DP-SGD inside one institution, in plain TensorFlow.

Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar & Zhang 2016, "Deep
Learning with Differential Privacy" (CCS), with the sampling and
normalisation the accountant assumes:

* **Poisson sampling** (`poisson_sample`): at every local step each of the
  institution's n cases joins the step's lot independently with
  probability q. The lot is secret: its randomness comes from the noise
  key (fresh operating-system entropy per client and round,
  `randomness.fresh_seed`), never from the run's data seed, which the
  coordinator knows.
* **One clipped gradient per patient and step** (`clip_gradient`): the
  gradient of the patient's loss (the mean over the crops drawn from their
  case in that step) is clipped to L2 norm C by tensorflow_privacy's
  `GaussianSumQuery` (`tf.clip_by_global_norm` over every variable).
* **Gaussian noise on the sum** (`noised_mean`): N(0, (zC)²) per
  coordinate is added to the sum of the lot's clipped gradients, which is
  then divided by the *expected* lot size q·n, a constant, never by the
  realised size (dividing by the realised size would change the
  sensitivity the accountant assumes). A step with an empty lot still
  applies pure noise.

Each step is then a `PoissonSampledDpEvent(q, GaussianDpEvent(z))` for
adding or removing one case (`step_event`), and a round of T local steps
their self-composition (`round_event`); everything the client's optimiser
does with the noisy means is post-processing, so the model update it sends
is covered, whoever sees it.

Why not tensorflow_privacy's DP Keras optimisers (`DPKerasAdamOptimizer`):
they compute per-microbatch gradients with `tape.jacobian` over the whole
minibatch (every patient's 3D activations in memory at once, where this
loop holds one patient's), and they divide the noisy sum by the realised
number of microbatches, which is data-dependent under Poisson sampling and
zero for an empty lot. The clipping and the noise scale are
tensorflow_privacy's own `GaussianSumQuery`; only the noise draw is keyed
here (`tf.random.stateless_normal`), because the query's unseeded
`tf.random_normal_initializer` repeats itself once a global seed is set
(see `randomness`).
"""

from __future__ import annotations

from collections.abc import Sequence

import dp_accounting
import tensorflow as tf
from tensorflow_privacy.privacy.dp_query import gaussian_query

from tff_brats.privacy import planning
from tff_brats.utils import checks

# Streams folded into a client's privacy key.
SAMPLING_STREAM = 11
NOISE_STREAM = 12


def check_parameters(
  *,
  noise_multiplier: float,
  l2_norm_clip: float,
  sampling_probability: float,
  local_steps: int,
) -> None:
  """Raises ValueError naming the first bad DP-SGD parameter."""
  checks.check_non_negative_number('noise_multiplier', noise_multiplier)
  checks.check_positive_number('l2_norm_clip', l2_norm_clip)
  planning.check_sampling_probability(sampling_probability)
  checks.check_positive_int('local_steps', local_steps)


def step_event(
  noise_multiplier: float, sampling_probability: float
) -> dp_accounting.DpEvent:
  """One local step: Poisson-sampled Gaussian (q = 1: plain Gaussian)."""
  return planning.gaussian_step_event(noise_multiplier, sampling_probability)


def round_event(
  noise_multiplier: float, sampling_probability: float, local_steps: int
) -> dp_accounting.DpEvent:
  """One round of `local_steps` steps, for one case of the institution."""
  event = step_event(noise_multiplier, sampling_probability)
  if local_steps == 1:
    return event
  return dp_accounting.SelfComposedDpEvent(event, int(local_steps))


def poisson_sample(
  seed: tf.Tensor, num_cases: tf.Tensor, sampling_probability: float
) -> tf.Tensor:
  """The lot of one step: a bool `[num_cases]` mask, each True w.p. q.

  Each case compares its own 64-bit uniform integer with ⌊q·2⁶⁴⌋ (q = 1:
  always), so the inclusion probability is q to within 2⁻⁶⁴ and the cases
  are independent (Philox counters).

  Args:
    seed: int64 `[2]` stateless key of the step (secret).
    num_cases: The institution's number of cases n (int scalar).
    sampling_probability: q in (0, 1].
  """
  if sampling_probability >= 1:
    return tf.ones([num_cases], tf.bool)
  draws = tf.random.stateless_uniform(
    [num_cases], seed, minval=None, maxval=None, dtype=tf.uint64
  )
  # ⌊q·2⁶⁴⌋ as a uint64; q·2⁶⁴ is exact in float64 up to q's own rounding.
  bound = tf.constant(int(sampling_probability * 2.0**64), tf.uint64)
  return draws < bound


class GradientClipper:
  """tensorflow_privacy's `GaussianSumQuery`: clip records, sum, noise std."""

  def __init__(self, l2_norm_clip: float, noise_multiplier: float):
    checks.check_positive_number('l2_norm_clip', l2_norm_clip)
    checks.check_non_negative_number('noise_multiplier', noise_multiplier)
    self.query = gaussian_query.GaussianSumQuery(
      l2_norm_clip=float(l2_norm_clip),
      stddev=float(noise_multiplier) * float(l2_norm_clip),
    )
    self._params = self.query.derive_sample_params(
      self.query.initial_global_state()
    )

  @property
  def stddev(self) -> float:
    """The noise standard deviation zC on the sum."""
    return self.query._stddev  # pylint: disable=protected-access

  def clip(self, gradient: Sequence[tf.Tensor]) -> tuple[list, tf.Tensor]:
    """(gradient clipped to global L2 norm C, its norm before clipping)."""
    clipped, norm = self.query.preprocess_record_impl(
      self._params, list(gradient)
    )
    return list(clipped), norm

  def noised_mean(
    self,
    gradient_sum: Sequence[tf.Tensor],
    seed: tf.Tensor,
    expected_lot_size: tf.Tensor,
  ) -> list[tf.Tensor]:
    """(Σ clipped gradients + N(0, (zC)²)) / (q·n), per variable.

    Args:
      gradient_sum: The lot's summed clipped gradients.
      seed: int64 `[2]` key of the step's noise (secret).
      expected_lot_size: q·n (float32, > 0).
    """
    stddev = tf.constant(self.stddev, tf.float32)
    result = []
    for index, total in enumerate(gradient_sum):
      noise = tf.random.stateless_normal(
        tf.shape(total),
        tf.random.experimental.stateless_fold_in(seed, index),
        dtype=tf.float32,
      )
      noisy = tf.cast(total, tf.float32) + stddev * noise
      result.append(tf.cast(noisy / expected_lot_size, total.dtype))
    return result
