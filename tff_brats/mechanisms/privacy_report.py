"""What a planned private run spends: the library of `compute_privacy.py`.

`run_compute_privacy(**kwargs)` takes the binary's flags as keyword
arguments and returns a JSON-ready dict; `format_report` turns it into the
text the binary prints. For a mechanism (`tff_brats.mechanisms`, named by
`privacy_mechanism` with its `parameters`) and a run (rounds, clients per
round, clients) it gives the per-round guarantee of one institution, the
mechanism's internals for an update of N values, and the total ε per
institution at δ (summed, RDP and tight) for the worst case (joins every
round: the guarantee) and the expected participation (orientation only).
With `target_epsilon` and `solve_for` it first solves the mechanism for that
parameter over the worst case (`PrivacyMechanism.solve`).

Every number comes from the mechanism object and `tff_brats.privacy`
(planning, accounting); nothing here depends on which mechanism it is.
TensorFlow is imported only to count a SegResNet's parameters
(`init_filters`).
"""

from __future__ import annotations

import json
import math
import textwrap
from typing import Any

from tff_brats.mechanisms import base
from tff_brats.mechanisms import registry
from tff_brats.privacy import accounting
from tff_brats.privacy import events
from tff_brats.privacy import planning
from tff_brats.utils import atomic
from tff_brats.utils import checks

SAMPLING_NOTE = (
  'No privacy amplification by the sampling of institutions is claimed (the '
  'coordinator knows who took part): an institution that joins k rounds '
  'spends the k-fold '
  'composition, and the guarantee is the worst case k = R.'
)
_METHOD_COLUMNS = (
  ('epsilon_summed', 'sum', 'ε summed'),
  ('epsilon_rdp', 'rdp', 'ε RDP'),
  ('epsilon_tight', 'pld', 'ε tight (PLD)'),
)


def run_compute_privacy(
  *,
  privacy_mechanism: str = 'sparse_vector',
  parameters: dict[str, Any] | None = None,
  num_values: int | None = None,
  init_filters: int | None = 16,
  total_rounds: int = 20,
  clients_per_round: int | None = None,
  num_clients: int = 13,
  delta: float = 1e-5,
  target_epsilon: float | None = None,
  solve_for: str | None = None,
  output_json: str | None = None,
) -> dict[str, Any]:
  """Computes the privacy report of a planned run.

  Args:
    privacy_mechanism: A name of `tff_brats.mechanisms.NAMES`.
    parameters: The mechanism's parameters (its dataclass fields; see
      `PrivacyMechanism.parameter_names`). With `solve_for`, that parameter
      may be missing or None.
    num_values: N, the values of the update; if None, N is counted from
      `init_filters`.
    init_filters: Count N as SegResNet(init_filters)'s trainable parameters
      when `num_values` is None (None: no N, no internals).
    total_rounds: R.
    clients_per_round: Institutions per round (default: all).
    num_clients: Institutions in total.
    delta: δ at which totals are reported (0 < δ < 1).
    target_epsilon: With `solve_for`: the total budget to meet at δ over R
      rounds.
    solve_for: A parameter of the mechanism's `solvable`.
    output_json: If set, the result is also written there (atomically).

  Returns:
    A JSON-ready dict (ε = ∞ is math.inf; the JSON file writes 'inf').

  Raises:
    ValueError: A bad or missing argument, naming it.
  """
  cls = registry.get(privacy_mechanism)
  parameters = {
    k: v
    for k, v in dict(parameters or {}).items()
    if k in cls.parameter_names()
  }
  if not checks.is_number(delta) or not 0 < delta < 1:
    raise ValueError(f'delta must be in (0, 1). Found {delta!r}.')
  if clients_per_round is None:
    clients_per_round = num_clients
  part = planning.participation(total_rounds, clients_per_round, num_clients)
  n, n_source = _num_values(num_values, init_filters)
  if (target_epsilon is None) != (solve_for is None):
    raise ValueError(
      'target_epsilon and solve_for must be given together. Found '
      f'target_epsilon={target_epsilon!r}, solve_for={solve_for!r}.'
    )
  solved = None
  if solve_for is None:
    mechanism = cls.from_parameters(parameters)
  else:
    checks.check_positive_number('target_epsilon', target_epsilon)
    given = {k: v for k, v in parameters.items() if k != solve_for}
    solution = cls.solve(
      solve_for,
      target_epsilon=target_epsilon,
      delta=delta,
      num_rounds=part.worst_case_rounds,
      **given,
    )
    mechanism = solution.mechanism
    solved = {
      'parameter': solution.parameter,
      'value': solution.value,
      'target_epsilon': float(target_epsilon),
      'rounds': part.worst_case_rounds,
      'method': solution.method,
      'achieved_epsilon': planning.total_epsilon(
        mechanism.record(),
        part.worst_case_rounds,
        delta=delta,
        method=solution.method,
      ),
    }
  record = mechanism.record()
  views = [('worst_case', part.worst_case_rounds)]
  if part.fraction < 1:
    views.append(('expected', part.expected_rounds_ceil))
  totals = []
  for view, rounds in views:
    total = {'view': view, 'rounds': rounds}
    for key, method, _ in _METHOD_COLUMNS:
      total[key] = planning.total_epsilon(
        record, rounds, delta=delta, method=method
      )
    totals.append(total)
  result = {
    'privacy_mechanism': mechanism.name,
    'unit': mechanism.unit,
    'parameters': {k: v for k, v in mechanism.to_dict().items() if k != 'name'},
    'delta': float(delta),
    'num_values': n,
    'num_values_source': n_source,
    'solved': solved,
    'round': {
      'guarantee': mechanism.guarantee_text(),
      'dp_event': events.event_to_dict(mechanism.dp_event()),
      'epsilon_at_delta': planning.total_epsilon(record, 1, delta=delta),
    },
    'internals': mechanism.describe(n),
    'description': mechanism.describe_lines(n),
    'participation': {
      'total_rounds': part.total_rounds,
      'clients_per_round': part.clients_per_round,
      'num_clients': part.num_clients,
      'fraction': part.fraction,
      'worst_case_rounds': part.worst_case_rounds,
      'expected_rounds': part.expected_rounds,
    },
    'totals': totals,
    'notes': [SAMPLING_NOTE, *mechanism.caveats],
  }
  if output_json:
    atomic.write_text(output_json, to_json(result))
  return result


def to_json(result: dict[str, Any]) -> str:
  """The result as JSON; ε = ∞ is written as the string 'inf'."""
  return json.dumps(_json_ready(result), indent=2, allow_nan=False) + '\n'


def format_report(result: dict[str, Any]) -> str:
  """The readable report of a `run_compute_privacy` result."""
  delta = result['delta']
  lines = []
  if result['solved']:
    s = result['solved']
    lines += [
      f'Solved {s["parameter"]} = {s["value"]:.6g} to meet ε = '
      f'{s["target_epsilon"]:g} at δ = {delta:g} over {s["rounds"]} rounds '
      f'({s["method"]}; achieved ε = {s["achieved_epsilon"]:.6g}).',
      '',
    ]
  if result['num_values'] is not None:
    lines.append(
      f'Update: N = {result["num_values"]:,} values '
      f'({result["num_values_source"]}).'
    )
  lines += result['description']
  one_round = accounting.format_epsilon(result['round']['epsilon_at_delta'])
  per = base.unit_text(result['unit'])
  lines.append(f'  one round: ε {per} = {one_round} at δ = {delta:g} (PLD)')
  part = result['participation']
  lines += [
    '',
    f'Participation: {part["total_rounds"]} rounds, '
    f'{part["clients_per_round"]} of {part["num_clients"]} institutions per '
    f'round (p = {part["fraction"]:.4g}).',
    f'Total ε {per} at δ = {delta:g}:',
  ]
  labels = {
    'worst_case': 'worst case: every round',
    'expected': 'expected: ⌈pR⌉ rounds, not a bound',
  }
  header = ['view', 'rounds', *(title for _, _, title in _METHOD_COLUMNS)]
  rows = [
    [
      labels[t['view']],
      str(t['rounds']),
      *(accounting.format_epsilon(t[key]) for key, _, _ in _METHOD_COLUMNS),
    ]
    for t in result['totals']
  ]
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  for row in [header, *rows]:
    cells = [f'{row[0]:<{widths[0]}}'] + [
      f'{c:>{w}}' for c, w in zip(row[1:], widths[1:], strict=True)
    ]
    lines.append('  ' + '  '.join(cells))
  lines.append('')
  lines += [textwrap.fill(note, width=79) for note in result['notes']]
  return '\n'.join(lines)


def count_segresnet_parameters(init_filters: int) -> int:
  """Trainable parameters of `SegResNet(init_filters=...)` (4 in, 3 out).

  Builds the model on an 8³ input (weights do not depend on the volume
  size). 16 filters give 4,702,227, MONAI's count.
  """
  checks.check_positive_int('init_filters', init_filters)
  # Imported here: only this needs TensorFlow.
  import tensorflow as tf

  from tff_brats.models import segresnet

  model = segresnet.SegResNet(init_filters=int(init_filters))
  size = model.size_multiple
  model(tf.zeros([1, size, size, size, model.in_channels]))
  return model.num_parameters


def _num_values(num_values, init_filters):
  if num_values is not None:
    checks.check_positive_int('num_values', num_values)
    return int(num_values), 'num_values'
  if init_filters is not None:
    n = count_segresnet_parameters(init_filters)
    return n, f'SegResNet(init_filters={init_filters}) trainable parameters'
  return None, None


def _json_ready(value):
  if isinstance(value, dict):
    return {k: _json_ready(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_json_ready(v) for v in value]
  if isinstance(value, float) and math.isinf(value):
    return 'inf' if value > 0 else '-inf'
  return value
