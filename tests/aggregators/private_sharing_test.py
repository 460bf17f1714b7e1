"""Tests of the client-side privacy aggregation factories (TFF)."""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_brats import mechanisms
from tff_brats.aggregators import private_sharing

VALUE = tff.TensorType(np.float32, [2])
WEIGHT = tff.TensorType(np.float32)

SVT = mechanisms.SparseVector(
  shared_fraction=0.5,
  clip_bound=1.0,
  selection_epsilon=1.0,
  release_epsilon=1.0,
  threshold=0.0,
  normalize_by_steps=False,
)


class SumPlusOneFactory(tff.aggregators.WeightedAggregationFactory):
  """A fake inner factory: sum of the values + 1, weights ignored.

  Its state counts its own calls, so delegation of state is visible too.
  """

  def create(self, value_type, weight_type):
    @tff.tensorflow.computation
    def zero():
      return tf.constant(0, tf.int32)

    @tff.federated_computation
    def init_fn():
      return tff.federated_eval(zero, tff.SERVER)

    @tff.tensorflow.computation(value_type)
    def plus_one(value):
      return value + 1.0

    @tff.tensorflow.computation(np.int32)
    def increment(count):
      return count + 1

    @tff.federated_computation(
      init_fn.type_signature.result,
      tff.FederatedType(value_type, tff.CLIENTS),
      tff.FederatedType(weight_type, tff.CLIENTS),
    )
    def next_fn(state, value, weight):
      del weight
      return tff.templates.MeasuredProcessOutput(
        state=tff.federated_map(increment, state),
        result=tff.federated_map(plus_one, tff.federated_sum(value)),
        measurements=tff.federated_value((), tff.SERVER),
      )

    return tff.templates.AggregationProcess(init_fn, next_fn)


class SpreadFactory(tff.aggregators.UnweightedAggregationFactory):
  """A fake inner factory: max minus min over clients (0 iff all equal)."""

  def create(self, value_type):
    @tff.federated_computation
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.tensorflow.computation(value_type, value_type)
    def subtract(a, b):
      return a - b

    @tff.federated_computation(
      init_fn.type_signature.result, tff.FederatedType(value_type, tff.CLIENTS)
    )
    def next_fn(state, value):
      spread = tff.federated_map(
        subtract,
        (tff.federated_max(value), tff.federated_min(value)),
      )
      return tff.templates.MeasuredProcessOutput(
        state=state,
        result=spread,
        measurements=tff.federated_value((), tff.SERVER),
      )

    return tff.templates.AggregationProcess(init_fn, next_fn)


@pytest.fixture
def runtime(tff_runtime):
  return tff_runtime


class TestTypeSignatures:
  """No execution: the processes' types, built by hand."""

  def test_weighted_types(self):
    process = private_sharing.PrivateSharingFactory(
      mechanisms.NoPrivacy()
    ).create(VALUE, WEIGHT)
    state = tff.StructWithPythonType(
      [
        (
          'inner_agg',
          tff.StructWithPythonType(
            [
              ('value_sum_process', ()),
              ('weight_sum_process', ()),
            ],
            collections.OrderedDict,
          ),
        ),
        ('round', np.int64),
        (
          'privacy_record',
          tff.StructWithPythonType(
            [('epsilon', np.float64), ('delta', np.float64)],
            collections.OrderedDict,
          ),
        ),
      ],
      collections.OrderedDict,
    )
    server_state = tff.FederatedType(state, tff.SERVER)
    expected_init = tff.FunctionType(parameter=None, result=server_state)
    assert process.initialize.type_signature.is_equivalent_to(expected_init)

    privatization = tff.StructWithPythonType(
      [
        ('num_clients', np.int32),
        ('released_mean', np.float32),
        ('released_min', np.float32),
        ('released_max', np.float32),
        ('epsilon_per_client', np.float64),
      ],
      collections.OrderedDict,
    )
    measurements = tff.StructWithPythonType(
      [
        ('privatization', privatization),
        (
          'inner_agg',
          tff.StructWithPythonType(
            [('mean_value', ()), ('mean_weight', ())],
            collections.OrderedDict,
          ),
        ),
      ],
      collections.OrderedDict,
    )
    expected_next = tff.FunctionType(
      parameter=collections.OrderedDict(
        state=server_state,
        value=tff.FederatedType(VALUE, tff.CLIENTS),
        weight=tff.FederatedType(WEIGHT, tff.CLIENTS),
      ),
      result=tff.templates.MeasuredProcessOutput(
        state=server_state,
        result=tff.FederatedType(VALUE, tff.SERVER),
        measurements=tff.FederatedType(measurements, tff.SERVER),
      ),
    )
    assert process.next.type_signature.is_equivalent_to(expected_next)

  def test_diagnostics_add_measurements(self):
    process = private_sharing.PrivateSharingFactory(
      SVT, diagnostics=True
    ).create(VALUE, WEIGHT)
    privatization = process.next.type_signature.result[2].member[
      'privatization'
    ]
    assert [name for name, _ in tff.structure.iter_elements(privatization)][
      -3:
    ] == [
      'clipped_fraction_mean',
      'clipped_fraction_max',
      'noisy_threshold_mean',
    ]

  def test_unweighted_types(self):
    process = private_sharing.UnweightedPrivateSharingFactory(SVT).create(VALUE)
    next_type = process.next.type_signature
    assert next_type.parameter[1] == tff.FederatedType(VALUE, tff.CLIENTS)
    assert len(next_type.parameter) == 2
    assert next_type.result[1] == tff.FederatedType(VALUE, tff.SERVER)

  def test_structured_value_type(self):
    value_type = tff.StructWithPythonType(
      [tff.TensorType(np.float32, [2, 3]), tff.TensorType(np.float32, [4])],
      list,
    )
    process = private_sharing.PrivateSharingFactory(SVT).create(
      value_type, WEIGHT
    )
    assert process.next.type_signature.result[1] == tff.FederatedType(
      value_type, tff.SERVER
    )

  def test_integer_values_are_rejected(self):
    with pytest.raises(TypeError, match='structure of floating-point'):
      private_sharing.PrivateSharingFactory(SVT).create(
        tff.TensorType(np.int32, [2]), WEIGHT
      )


class TestArguments:
  def test_mechanism_type(self):
    with pytest.raises(TypeError, match='mechanism must be a client-side'):
      private_sharing.PrivateSharingFactory('sparse_vector')
    # TFF's Gaussian aggregator runs at the server, not at the clients.
    with pytest.raises(TypeError, match='Found Gaussian.'):
      private_sharing.PrivateSharingFactory(mechanisms.Gaussian(1.0))

  def test_inner_factory_weightedness(self):
    with pytest.raises(TypeError, match='WeightedAggregationFactory'):
      private_sharing.PrivateSharingFactory(
        SVT, tff.aggregators.UnweightedMeanFactory()
      )
    with pytest.raises(TypeError, match='UnweightedAggregationFactory'):
      private_sharing.UnweightedPrivateSharingFactory(
        SVT, tff.aggregators.MeanFactory()
      )

  def test_unweighted_cannot_normalise_by_steps(self):
    with pytest.raises(
      ValueError, match='normalize_by_steps must be False without weights'
    ):
      private_sharing.UnweightedPrivateSharingFactory(
        mechanisms.SelectiveSharing(shared_fraction=0.5, clip_bound=1.0)
      )

  @pytest.mark.parametrize('seed', [-1, 1.5, True])
  def test_noise_seed(self, seed):
    with pytest.raises(
      ValueError, match='^noise_seed must be a non-negative integer. Found'
    ):
      private_sharing.PrivateSharingFactory(SVT, noise_seed=seed)


class TestExecution:
  def test_no_privacy_delegates_to_inner(self, runtime):
    process = private_sharing.PrivateSharingFactory(
      mechanisms.NoPrivacy(), SumPlusOneFactory()
    ).create(VALUE, WEIGHT)
    state = process.initialize()
    assert state['round'] == 0
    assert state['inner_agg'] == 0
    assert math.isinf(state['privacy_record']['epsilon'])
    output = process.next(state, [[1.0, 2.0], [3.0, 4.0]], [1.0, 1.0])
    np.testing.assert_allclose(output.result, [5.0, 7.0])
    assert output.state['inner_agg'] == 1
    assert output.state['round'] == 1
    m = output.measurements['privatization']
    assert m['num_clients'] == 2
    assert m['released_mean'] == 2.0
    assert math.isinf(m['epsilon_per_client'])

  def test_selective_sharing_hand_computed(self, runtime):
    # Client 1, n = 2: w = ΔW / n = [0.5, -2.5], clipped to γ = 1 gives
    # [0.5, -1]; c = ceil(0.5 * 2) = 1 keeps -1; times n: [0, -2].
    # Client 2, n = 1: w = [3, 0.5] -> [1, 0.5] -> keeps 1 -> [1, 0].
    # Inner: sum + 1 = [2, -1].
    mechanism = mechanisms.SelectiveSharing(
      shared_fraction=0.5, clip_bound=1.0, normalize_by_steps=True
    )
    process = private_sharing.PrivateSharingFactory(
      mechanism, SumPlusOneFactory(), diagnostics=True
    ).create(VALUE, WEIGHT)
    output = process.next(
      process.initialize(), [[1.0, -5.0], [3.0, 0.5]], [2.0, 1.0]
    )
    np.testing.assert_allclose(output.result, [2.0, -1.0])
    m = output.measurements['privatization']
    assert m['released_mean'] == 1.0
    # Client 1 clipped 1 of 2 values, client 2 1 of 2.
    assert m['clipped_fraction_mean'] == pytest.approx(0.5)
    assert m['clipped_fraction_max'] == pytest.approx(0.5)

  def test_weighted_mean_with_local_steps(self, runtime):
    # q = 1, no clipping in effect: the default inner weighted mean gives
    # (2 * [1, 2] + 1 * [4, 8]) / 3.
    mechanism = mechanisms.SelectiveSharing(
      shared_fraction=1.0, clip_bound=100.0, normalize_by_steps=True
    )
    process = private_sharing.PrivateSharingFactory(mechanism).create(
      VALUE, WEIGHT
    )
    output = process.next(
      process.initialize(), [[1.0, 2.0], [4.0, 8.0]], [2.0, 1.0]
    )
    np.testing.assert_allclose(output.result, [2.0, 4.0], rtol=1e-6)

  def test_sparse_vector_measurements_and_record(self, runtime):
    process = private_sharing.PrivateSharingFactory(
      SVT, SumPlusOneFactory(), diagnostics=True
    ).create(VALUE, WEIGHT)
    state = process.initialize()
    assert state['privacy_record']['epsilon'] == pytest.approx(2.0)
    assert state['privacy_record']['delta'] == 0.0
    output = process.next(state, [[0.5, -0.5]] * 3, [1.0] * 3)
    m = output.measurements['privatization']
    assert m['num_clients'] == 3
    assert m['epsilon_per_client'] == pytest.approx(2.0)
    assert m['released_max'] <= 1.0  # c = ceil(0.5 * 2) = 1
    assert np.isfinite(m['noisy_threshold_mean'])
    # Released values are clipped to ±γ after the noise: |sum| <= 3.
    assert np.all(np.abs(np.asarray(output.result) - 1.0) <= 3.0 + 1e-6)

  def test_identical_clients_get_different_noise(self, runtime):
    # 8 clients hold the same update; each releases c = 32 of 64 values at
    # freshly permuted positions with fresh Laplace noise. If they shared
    # their randomness, max - min over clients would be 0 everywhere. With
    # fresh randomness a coordinate's spread is 0 only if all 8 clients
    # skipped it (about 2^-8) or released the same clipped value; the
    # expected number of non-zero spreads is ~63.7 of 64, and 48 or more
    # zeros (the failure below) has odds far below 1e-30.
    mechanism = mechanisms.SparseVector(
      shared_fraction=0.5,
      clip_bound=1.0,
      selection_epsilon=1.0,
      release_epsilon=1.0,
      threshold=0.0,
      normalize_by_steps=False,
    )
    value_type = tff.TensorType(np.float32, [64])
    process = private_sharing.UnweightedPrivateSharingFactory(
      mechanism, SpreadFactory()
    ).create(value_type)
    update = np.linspace(-0.5, 0.5, 64).astype(np.float32)
    output = process.next(process.initialize(), [update] * 8)
    spread = np.asarray(output.result)
    assert np.count_nonzero(spread) > 16

  def test_one_client_gets_fresh_noise_every_round(self, runtime):
    process = private_sharing.UnweightedPrivateSharingFactory(
      SVT, tff.aggregators.UnweightedMeanFactory()
    ).create(tff.TensorType(np.float32, [64]))
    update = np.full(64, 0.25, np.float32)
    state = process.initialize()
    results = []
    for _ in range(3):
      output = process.next(state, [update])
      state = output.state
      results.append(np.asarray(output.result))
    # Released values are w + Lap(2c·γ/ε3) with c = 32: continuous noise, so
    # equal outputs in two rounds have probability 0 (and the positions
    # released differ too).
    assert not np.array_equal(results[0], results[1])
    assert not np.array_equal(results[1], results[2])
    assert state['round'] == 3

  def test_explicit_seed_is_reproducible_and_per_round(self, runtime):
    def build(seed):
      return private_sharing.UnweightedPrivateSharingFactory(
        SVT, tff.aggregators.UnweightedMeanFactory(), noise_seed=seed
      ).create(tff.TensorType(np.float32, [16]))

    def run(process):
      state = process.initialize()
      # Predictable noise guarantees nothing: ε is +inf in state and report.
      assert state['privacy_record']['epsilon'] == math.inf
      out = []
      for _ in range(2):
        output = process.next(state, [np.full(16, 0.3, np.float32)])
        state = output.state
        out.append(np.asarray(output.result))
        privatization = output.measurements['privatization']
        assert privatization['epsilon_per_client'] == math.inf
      return out

    # The same process run twice from its start: the noise is a function
    # of the seed and the round, not of anything the process keeps.
    seeded = build(5)
    a, b, c = run(seeded), run(seeded), run(build(6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])  # rounds differ
    assert not np.array_equal(a[0], c[0])  # seeds differ
