"""Tests for tff_brats.aggregators.weights_dropping."""

import collections

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_brats.aggregators import weights_dropping

VALUE = tff.TensorType(np.float32, [2])
WEIGHT = tff.TensorType(np.float32)


def test_type_signature_is_the_inner_one_plus_weights():
  process = weights_dropping.WeightsDroppingFactory(
    tff.aggregators.UnweightedMeanFactory()
  ).create(VALUE, WEIGHT)
  inner = tff.aggregators.UnweightedMeanFactory().create(VALUE)
  expected_next = tff.FunctionType(
    parameter=collections.OrderedDict(
      state=inner.initialize.type_signature.result,
      value=tff.FederatedType(VALUE, tff.CLIENTS),
      weight=tff.FederatedType(WEIGHT, tff.CLIENTS),
    ),
    result=inner.next.type_signature.result,
  )
  process.next.type_signature.check_equivalent_to(expected_next)
  process.initialize.type_signature.check_equivalent_to(
    inner.initialize.type_signature
  )


def test_weights_do_not_enter_the_result(tff_runtime):
  """Noise-free DP-FedAvg: the weighted form is the plain mean."""
  factory = weights_dropping.WeightsDroppingFactory(
    tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
      noise_multiplier=0.0, clients_per_round=2.0, clip=100.0
    )
  )
  process = factory.create(VALUE, WEIGHT)
  output = process.next(
    process.initialize(), [[1.0, 2.0], [3.0, 6.0]], [1.0, 100.0]
  )
  np.testing.assert_allclose(output.result, [2.0, 4.0], rtol=1e-6)


def test_inner_must_be_unweighted():
  with pytest.raises(TypeError, match='UnweightedAggregationFactory'):
    weights_dropping.WeightsDroppingFactory(tff.aggregators.MeanFactory())
