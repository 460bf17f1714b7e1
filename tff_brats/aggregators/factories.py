"""One entry point for every privacy mode's model aggregator.

`build_model_aggregator(privacy_mechanism, ...)` returns the factory a
`tff.learning` algorithm takes as `model_aggregator`:

* 'none', 'selective_sharing', 'sparse_vector': `PrivateSharingFactory`
  (weighted by local steps) or `UnweightedPrivateSharingFactory`, the
  client-side mechanisms of Li et al. 2019 (local privacy: each update is
  privatised before it leaves its institution).
* 'gaussian': TFF's own DP-FedAvg aggregator (McMahan et al. 2018, "Learning
  differentially private recurrent language models"):
  `tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed`, which clips
  every client's whole update to L2 norm `clip_bound` and adds Gaussian
  noise of standard deviation `noise_multiplier * clip_bound` to the SUM on
  the server (central privacy: whoever aggregates sees the clipped updates
  unless secure aggregation is used). It is unweighted by design (a
  client's weight would change the sensitivity), so the weighted form here
  drops the weights: every client counts once, and the mean divides by
  `clients_per_round`. The round's `DpEvent` is in the factory's state
  (`tff.aggregators.DifferentiallyPrivateFactory`'s `dp_event`); the
  driver records it in the same ledger as the other modes
  (`tff_brats.privacy.accounting`), so experiments compare both mechanisms
  under one accountant.
"""

from __future__ import annotations

import collections.abc
import math

import dp_accounting
import tensorflow_federated as tff

from tff_brats.aggregators import private_sharing
from tff_brats.privacy import accounting
from tff_brats.privacy import mechanisms

PRIVACY_MECHANISMS = ('none', 'selective_sharing', 'sparse_vector', 'gaussian')


def build_model_aggregator(
  privacy_mechanism: str,
  *,
  weighted: bool = True,
  shared_fraction: float = 1.0,
  clip_bound: float = 1.0,
  selection_epsilon: float | None = None,
  release_epsilon: float | None = None,
  threshold: float = 0.0,
  normalize_by_steps: bool = True,
  noise_multiplier: float | None = None,
  clients_per_round: float | None = None,
  noise_seed: int | None = None,
  diagnostics: bool = False,
):
  """The model aggregator of one privacy mode.

  Args:
    privacy_mechanism: One of `PRIVACY_MECHANISMS`.
    weighted: A `WeightedAggregationFactory` (for
      `build_weighted_fed_avg`) or an unweighted one (for
      `build_unweighted_fed_avg`; the client-side mechanisms then must not
      normalise by steps).
    shared_fraction: q, the fraction of values a client shares
      (selective sharing, SVT).
    clip_bound: γ, the per-value clip (selective sharing, SVT), or the L2
      clip of a whole update ('gaussian').
    selection_epsilon: ε of the SVT's selection.
    release_epsilon: ε3 of the SVT's noisy release.
    threshold: τ, the SVT threshold.
    normalize_by_steps: Clip the per-step update ΔW / n (selective sharing,
      SVT; weighted only).
    noise_multiplier: 'gaussian': noise standard deviation / clip.
    clients_per_round: 'gaussian': the mean's denominator.
    noise_seed: Client-side modes: None for fresh noise (the default and
      the only choice for deployments); an int for reproducible experiments.
    diagnostics: Client-side modes: also measure clipped fractions and
      noisy thresholds (outside the guarantee; simulations only).

  Returns:
    A `tff.aggregators.WeightedAggregationFactory` or
    `UnweightedAggregationFactory`.

  Raises:
    ValueError: An unknown mode or a parameter the mode needs is missing or
      out of range.
  """
  if privacy_mechanism not in PRIVACY_MECHANISMS:
    raise ValueError(
      f'privacy_mechanism must be one of {PRIVACY_MECHANISMS}. '
      f'Found {privacy_mechanism!r}.'
    )
  if privacy_mechanism == 'gaussian':
    return _gaussian(noise_multiplier, clients_per_round, clip_bound, weighted)
  normalize = normalize_by_steps and weighted
  if privacy_mechanism == 'none':
    mechanism = mechanisms.NoPrivacy()
  elif privacy_mechanism == 'selective_sharing':
    mechanism = mechanisms.SelectiveSharing(
      shared_fraction=shared_fraction,
      clip_bound=clip_bound,
      normalize_by_steps=normalize,
    )
  else:
    for name, value in (
      ('selection_epsilon', selection_epsilon),
      ('release_epsilon', release_epsilon),
    ):
      if value is None:
        raise ValueError(
          f'{name} must be given for the sparse vector technique. Found None.'
        )
    mechanism = mechanisms.SparseVectorTechnique(
      shared_fraction=shared_fraction,
      clip_bound=clip_bound,
      selection_epsilon=selection_epsilon,
      release_epsilon=release_epsilon,
      threshold=threshold,
      normalize_by_steps=normalize,
    )
  if weighted:
    return private_sharing.PrivateSharingFactory(
      mechanism, noise_seed=noise_seed, diagnostics=diagnostics
    )
  return private_sharing.UnweightedPrivateSharingFactory(
    mechanism, noise_seed=noise_seed, diagnostics=diagnostics
  )


class WeightsDroppingFactory(tff.aggregators.WeightedAggregationFactory):
  """Runs an unweighted factory inside a weighted algorithm (ignores weights).

  For aggregators whose guarantee needs every client to count once (TFF's
  DP-FedAvg): the weights reach the server but do not enter the result.
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


def _gaussian(noise_multiplier, clients_per_round, clip_bound, weighted):
  if noise_multiplier is None or clients_per_round is None:
    raise ValueError(
      'noise_multiplier and clients_per_round must be given for the '
      f'Gaussian mechanism. Found {noise_multiplier!r} and '
      f'{clients_per_round!r}.'
    )
  factory = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
    noise_multiplier=float(noise_multiplier),
    clients_per_round=float(clients_per_round),
    clip=float(clip_bound),
  )
  return WeightsDroppingFactory(factory) if weighted else factory


def privacy_record(aggregator_state, privacy_mechanism: str):
  """The per-client guarantee of the round that produced `aggregator_state`.

  The driver calls this after each round on the aggregator's part of the
  learning state (`state.aggregator` of a `tff.learning` algorithm) and
  records it for every participating client in its ledger; nothing here
  composes or computes ε.

  Args:
    aggregator_state: The state returned by the aggregation process's
      `next` (not `initialize`: TFF's DP factory holds a placeholder event
      before the first round).
    privacy_mechanism: The mode the aggregator was built with.

  Returns:
    An `accounting.PrivacyRecord`.
  """
  if privacy_mechanism not in PRIVACY_MECHANISMS:
    raise ValueError(
      f'privacy_mechanism must be one of {PRIVACY_MECHANISMS}. '
      f'Found {privacy_mechanism!r}.'
    )
  if privacy_mechanism == 'gaussian':
    if _field(aggregator_state, 'is_init_state'):
      raise ValueError(
        'aggregator_state must come from a round (next), not initialize: '
        "the Gaussian factory's first event is a placeholder. Found the "
        'initial state.'
      )
    event = dp_accounting.DpEvent.from_named_tuple(
      _field(aggregator_state, 'dp_event')
    )
    return accounting.PrivacyRecord.gaussian(event)
  record = _field(aggregator_state, 'privacy_record')
  epsilon = float(_field(record, 'epsilon'))
  if math.isinf(epsilon):
    return accounting.PrivacyRecord.no_guarantee(privacy_mechanism)
  return accounting.PrivacyRecord.from_epsilon_delta(
    privacy_mechanism, epsilon, float(_field(record, 'delta'))
  )


def _field(structure, name):
  """`structure[name]` or `structure.name` (TFF returns either form)."""
  if isinstance(structure, collections.abc.Mapping):
    return structure[name]
  return getattr(structure, name)
