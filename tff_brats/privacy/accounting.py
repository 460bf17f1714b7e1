"""Per-institution privacy accounting across federated rounds.

Mechanisms (`tff_brats.mechanisms`; their mathematics in plain TF in this
package) and this module (numpy/scipy + dp_accounting) meet only through a
`PrivacyRecord`, a dp_accounting `DpEvent` with the mechanism's name: what
one round guarantees to one participating institution. The driver records each
round in a `PrivacyLedger` (per client id: the rounds it took part in and
the record of each), asks `would_exceed` before a round runs, and saves the
ledger with every checkpoint (`to_json` / `from_json`).

Records. A `PrivacyRecord` is a mechanism's name (a label for tables,
never branched on) and the round's dp_accounting `DpEvent`, which the
mechanism itself states (`tff_brats.mechanisms`):

* `EpsilonDeltaDpEvent(ε, δ)` (`tff_brats.privacy.events`): a round known
  by its (ε, δ) guarantee, e.g. the sparse vector technique (Lyu, Su & Li
  2017, "Understanding the Sparse Vector Technique for Differential
  Privacy", PVLDB 10(6)), (ε + ε3, 0)-DP per round for the institution.
* `NonPrivateDpEvent()`: no DP claim (selective sharing, no privacy); ε = ∞.
  A client with any such round never gets a finite ε, whatever the method.
* any event dp_accounting's PLD accountant supports, e.g.
  `GaussianDpEvent(z)` for TFF's `DifferentiallyPrivateFactory.
  gaussian_fixed` (McMahan et al. 2018, "Learning Differentially Private
  Recurrent Language Models": the sum of the clipped updates plus
  N(0, (z·C)²) noise, adjacency = adding or removing one institution's whole
  contribution).

Participation model. The ledger answers "what does institution i's data
spend, given the rounds it took part in": it composes, per client, exactly
the records of its rounds and nothing else. For the Gaussian mechanism that
means recording the round's *unsampled* event for every participating
institution. Privacy amplification by sampling (`PoissonSampledDpEvent(q,
...)`, Abadi et al. 2016) would need institutions to be Poisson-sampled and
the sample to stay secret from whoever sees the updates; in cross-silo
federated learning the coordinator picks and knows the participants, so no
such claim is made by default. (A caller that does sample secretly can record
a `PoissonSampledDpEvent` for every institution in every round, participating
or not; the ledger composes whatever events it is given.)

Composition (`compose_epsilon`, methods):

* `'pld'` (default, tight): privacy-loss distributions (dp_accounting; Meiser
  & Mohammadi 2018, Koskela et al. 2020, Doroshenko et al. 2022 "Connect the
  Dots"). An (ε, δ) record contributes the PLD that dominates every (ε,
  δ)-DP mechanism (dp_accounting's `from_privacy_parameters`: loss ε w.p.
  (1−δ)/(1+e^−ε), −ε w.p. (1−δ)/(1+e^ε), ∞ w.p. δ; Kairouz, Oh & Viswanath
  2015, "The Composition Theorem for Differential Privacy"). Gaussian events
  go through dp_accounting's `PLDAccountant`, so a client with both kinds of
  rounds gets one PLD for everything. Equal records are grouped and
  self-composed (FFT), so hundreds of rounds take milliseconds.
* `'rdp'`: Rényi DP (Mironov 2017) through dp_accounting's `RdpAccountant`
  for DpEvents; a pure ε-DP round adds min(ε, α·ε²/2) at order α (Bun &
  Steinke 2016, Prop. 3.3; the bound dp_accounting uses for Laplace events).
  Records with δ > 0 have no Rényi bound: ValueError.
* `'sum'`: basic composition (Dwork et al. 2006): (Σε_i, Σδ_i). ε at δ is
  Σε_i when Σδ_i ≤ δ, else ∞. A Gaussian round is first converted to (ε_i,
  δ_i) with δ left over split equally among the Gaussian rounds.

Mixed ledgers compose SVT and Gaussian rounds under one neighbouring
relation: the SVT guarantee holds for any two updates of the institution in
the clip range (same n), in particular for its update against the zero
update, which is the Gaussian sum's add/remove-one-institution relation.

Discretisation of the PLD (`pld_discretization`). Pessimistic PLDs round
every privacy loss up to a multiple of the interval h, so ε(δ) comes out
high by at most (number of rounds)·h. The pure-DP records' losses ±ε are
put on the grid exactly whenever possible: with one distinct ε, h = ε (the
composed PLD is then the exact binomial of Kairouz et al., 2k+1 points);
with several, h = their greatest common divisor when they are decimals
(denominators ≤ 10⁶) with ≤ 10⁴ grid units per ε; otherwise h = 10⁻⁴ ·
10^⌊log10 ε_max⌋ (error ≤ 10⁻⁴ of the summed ε). With Gaussian events h is
the largest divisor of that grid not above 10⁻⁴ (dp_accounting's default,
at which its Gaussian PLDs are accurate), or 10⁻⁴ when the grid is finer
(pure losses then round up by < 10⁻⁴ per round). Grid membership is
decided to a relative 10⁻¹² (floating-point precision); losses off the grid
are rounded up (pessimistic).

Replays. Recording a (round, client) that is already recorded with an equal
record does nothing, so a driver may replay a round after a crash; an
unequal record for a recorded (round, client) is a ValueError and nothing of
that call is recorded. The ledger only grows: a replay that picks other
clients adds them, because the first attempt's releases may have left the
clients.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from collections.abc import Sequence
import dataclasses
import fractions
import json
import math
import textwrap
from typing import Any

import dp_accounting
from dp_accounting import dp_event as dp_event_lib
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np
from scipy import special

from tff_brats.privacy import events
from tff_brats.utils import checks

METHODS = ('pld', 'rdp', 'sum')

# dp_accounting's default PLD interval; Gaussian PLDs are built on a grid at
# least this fine.
EVENT_DISCRETIZATION = 1e-4
# Relative grid of the fallback for pure-DP records without a common grid.
_FALLBACK_RELATIVE_GRID = 1e-4
_MAX_GRID_UNITS = 10_000
_MAX_DENOMINATOR = 10**6
# Relative tolerance for "this loss lies on the grid".
_GRID_RTOL = 1e-12
# A spend within this relative margin of a budget meets it, so that ten
# rounds of ε = 0.1 meet a budget of 1.0 despite floating-point sums.
BUDGET_RTOL = 1e-9

# Cached ε values per ledger (histories × δ × method) before it is reset.
_MAX_CACHE = 4096

LEDGER_FORMAT = 'tff_brats.privacy_ledger'
# Version 2 stores every record as (mechanism, dp_event); version 1 (read
# too) stored (ε, δ) pairs for the client-side mechanisms.
LEDGER_VERSION = 2
_READABLE_VERSIONS = (1, 2)


@dataclasses.dataclass(frozen=True, eq=False)
class PrivacyRecord:
  """What one round guarantees to one participating institution.

  Records compare equal when their canonical JSON forms (`key`) are equal.

  Attributes:
    mechanism: The mechanism's name, a label for tables (e.g.
      'sparse_vector'); the accountant never reads it.
    dp_event: The round's dp_accounting `DpEvent` for one institution:
      `events.EpsilonDeltaDpEvent`, `NonPrivateDpEvent`, `NoOpDpEvent`, or an
      event dp_accounting's PLD accountant supports (numbers are normalised
      to Python floats and ints).
  """

  mechanism: str
  dp_event: dp_accounting.DpEvent

  def __post_init__(self):
    if not isinstance(self.mechanism, str) or not self.mechanism:
      raise ValueError(
        f'mechanism must be a non-empty name. Found {self.mechanism!r}.'
      )
    object.__setattr__(self, 'dp_event', _canonical_event(self.dp_event))
    # Records are compared, grouped and cached by this canonical JSON.
    key = json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)
    object.__setattr__(self, '_key', key)

  @property
  def has_guarantee(self) -> bool:
    """False for rounds without a DP claim (ε = ∞)."""
    return not events.is_non_private(self.dp_event)

  @property
  def is_epsilon_delta(self) -> bool:
    """Whether the round is known by an (ε, δ) pair (or is a no-op)."""
    return isinstance(
      self.dp_event, events.EpsilonDeltaDpEvent | dp_accounting.NoOpDpEvent
    )

  @property
  def epsilon(self) -> float | None:
    """ε of an (ε, δ) round: 0 for a no-op, ∞ without a guarantee, None
    for an event only an accountant can turn into ε (e.g. Gaussian)."""
    if not self.has_guarantee:
      return math.inf
    if not self.is_epsilon_delta:
      return None
    return float(getattr(self.dp_event, 'epsilon', 0.0))

  @property
  def delta(self) -> float | None:
    """δ of an (ε, δ) round (0 for a no-op or without a guarantee), None
    for other events (see `epsilon`)."""
    if self.has_guarantee and not self.is_epsilon_delta:
      return None
    return float(getattr(self.dp_event, 'delta', 0.0))

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready form: `{"mechanism": ..., "dp_event": {...}}`."""
    return {
      'mechanism': self.mechanism,
      'dp_event': events.event_to_dict(self.dp_event),
    }

  @classmethod
  def from_dict(cls, data: Any) -> PrivacyRecord:
    """Inverse of `to_dict`; also reads ledger version 1's (ε, δ) form.

    Raises:
      ValueError: A malformed dict.
    """
    if not isinstance(data, dict) or 'mechanism' not in data:
      raise ValueError(
        f'record must be a dict with a mechanism. Found {data!r}.'
      )
    if 'dp_event' in data:
      return cls(data['mechanism'], events.event_from_dict(data['dp_event']))
    # Version 1: {"mechanism", "epsilon" ('inf' without a claim), "delta"}.
    epsilon = data.get('epsilon')
    if epsilon == 'inf':
      return cls(data['mechanism'], dp_accounting.NonPrivateDpEvent())
    return cls(
      data['mechanism'],
      events.EpsilonDeltaDpEvent(epsilon, data.get('delta', 0.0)),
    )

  @property
  def key(self) -> str:
    """Canonical JSON of the record (equal records, equal keys)."""
    return self._key

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, PrivacyRecord):
      return NotImplemented
    return self.key == other.key

  def __hash__(self) -> int:
    return hash(self.key)


def compose_epsilon(
  history: Iterable[tuple[PrivacyRecord, int]],
  *,
  delta: float,
  method: str = 'pld',
) -> float:
  """ε at `delta` of composing `count` rounds of every `(record, count)`.

  Args:
    history: `(record, count)` pairs; equal records are merged.
    delta: Target δ in [0, 1). At δ = 0 the answer is Σ count·ε when every
      round is pure ε-DP (tight: Kairouz et al. 2015, Thm. 3.3 at i = 0) and
      ∞ otherwise, for every method.
    method: 'pld' (tight), 'rdp' or 'sum'; see the module docstring.

  Returns:
    ε ≥ 0, or math.inf when any round makes no DP claim (or the Gaussian
    events have noise 0).

  Raises:
    ValueError: Bad arguments; method 'rdp' with a δ > 0 record; an event
      the accountant does not support.
  """
  check_delta(delta)
  check_method(method)
  groups = _group(history)
  if not groups:
    return 0.0
  if not all(record.has_guarantee for record, _ in groups):
    return math.inf
  if delta == 0:
    if all(r.is_epsilon_delta and r.delta == 0 for r, _ in groups):
      return math.fsum(n * r.epsilon for r, n in groups)
    return math.inf
  if method == 'pld':
    return _pld_epsilon(groups, delta)
  if method == 'rdp':
    return _rdp_epsilon(groups, delta)
  return _summed_epsilon(groups, delta)


def pld_discretization(
  epsilons: Iterable[float], *, with_events: bool = False
) -> float:
  """The PLD interval for pure records with these ε (module docstring).

  Args:
    epsilons: The ε of the client's (ε, δ) records (zeros and repeats are
      fine).
    with_events: Whether DpEvents (Gaussian PLDs) are composed too.

  Returns:
    The value discretisation interval h.
  """
  values = sorted({float(e) for e in epsilons if 0 < e < math.inf})
  if not values:
    return EVENT_DISCRETIZATION
  grid = values[0] if len(values) == 1 else _common_grid(values)
  if grid is None:
    grid = 10.0 ** math.floor(math.log10(values[-1])) * _FALLBACK_RELATIVE_GRID
  if with_events:
    if grid < EVENT_DISCRETIZATION:
      return EVENT_DISCRETIZATION
    grid /= math.ceil(grid / EVENT_DISCRETIZATION * (1 - _GRID_RTOL))
  return grid


class PrivacyLedger:
  """Per institution: the rounds it took part in and each round's record.

  Example:

    ledger = PrivacyLedger(client_ids=['CBICA', 'TCIA01'])
    # e.g. tff_brats.mechanisms.SparseVector(...).record()
    record = PrivacyRecord('sparse_vector', EpsilonDeltaDpEvent(0.1))
    if not ledger.would_exceed(['CBICA'], record, 10.0, 1e-5):
      ...  # run round 0 with CBICA
      ledger.record_round(0, ['CBICA'], record)
    ledger.epsilon('CBICA', delta=1e-5)
    print(ledger.table(1e-5))
  """

  def __init__(self, client_ids: Iterable[str] = ()):
    """Creates an empty ledger.

    Args:
      client_ids: Institutions to list from the start (with 0 rounds until
        they take part). Others are added when first recorded.
    """
    self._rounds: dict[str, dict[int, PrivacyRecord]] = {}
    self._cache: dict[tuple[Any, ...], float] = {}
    self.add_clients(client_ids)

  @property
  def client_ids(self) -> tuple[str, ...]:
    """Every client of the ledger, in the order they were added."""
    return tuple(self._rounds)

  def add_clients(self, client_ids: Iterable[str]) -> None:
    """Lists clients (with no rounds) that are not listed yet."""
    for client_id in _check_client_ids(client_ids, allow_empty=True):
      self._rounds.setdefault(client_id, {})

  def record_round(
    self,
    round_num: int,
    client_ids: Sequence[str],
    record: PrivacyRecord,
  ) -> list[str]:
    """Records that `client_ids` took part in round `round_num`.

    Idempotent per (round, client): an equal record for a recorded pair is
    ignored. An unequal one raises and records nothing (see the module
    docstring, "Replays").

    Args:
      round_num: The round (a non-negative integer, any order).
      client_ids: The participating clients (non-empty, no repeats).
      record: What the round guaranteed each of them.

    Returns:
      The clients newly recorded for this round (empty for a full replay).

    Raises:
      ValueError: Bad arguments, or a conflicting record.
    """
    checks.check_non_negative_int('round_num', round_num)
    round_num = int(round_num)
    client_ids = _check_client_ids(client_ids, allow_empty=False)
    _check_record(record)
    new = []
    for client_id in client_ids:
      old = self._rounds.get(client_id, {}).get(round_num)
      if old is None:
        new.append(client_id)
      elif old != record:
        raise ValueError(
          f'record must equal the one already recorded for client '
          f'{client_id!r} in round {round_num} ({old.key}); a replayed '
          f'round must record the same guarantee. Found {record.key}.'
        )
    for client_id in new:
      self._rounds.setdefault(client_id, {})[round_num] = record
    return new

  def history(self, client_id: str) -> list[tuple[int, PrivacyRecord]]:
    """The client's `(round, record)` pairs, by round."""
    return sorted(self._client(client_id).items(), key=lambda item: item[0])

  def num_rounds(self, client_id: str) -> int:
    """How many rounds the client took part in."""
    return len(self._client(client_id))

  def epsilon(
    self, client_id: str, *, delta: float, method: str = 'pld'
  ) -> float:
    """ε the client has spent, at `delta` (see `compose_epsilon`)."""
    return self._spent(self._client(client_id).values(), delta, method)

  def epsilons(self, delta: float, method: str = 'pld') -> dict[str, float]:
    """Client id -> ε spent at `delta`, for every client."""
    return {
      c: self.epsilon(c, delta=delta, method=method) for c in self._rounds
    }

  def worst_case(
    self, delta: float, method: str = 'pld'
  ) -> tuple[str, float] | None:
    """`(client_id, ε)` of the client that spent the most (None if empty).

    Ties go to the client added first.
    """
    spent = self.epsilons(delta, method)
    if not spent:
      return None
    client_id = max(spent, key=spent.__getitem__)
    return client_id, spent[client_id]

  def would_exceed(
    self,
    client_ids: Sequence[str],
    next_record: PrivacyRecord,
    target_epsilon: float,
    delta: float,
    *,
    method: str = 'pld',
    round_num: int | None = None,
  ) -> list[str]:
    """The budget check before a round runs.

    Args:
      client_ids: The clients picked for the next round.
      next_record: What the round would guarantee each of them.
      target_epsilon: The budget (ε at `delta`); inf for none.
      delta: The budget's δ.
      method: How to compose (default tight PLD).
      round_num: The round about to run, if known: a client that already
        has this round with an equal record (a replay) spends nothing new.

    Returns:
      The clients (in the given order) whose ε would exceed the budget.
      Spending exactly the budget (to a relative 1e-9) does not exceed it.
    """
    client_ids = _check_client_ids(client_ids, allow_empty=True)
    _check_record(next_record)
    if not checks.is_number(target_epsilon) or not target_epsilon >= 0:
      raise ValueError(
        f'target_epsilon must be a non-negative number. Found '
        f'{target_epsilon!r}.'
      )
    if round_num is not None:
      checks.check_non_negative_int('round_num', round_num)
    exceeding = []
    for client_id in client_ids:
      rounds = dict(self._rounds.get(client_id, {}))
      key = round_num if round_num is not None else _next_free(rounds)
      if rounds.get(key, next_record) != next_record:
        raise ValueError(
          f'next_record must equal the record of round {round_num} already '
          f'recorded for client {client_id!r}. Found {next_record.key}.'
        )
      rounds[key] = next_record
      spent = self._spent(rounds.values(), delta, method)
      if exceeds(spent, target_epsilon):
        exceeding.append(client_id)
    return exceeding

  def table(
    self,
    delta: float,
    notes: Iterable[str] = (),
    unit: str = 'per institution',
  ) -> str:
    """Per-institution table: rounds, mechanisms, ε summed and tight.

    Args:
      delta: The δ of every ε in the table.
      notes: Paragraphs printed below the table, e.g. what the guarantee
        does not cover (`tff_brats.mechanisms`' `caveats`).
      unit: Whose privacy each ε protects, as printed in the title
        (`mechanisms.base.unit_text`): 'per institution', or 'per patient
        (...)' for an institution's patients.
    """
    check_delta(delta)
    header = ('client', 'rounds', 'mechanism', 'ε summed', 'ε tight (PLD)')
    rows = []
    for client_id, rounds in self._rounds.items():
      mechanisms = []
      for _, record in sorted(rounds.items()):
        if record.mechanism not in mechanisms:
          mechanisms.append(record.mechanism)
      rows.append(
        (
          client_id,
          str(len(rounds)),
          '+'.join(mechanisms) or '-',
          format_epsilon(self._spent(rounds.values(), delta, 'sum')),
          format_epsilon(self._spent(rounds.values(), delta, 'pld')),
        )
      )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    align = ('<', '>', '<', '>', '>')

    def line(cells):
      return '  '.join(
        f'{c:{a}{w}}' for c, a, w in zip(cells, align, widths, strict=True)
      ).rstrip()

    lines = [
      f'Privacy spent {unit} at δ = {delta:g}',
      line(header),
      line(['-' * w for w in widths]),
      *(line(r) for r in rows),
    ]
    notes = [
      'ε summed: basic composition (Σε, Σδ). ε tight: privacy-loss-'
      'distribution composition (dp_accounting). inf: the institution took '
      'part in a round without a DP guarantee.',
      *notes,
    ]
    lines += [textwrap.fill(note, width=79) for note in notes]
    return '\n'.join(lines)

  def to_json(self) -> str:
    """The ledger as versioned JSON (for checkpoints).

    Format (version 2): `records` lists the distinct records
    (`PrivacyRecord.to_dict`); `clients` maps each client id, in order, to
    `{"<first>-<last>" or "<round>": <record index>}` runs of consecutive
    rounds with the same record.
    """
    records: dict[str, int] = {}
    record_dicts = []
    clients = {}
    for client_id, rounds in self._rounds.items():
      runs = {}
      for first, last, record in _runs(rounds):
        if record.key not in records:
          records[record.key] = len(record_dicts)
          record_dicts.append(record.to_dict())
        name = str(first) if first == last else f'{first}-{last}'
        runs[name] = records[record.key]
      clients[client_id] = runs
    data = {
      'format': LEDGER_FORMAT,
      'version': LEDGER_VERSION,
      'records': record_dicts,
      'clients': clients,
    }
    return json.dumps(data, indent=2, allow_nan=False) + '\n'

  @classmethod
  def from_json(cls, text: str) -> PrivacyLedger:
    """Inverse of `to_json`. Raises ValueError on anything malformed."""
    try:
      data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as e:
      raise ValueError(
        f'ledger JSON must be valid JSON. Found error: {e}'
      ) from None
    if not isinstance(data, dict) or data.get('format') != LEDGER_FORMAT:
      raise ValueError(
        f'ledger JSON must have format {LEDGER_FORMAT!r}. Found '
        f'{data.get("format") if isinstance(data, dict) else data!r}.'
      )
    if data.get('version') not in _READABLE_VERSIONS:
      raise ValueError(
        f'ledger JSON version must be one of {_READABLE_VERSIONS}. Found '
        f'{data.get("version")!r}.'
      )
    try:
      records = [PrivacyRecord.from_dict(r) for r in data['records']]
      ledger = cls()
      for client_id, runs in data['clients'].items():
        ledger.add_clients([client_id])
        for name, index in runs.items():
          if not checks.is_int(index) or not 0 <= index < len(records):
            raise ValueError(f'bad record index {index!r}')
          first, _, last = name.partition('-')
          first, last = int(first), int(last or first)
          if first > last:
            raise ValueError(f'bad round range {name!r}')
          for round_num in range(first, last + 1):
            ledger.record_round(round_num, [client_id], records[index])
    except (KeyError, TypeError, AttributeError, ValueError) as e:
      raise ValueError(f'ledger JSON is malformed: {e}') from None
    return ledger

  def _client(self, client_id: str) -> dict[int, PrivacyRecord]:
    if client_id not in self._rounds:
      raise ValueError(
        f'client_id must be a client of the ledger. Found {client_id!r}.'
      )
    return self._rounds[client_id]

  def _spent(
    self, records: Iterable[PrivacyRecord], delta: float, method: str
  ) -> float:
    """Cached `compose_epsilon` (clients with equal histories share it)."""
    records = list(records)
    counts = collections.Counter(r.key for r in records)
    signature = (tuple(sorted(counts.items())), delta, method)
    if signature not in self._cache:
      if len(self._cache) >= _MAX_CACHE:
        self._cache.clear()
      by_key = {r.key: r for r in records}
      self._cache[signature] = compose_epsilon(
        [(by_key[k], n) for k, n in counts.items()],
        delta=delta,
        method=method,
      )
    return self._cache[signature]


def exceeds(spent: float, target_epsilon: float) -> bool:
  """Whether `spent` exceeds `target_epsilon` (beyond a relative 1e-9)."""
  if spent == target_epsilon:
    return False
  return spent > target_epsilon * (1 + BUDGET_RTOL)


def format_epsilon(epsilon: float) -> str:
  """ε for tables: 4 decimals, 5 significant digits from 1e5 on, or 'inf'."""
  if epsilon == math.inf:
    return 'inf'
  return f'{epsilon:.4e}' if abs(epsilon) >= 1e5 else f'{epsilon:.4f}'


def check_delta(delta: float) -> None:
  """Raises ValueError unless `delta` is a number in [0, 1)."""
  if not checks.is_number(delta) or not 0 <= delta < 1:
    raise ValueError(f'delta must be in [0, 1). Found {delta!r}.')


def check_method(method: str) -> None:
  """Raises ValueError unless `method` is one of `METHODS`."""
  if method not in METHODS:
    raise ValueError(
      f'method must be one of {", ".join(METHODS)}. Found {method!r}.'
    )


# ------------------------------------------------------------- helpers ----


class _PldAccountant(pld_privacy_accountant.PLDAccountant):
  """dp_accounting's PLDAccountant that also composes a ready-made PLD."""

  def compose_pld(
    self, pld: privacy_loss_distribution.PrivacyLossDistribution
  ) -> None:
    self._pld = self._pld.compose(pld)


def _pld_epsilon(groups, delta):
  pure = [(r, n) for r, n in groups if r.is_epsilon_delta]
  others = [(r, n) for r, n in groups if not r.is_epsilon_delta]
  h = pld_discretization([r.epsilon for r, _ in pure], with_events=bool(others))
  accountant = _PldAccountant(value_discretization_interval=h)
  for record, count in pure:
    if record.epsilon == 0 and record.delta == 0:
      continue
    pld = _pure_dp_pld(record.epsilon, record.delta, h)
    accountant.compose_pld(pld.self_compose(count) if count > 1 else pld)
  for record, count in others:
    accountant.compose(dp_event_lib.SelfComposedDpEvent(record.dp_event, count))
  return float(accountant.get_epsilon(delta))


def _pure_dp_pld(epsilon, delta, h):
  """dp_accounting's `from_privacy_parameters(ε, δ)` on grid h.

  The same distribution (loss ε w.p. (1−δ)/(1+e^−ε), −ε w.p.
  (1−δ)/(1+e^ε), ∞ w.p. δ), with losses that lie on the grid to a relative
  1e-12 kept there instead of being pushed one step up by floating-point
  division (0.3 / 1e-4 = 2999.9999999999995).
  """
  pmf = collections.defaultdict(float)
  pmf[_grid_index(epsilon, h)] += (1 - delta) * float(special.expit(epsilon))
  pmf[_grid_index(-epsilon, h)] += (1 - delta) * float(special.expit(-epsilon))
  pld_class = privacy_loss_distribution.PrivacyLossDistribution
  return pld_class.create_from_rounded_probability(dict(pmf), delta, h)


def _grid_index(loss, h):
  """Smallest i with i·h ≥ loss (pessimistic), to a relative 1e-12."""
  q = loss / h
  return math.ceil(q - _GRID_RTOL * abs(q))


def _common_grid(values):
  """Largest h with every value an integer multiple (decimals), or None."""
  grid = None
  for value in values:
    frac = fractions.Fraction(value).limit_denominator(_MAX_DENOMINATOR)
    if frac == 0 or abs(float(frac) - value) > _GRID_RTOL * value:
      return None
    grid = frac if grid is None else _fraction_gcd(grid, frac)
  if values[-1] / float(grid) > _MAX_GRID_UNITS:
    return None
  return float(grid)


def _fraction_gcd(a, b):
  return fractions.Fraction(
    math.gcd(a.numerator * b.denominator, b.numerator * a.denominator),
    a.denominator * b.denominator,
  )


def _rdp_epsilon(groups, delta):
  accountant = rdp_privacy_accountant.RdpAccountant()
  orders = accountant.orders
  pure_rdp = np.zeros_like(orders, dtype=np.float64)
  for record, count in groups:
    if not record.is_epsilon_delta:
      event = dp_event_lib.SelfComposedDpEvent(record.dp_event, count)
      if not accountant.supports(event):
        raise ValueError(
          "method='rdp' needs events dp_accounting's RdpAccountant supports. "
          f'Found {record.dp_event!r}.'
        )
      accountant.compose(event)
    elif record.delta > 0:
      raise ValueError(
        "method='rdp' cannot compose (ε, δ) records with δ > 0 (they have no "
        f"Rényi bound); use 'pld' or 'sum'. Found delta={record.delta!r}."
      )
    else:
      eps = record.epsilon
      pure_rdp += count * np.minimum(eps, orders * eps * eps / 2)
  epsilon, _ = rdp_privacy_accountant.compute_epsilon(
    orders, accountant.rdp + pure_rdp, delta
  )
  return float(epsilon)


def _summed_epsilon(groups, delta):
  pure = [(r, n) for r, n in groups if r.is_epsilon_delta]
  others = [(r, n) for r, n in groups if not r.is_epsilon_delta]
  pure_delta = math.fsum(n * r.delta for r, n in pure)
  epsilons = [n * r.epsilon for r, n in pure]
  if others:
    num_events = sum(n for _, n in others)
    share = (delta - pure_delta) / num_events
    if share <= 0:
      return math.inf
    for record, count in others:
      single = _PldAccountant(
        value_discretization_interval=EVENT_DISCRETIZATION
      )
      epsilons.append(
        count * single.compose(record.dp_event).get_epsilon(share)
      )
  elif pure_delta > delta * (1 + BUDGET_RTOL):
    return math.inf
  return float(math.fsum(epsilons))


def _group(history):
  counts: dict[str, int] = {}
  records: dict[str, PrivacyRecord] = {}
  for item in history:
    if not isinstance(item, tuple) or len(item) != 2:
      raise ValueError(
        f'history must hold (record, count) pairs. Found {item!r}.'
      )
    record, count = item
    _check_record(record)
    checks.check_non_negative_int('count', count)
    if count:
      counts[record.key] = counts.get(record.key, 0) + int(count)
      records[record.key] = record
  return [(records[k], n) for k, n in counts.items()]


def _runs(rounds):
  """(first, last, record) runs of consecutive rounds with equal records."""
  runs = []
  for round_num, record in sorted(rounds.items()):
    if runs and runs[-1][1] == round_num - 1 and runs[-1][2] == record:
      runs[-1][1] = round_num
    else:
      runs.append([round_num, round_num, record])
  return [tuple(r) for r in runs]


def _next_free(rounds):
  return max(rounds, default=-1) + 1


def _canonical_event(event):
  if not isinstance(event, dp_event_lib.DpEvent):
    raise ValueError(
      f'dp_event must be a dp_accounting DpEvent. Found {event!r}.'
    )
  event = events.canonical(event)
  if not isinstance(
    event, events.EpsilonDeltaDpEvent
  ) and not pld_privacy_accountant.PLDAccountant().supports(event):
    raise ValueError(
      "dp_event must be an EpsilonDeltaDpEvent or an event dp_accounting's "
      f'PLDAccountant supports (add-or-remove-one). Found {event!r}.'
    )
  return event


def _check_record(record):
  if not isinstance(record, PrivacyRecord):
    raise ValueError(f'record must be a PrivacyRecord. Found {record!r}.')


def _check_client_ids(client_ids, *, allow_empty):
  if isinstance(client_ids, str):
    raise ValueError(
      f'client_ids must be a sequence of strings, not a string. Found '
      f'{client_ids!r}.'
    )
  client_ids = list(client_ids)
  for client_id in client_ids:
    if not isinstance(client_id, str) or not client_id:
      raise ValueError(
        f'client_ids must be non-empty strings. Found {client_id!r}.'
      )
  if not allow_empty and not client_ids:
    raise ValueError('client_ids must name at least one client. Found [].')
  if len(set(client_ids)) != len(client_ids):
    raise ValueError(
      f'client_ids must not repeat a client. Found {client_ids!r}.'
    )
  return client_ids
