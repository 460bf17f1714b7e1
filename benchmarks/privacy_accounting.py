"""Benchmarks the per-institution privacy accounting: seconds per query.

What a federated driver pays for its ledger:

* `compose`: ε at δ of one institution after `--rounds` sparse-vector
  rounds, tight (PLD) and summed, for each ε in `--epsilons`, and for a
  history that mixes two ε values (no common coarse grid).
* `ledger`: a 13-institution study over `--rounds` rounds, `--picked` per
  round: the budget check (`would_exceed`) and `record_round` every round,
  then the per-institution table.

Example:

  python -m benchmarks.privacy_accounting --rounds=500 --epsilons=0.05,0.3,1,2

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import sys
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

from tff_brats.privacy import accounting
from tff_brats.privacy import events

_ROUNDS = flags.DEFINE_integer('rounds', 500, 'Rounds per institution.')
_EPSILONS = flags.DEFINE_list(
  'epsilons', ['0.05', '0.3', '1', '2'], 'Per-round SVT ε values.'
)
_DELTA = flags.DEFINE_float('delta', 1e-5, 'δ of the reported ε.')
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 13, 'Institutions.')
_PICKED = flags.DEFINE_integer('picked', 4, 'Institutions per round.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the client sampling.')


def _svt(selection_epsilon: float, release_epsilon: float):
  """The record of an SVT round, (ε + ε3, 0)-DP."""
  event = events.EpsilonDeltaDpEvent(selection_epsilon + release_epsilon)
  return accounting.PrivacyRecord('sparse_vector', event)


def _timed(fn):
  start = time.perf_counter()
  value = fn()
  return value, time.perf_counter() - start


def run_benchmark(
  *,
  rounds: int,
  epsilons: Sequence[float],
  delta: float,
  num_clients: int,
  picked: int,
  seed: int,
) -> dict[str, Any]:
  """Runs the measurements; returns the JSON-able result."""
  if rounds < 1:
    raise ValueError(f'--rounds must be at least 1. Found {rounds}.')
  if not 1 <= picked <= num_clients:
    raise ValueError(
      f'--picked must be in [1, --num_clients={num_clients}]. Found {picked}.'
    )
  compose = []
  for epsilon in epsilons:
    record = _svt(epsilon / 2, epsilon / 2)
    for method in ('pld', 'sum'):
      value, seconds = _timed(
        lambda r=record, m=method: accounting.compose_epsilon(
          [(r, rounds)], delta=delta, method=m
        )
      )
      compose.append(
        {
          'epsilon_per_round': epsilon,
          'rounds': rounds,
          'method': method,
          'epsilon': value,
          'seconds': seconds,
        }
      )
      print(f'compose ε={epsilon} {method}: {seconds:.4f} s', file=sys.stderr)
  a = _svt(0.05, 0.05)
  b = _svt(0.1, 0.1 * np.pi / 3)
  half = rounds // 2
  value, seconds = _timed(
    lambda: accounting.compose_epsilon(
      [(a, half), (b, rounds - half)], delta=delta
    )
  )
  compose.append(
    {
      'epsilon_per_round': [a.epsilon, b.epsilon],
      'rounds': rounds,
      'method': 'pld',
      'epsilon': value,
      'seconds': seconds,
    }
  )

  rng = np.random.default_rng(seed)
  clients = [f'client-{i:02d}' for i in range(num_clients)]
  ledger = accounting.PrivacyLedger(client_ids=clients)
  record = _svt(0.05, 0.05)
  check_seconds = record_seconds = 0.0
  for round_num in range(rounds):
    chosen = [str(c) for c in rng.choice(clients, size=picked, replace=False)]
    _, seconds = _timed(
      lambda c=chosen: ledger.would_exceed(c, record, 1e9, delta)
    )
    check_seconds += seconds
    _, seconds = _timed(
      lambda r=round_num, c=chosen: ledger.record_round(r, c, record)
    )
    record_seconds += seconds
  _, table_seconds = _timed(lambda: ledger.table(delta))
  ledger_result = {
    'num_clients': num_clients,
    'picked_per_round': picked,
    'rounds': rounds,
    'would_exceed_seconds_mean': check_seconds / rounds,
    'record_round_seconds_mean': record_seconds / rounds,
    'table_seconds': table_seconds,
    'worst_case_epsilon': ledger.worst_case(delta)[1],
  }
  print(f'ledger: {ledger_result}', file=sys.stderr)
  return {'delta': delta, 'compose': compose, 'ledger': ledger_result}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    epsilons = [float(v) for v in _EPSILONS.value]
  except ValueError:
    raise app.UsageError(
      f'--epsilons must be numbers. Found {_EPSILONS.value}.'
    ) from None
  try:
    result = run_benchmark(
      rounds=_ROUNDS.value,
      epsilons=epsilons,
      delta=_DELTA.value,
      num_clients=_NUM_CLIENTS.value,
      picked=_PICKED.value,
      seed=_SEED.value,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  json.dump(result, sys.stdout, indent=1)
  sys.stdout.write('\n')


if __name__ == '__main__':
  app.run(main)
