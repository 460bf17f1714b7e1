"""Client-side privatisation of model updates as TFF aggregation factories.

Each client runs a client-side mechanism (`tff_brats.mechanisms`:
`NoPrivacy`, `SelectiveSharing`, `SparseVector`; anything with the
`ClientMechanism` protocol below) on its own update at CLIENTS, before anything leaves it, and the privatised updates are
handed to an inner factory (by default a weighted mean) that does the
actual summing, as `tff.aggregators.clipping_factory` hands clipped values
to its inner factory (Li et al. 2019, "Privacy-preserving Federated Brain
Tumour Segmentation": FedAvg with selective sharing or the sparse vector
technique applied by every client to its own update).

* `PrivateSharingFactory` (weighted): the weight is the client's number of
  local steps n. With `normalize_by_steps` the mechanism clips the per-step
  update ΔW / n and multiplies back by n, and the inner factory weights by n.
  Because n is sent in the clear, the guarantee of a round is for changes of
  the client's data that keep n (see `tff_brats.privacy.mechanisms`).
* `UnweightedPrivateSharingFactory`: no weight is sent and the mechanism
  must not normalise by steps, so the round's guarantee holds for any
  change of the client's data (use with
  `tff.learning.algorithms.build_unweighted_fed_avg`).

State (an `OrderedDict`, stable names):
  `inner_agg`: the inner process's state.
  `round`: int64, rounds run so far (seeds explicit-seed experiments).
  `privacy_record`: the round's per-client guarantee, `epsilon` (float64,
    +inf when the mode makes no claim or the noise has a fixed seed) and
    `delta` (float64). Like TFF's
    DP factory, the factory never composes anything: the driver reads this
    after each `next` and keeps the per-institution ledger.

Measurements (documented API; scalars):
  `privatization`:
    `num_clients` (int32): clients aggregated this round.
    `released_mean`, `released_min`, `released_max` (float32): values each
      client released. This is post-processing of what the client sends
      anyway (its non-zero entries), so it costs no privacy.
    `epsilon_per_client` (float64): ε each participating client spent this
      round (the same for all; +inf without a DP claim, and with a fixed
      `noise_seed`, whose noise is predictable).
    Only with `diagnostics=True`:
    `clipped_fraction_mean`, `clipped_fraction_max` (float32): fraction of
      each client's values that exceeded the clip bound.
    `noisy_threshold_mean` (float32): the SVT threshold τ + ρ the clients
      drew (NaN for modes without a threshold).
  `inner_agg`: the inner process's measurements.

The diagnostics are computed from each client's raw update and its secret
threshold noise ρ, so sending them is OUTSIDE the round's guarantee
(revealing ρ alone voids the SVT's proof). They are for simulations in which
the researcher owns every client's data; keep them off in deployments.
"""

from __future__ import annotations

import collections
import math
from typing import Any
from typing import Protocol
from typing import runtime_checkable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_brats.utils import checks


@runtime_checkable
class ClientMechanism(Protocol):
  """What the factories need of a client-side mechanism.

  `privatize(update, local_steps, seed=...)` returns `(privatized, report)`
  with the report keys of `tff_brats.privacy.client_release`;
  `epsilon_per_round` is the round's ε (+inf without a DP claim);
  `normalize_by_steps` says whether it works on ΔW / n.
  """

  normalize_by_steps: bool

  @property
  def epsilon_per_round(self) -> float: ...

  def privatize(
    self, update: Any, local_steps: Any, *, seed: Any = None
  ) -> tuple[Any, dict[str, tf.Tensor]]: ...


class PrivateSharingFactory(tff.aggregators.WeightedAggregationFactory):
  """Privatises each client's update, weighted by its local steps."""

  def __init__(
    self,
    mechanism: ClientMechanism,
    inner_agg_factory: tff.aggregators.WeightedAggregationFactory | None = None,
    *,
    noise_seed: int | None = None,
    diagnostics: bool = False,
  ):
    """Configures the factory.

    Args:
      mechanism: A client-side mechanism (`ClientMechanism`), e.g.
        `tff_brats.mechanisms.SparseVector`.
      inner_agg_factory: Aggregates the privatised updates with the clients'
        weights; default `tff.aggregators.MeanFactory()`.
      noise_seed: None (default): every client draws fresh, unpredictable
        noise in every round. An int makes the noise a function of (seed,
        round, the client's update) for reproducible experiments only: it
        makes the noise predictable to anyone who knows the seed, which
        voids the privacy guarantee in a deployment.
      diagnostics: Also measure clipped fractions and noisy thresholds, which
        leak beyond the guarantee (see the module docstring); simulations
        only.
    """
    _check_mechanism(mechanism)
    if inner_agg_factory is None:
      inner_agg_factory = tff.aggregators.MeanFactory()
    if not isinstance(
      inner_agg_factory, tff.aggregators.WeightedAggregationFactory
    ):
      raise TypeError(
        'inner_agg_factory must be a tff.aggregators.'
        f'WeightedAggregationFactory. Found {type(inner_agg_factory).__name__}.'
      )
    self._mechanism = mechanism
    self._inner = inner_agg_factory
    self._noise_seed = _check_seed(noise_seed)
    self._diagnostics = bool(diagnostics)
    self._epsilon = _round_epsilon(mechanism, self._noise_seed)

  @property
  def mechanism(self) -> ClientMechanism:
    return self._mechanism

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    _check_value_type(value_type)
    inner_process = self._inner.create(value_type, weight_type)
    privatize_fn = _make_privatize_fn(
      value_type,
      tff.TensorType(np.float32),
      self._mechanism,
      self._noise_seed,
      self._diagnostics,
      self._epsilon,
    )
    to_steps = _make_cast_fn(weight_type)

    @tff.federated_computation()
    def init_fn():
      return _initial_state(inner_process, self._epsilon)

    @tff.federated_computation(
      init_fn.type_signature.result,
      tff.FederatedType(value_type, tff.CLIENTS),
      tff.FederatedType(weight_type, tff.CLIENTS),
    )
    def next_fn(state, value, weight):
      steps = tff.federated_map(to_steps, weight)
      round_at_clients = tff.federated_broadcast(state['round'])
      private_value, report = tff.federated_map(
        privatize_fn, (value, steps, round_at_clients)
      )
      inner_output = inner_process.next(
        state['inner_agg'], private_value, weight
      )
      return _output(state, inner_output, report, self._diagnostics)

    return tff.templates.AggregationProcess(init_fn, next_fn)


class UnweightedPrivateSharingFactory(
  tff.aggregators.UnweightedAggregationFactory
):
  """Privatises each client's update; no weight leaves the client."""

  def __init__(
    self,
    mechanism: ClientMechanism,
    inner_agg_factory: tff.aggregators.UnweightedAggregationFactory
    | None = None,
    *,
    noise_seed: int | None = None,
    diagnostics: bool = False,
  ):
    """As `PrivateSharingFactory`, without weights.

    Args:
      mechanism: A mechanism with `normalize_by_steps=False` (the step count
        is not known here; normalising would need it).
      inner_agg_factory: Default `tff.aggregators.UnweightedMeanFactory()`.
      noise_seed: See `PrivateSharingFactory`.
      diagnostics: See `PrivateSharingFactory`.
    """
    _check_mechanism(mechanism)
    if getattr(mechanism, 'normalize_by_steps', False):
      raise ValueError(
        'mechanism.normalize_by_steps must be False without weights (the '
        'step count is not sent). Found True.'
      )
    if inner_agg_factory is None:
      inner_agg_factory = tff.aggregators.UnweightedMeanFactory()
    if not isinstance(
      inner_agg_factory, tff.aggregators.UnweightedAggregationFactory
    ):
      raise TypeError(
        'inner_agg_factory must be a tff.aggregators.'
        'UnweightedAggregationFactory. Found '
        f'{type(inner_agg_factory).__name__}.'
      )
    self._mechanism = mechanism
    self._inner = inner_agg_factory
    self._noise_seed = _check_seed(noise_seed)
    self._diagnostics = bool(diagnostics)
    self._epsilon = _round_epsilon(mechanism, self._noise_seed)

  @property
  def mechanism(self) -> ClientMechanism:
    return self._mechanism

  def create(self, value_type) -> tff.templates.AggregationProcess:
    _check_value_type(value_type)
    inner_process = self._inner.create(value_type)
    privatize_fn = _make_privatize_fn(
      value_type,
      None,
      self._mechanism,
      self._noise_seed,
      self._diagnostics,
      self._epsilon,
    )

    @tff.federated_computation()
    def init_fn():
      return _initial_state(inner_process, self._epsilon)

    @tff.federated_computation(
      init_fn.type_signature.result,
      tff.FederatedType(value_type, tff.CLIENTS),
    )
    def next_fn(state, value):
      round_at_clients = tff.federated_broadcast(state['round'])
      private_value, report = tff.federated_map(
        privatize_fn, (value, round_at_clients)
      )
      inner_output = inner_process.next(state['inner_agg'], private_value)
      return _output(state, inner_output, report, self._diagnostics)

    return tff.templates.AggregationProcess(init_fn, next_fn)


def _initial_state(inner_process, epsilon):
  @tff.tensorflow.computation
  def initial_round():
    return tf.constant(0, tf.int64)

  @tff.tensorflow.computation
  def record():
    return collections.OrderedDict(
      epsilon=tf.constant(epsilon, tf.float64),
      delta=tf.constant(0.0, tf.float64),
    )

  return tff.federated_zip(
    collections.OrderedDict(
      inner_agg=inner_process.initialize(),
      round=tff.federated_eval(initial_round, tff.SERVER),
      privacy_record=tff.federated_eval(record, tff.SERVER),
    )
  )


def _output(state, inner_output, report, diagnostics):
  @tff.tensorflow.computation(np.int64)
  def increment(round_num):
    return round_num + 1

  @tff.tensorflow.computation(np.float32)
  def one(_):
    return tf.constant(1, tf.int32)

  released = report['released']
  privatization = collections.OrderedDict(
    num_clients=tff.federated_sum(tff.federated_map(one, released)),
    released_mean=tff.federated_mean(released),
    released_min=tff.federated_min(released),
    released_max=tff.federated_max(released),
    epsilon_per_client=tff.federated_max(report['epsilon']),
  )
  if diagnostics:
    clipped = report['clipped_fraction']
    privatization.update(
      clipped_fraction_mean=tff.federated_mean(clipped),
      clipped_fraction_max=tff.federated_max(clipped),
      noisy_threshold_mean=tff.federated_mean(report['noisy_threshold']),
    )
  measurements = collections.OrderedDict(
    privatization=tff.federated_zip(privatization),
    inner_agg=inner_output.measurements,
  )
  new_state = collections.OrderedDict(
    inner_agg=inner_output.state,
    round=tff.federated_map(increment, state['round']),
    privacy_record=state['privacy_record'],
  )
  return tff.templates.MeasuredProcessOutput(
    state=tff.federated_zip(new_state),
    result=inner_output.result,
    measurements=tff.federated_zip(measurements),
  )


def _make_privatize_fn(
  value_type, steps_type, mechanism, noise_seed, diagnostics, epsilon
):
  """The TF computation each client runs on its own update.

  Its report holds only what the server may see: the released count (a
  function of the privatised update) and the round's ε; with `diagnostics`
  also the clipped fraction and the noisy threshold.
  """

  def privatize(value, steps, round_num):
    seed = None
    if noise_seed is not None:
      seed = _experiment_seed(noise_seed, round_num, value)
    private, report = mechanism.privatize(value, steps, seed=seed)
    summary = collections.OrderedDict(
      released=tf.cast(report['released'], tf.float32),
      epsilon=tf.constant(epsilon, tf.float64),
    )
    if diagnostics:
      summary['clipped_fraction'] = tf.cast(
        report['clipped_fraction'], tf.float32
      )
      summary['noisy_threshold'] = tf.cast(
        report['noisy_threshold'], tf.float32
      )
    return private, summary

  if steps_type is None:

    @tff.tensorflow.computation(value_type, np.int64)
    def unweighted(value, round_num):
      return privatize(value, tf.constant(1.0), round_num)

    return unweighted

  @tff.tensorflow.computation(value_type, steps_type, np.int64)
  def weighted(value, steps, round_num):
    return privatize(value, steps, round_num)

  return weighted


def _experiment_seed(noise_seed, round_num, value):
  """Seed of (seed, round, this client's update): experiments only."""
  flat = tf.concat(
    [tf.reshape(tf.cast(v, tf.float32), [-1]) for v in tf.nest.flatten(value)],
    axis=0,
  )
  fingerprint = tf.strings.to_hash_bucket_fast(
    tf.io.serialize_tensor(flat), 2**62
  )
  seed = tf.constant([0, noise_seed], tf.int64)
  seed = tf.random.experimental.stateless_fold_in(seed, round_num)
  return tf.random.experimental.stateless_fold_in(seed, fingerprint)


def _round_epsilon(mechanism, noise_seed) -> float:
  """The round's ε: the mechanism's, or +inf with a fixed noise seed (the
  noise is then a function of the seed, the round and the update, which
  anyone with the seed can replay)."""
  return math.inf if noise_seed is not None else mechanism.epsilon_per_round


def _make_cast_fn(weight_type):
  @tff.tensorflow.computation(weight_type)
  def to_steps(weight):
    return tf.cast(weight, tf.float32)

  return to_steps


def _check_mechanism(mechanism) -> None:
  if not isinstance(mechanism, ClientMechanism):
    raise TypeError(
      'mechanism must be a client-side mechanism (with privatize, '
      'epsilon_per_round and normalize_by_steps), e.g. '
      f'tff_brats.mechanisms.SparseVector. Found {type(mechanism).__name__}.'
    )


def _check_seed(noise_seed):
  if noise_seed is not None:
    checks.check_non_negative_int('noise_seed', noise_seed)
  return noise_seed


def _check_value_type(value_type) -> None:
  if not tff.types.is_structure_of_floats(value_type):
    raise TypeError(
      'value_type must be a structure of floating-point tensors. '
      f'Found {value_type}.'
    )
