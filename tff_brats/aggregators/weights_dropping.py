"""An unweighted aggregation factory inside a weighted algorithm.

For aggregators whose guarantee needs every client to count once, e.g.
TFF's DP-FedAvg (`tff.aggregators.DifferentiallyPrivateFactory`): a
client's weight would change the sensitivity of the sum, so the weights
reach the server but do not enter the result.
"""

from __future__ import annotations

import tensorflow_federated as tff


class WeightsDroppingFactory(tff.aggregators.WeightedAggregationFactory):
  """Runs an unweighted factory inside a weighted algorithm (ignores weights).

  `create(value_type, weight_type)` returns an `AggregationProcess` with the
  inner process's `initialize`, state and measurements, whose
  `next(state, value@CLIENTS, weight@CLIENTS)` is the inner
  `next(state, value)`.
  """

  def __init__(self, inner: tff.aggregators.UnweightedAggregationFactory):
    if not isinstance(inner, tff.aggregators.UnweightedAggregationFactory):
      raise TypeError(
        'inner must be a tff.aggregators.UnweightedAggregationFactory. '
        f'Found {type(inner).__name__}.'
      )
    self._inner = inner

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    process = self._inner.create(value_type)

    @tff.federated_computation(
      process.initialize.type_signature.result,
      tff.FederatedType(value_type, tff.CLIENTS),
      tff.FederatedType(weight_type, tff.CLIENTS),
    )
    def next_fn(state, value, weight):
      del weight  # every client counts once
      return process.next(state, value)

    return tff.templates.AggregationProcess(process.initialize, next_fn)
