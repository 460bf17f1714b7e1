"""What a planned private run spends: the library of `compute_privacy.py`.

`run_compute_privacy(**kwargs)` takes the binary's flags as keyword
arguments and returns a JSON-ready dict; `format_report` turns it into the
text the binary prints. For a mechanism and a run (rounds, clients per
round, clients) it gives the per-round guarantee of one institution, the
SVT internals, and the total ε per institution at δ, summed and tight, for
the worst case (joins every round: the guarantee) and the expected
participation (orientation only). With `target_epsilon` it first solves for
`solve_for` (release_epsilon, selection_epsilon or noise_multiplier) over
the worst case.

TensorFlow is imported only to count a SegResNet's parameters
(`init_filters`), so the accounting never needs it.
"""

from __future__ import annotations

import json
import math
import textwrap
from typing import Any

from tff_brats.privacy import accounting
from tff_brats.privacy import planning
from tff_brats.utils import atomic
from tff_brats.utils import checks

MECHANISMS = (
  accounting.SPARSE_VECTOR,
  accounting.GAUSSIAN,
  accounting.SELECTIVE_SHARING,
)
SOLVE_FOR = ('release_epsilon', 'selection_epsilon', 'noise_multiplier')

GAUSSIAN_CAVEAT = (
  'Gaussian rounds (TFF DifferentiallyPrivateFactory) add noise to the sum '
  'of clipped updates: the guarantee covers what the aggregate reveals about '
  "adding or removing one institution's whole contribution; whoever sums "
  'the updates sees them unless secure aggregation is used.'
)
SAMPLING_NOTE = (
  'No privacy amplification by sampling is claimed (the coordinator knows '
  'who took part): an institution that joins k rounds spends the k-fold '
  'composition, and the guarantee is the worst case k = R.'
)


def run_compute_privacy(
  *,
  mechanism: str = accounting.SPARSE_VECTOR,
  shared_fraction: float | None = 0.1,
  clip_bound: float | None = None,
  selection_epsilon: float | None = None,
  release_epsilon: float | None = None,
  threshold: float | None = None,
  num_values: int | None = None,
  init_filters: int | None = None,
  total_rounds: int = 100,
  clients_per_round: int | None = None,
  num_clients: int = 13,
  delta: float = 1e-5,
  noise_multiplier: float | None = None,
  target_epsilon: float | None = None,
  solve_for: str | None = None,
  output_json: str | None = None,
) -> dict[str, Any]:
  """Computes the privacy report of a planned run.

  Args:
    mechanism: 'sparse_vector', 'gaussian' or 'selective_sharing'.
    shared_fraction: q, the fraction of values an SVT/selective-sharing
      client releases (sets c = ⌈qN⌉; not ε).
    clip_bound: γ (SVT: per-value clip; Gaussian: L2 clip, echoed).
    selection_epsilon: SVT selection budget ε.
    release_epsilon: SVT release budget ε3.
    threshold: SVT threshold τ (echoed; it does not enter ε).
    num_values: N, the values of the update (or give `init_filters`).
    init_filters: Count N as SegResNet(init_filters)'s trainable
      parameters.
    total_rounds: R.
    clients_per_round: Institutions per round (default: all).
    num_clients: Institutions in total.
    delta: δ at which totals are reported (0 < δ < 1).
    noise_multiplier: Gaussian noise multiplier z (stddev / L2 clip).
    target_epsilon: With `solve_for`: the total budget to meet at δ over
      R rounds.
    solve_for: 'release_epsilon', 'selection_epsilon' (SVT) or
      'noise_multiplier' (Gaussian).
    output_json: If set, the result is also written there (atomically).

  Returns:
    A JSON-ready dict (ε = ∞ is math.inf; the JSON file writes 'inf').

  Raises:
    ValueError: A bad or missing argument, naming it.
  """
  inputs = dict(locals())
  inputs.pop('output_json')
  if mechanism not in MECHANISMS:
    raise ValueError(
      f'mechanism must be one of {", ".join(MECHANISMS)}. Found {mechanism!r}.'
    )
  if not checks.is_number(delta) or not 0 < delta < 1:
    raise ValueError(f'delta must be in (0, 1). Found {delta!r}.')
  if clients_per_round is None:
    clients_per_round = num_clients
  part = planning.participation(total_rounds, clients_per_round, num_clients)
  n, n_source = _num_values(num_values, init_filters)

  solved = None
  if (target_epsilon is None) != (solve_for is None):
    raise ValueError(
      'target_epsilon and solve_for must be given together. Found '
      f'target_epsilon={target_epsilon!r}, solve_for={solve_for!r}.'
    )
  if solve_for is not None:
    solved, values = _solve(
      mechanism,
      solve_for,
      target_epsilon=target_epsilon,
      delta=delta,
      num_rounds=part.worst_case_rounds,
      selection_epsilon=selection_epsilon,
      release_epsilon=release_epsilon,
    )
    selection_epsilon = values.get('selection_epsilon', selection_epsilon)
    release_epsilon = values.get('release_epsilon', release_epsilon)
    noise_multiplier = values.get('noise_multiplier', noise_multiplier)

  svt = None
  if mechanism == accounting.SPARSE_VECTOR:
    _require('selection_epsilon', selection_epsilon, mechanism)
    _require('release_epsilon', release_epsilon, mechanism)
    record = accounting.PrivacyRecord.sparse_vector(
      selection_epsilon, release_epsilon
    )
    if n is not None and clip_bound is not None:
      svt = _svt_dict(
        planning.sparse_vector_parameters(
          shared_fraction=shared_fraction,
          num_values=n,
          clip_bound=clip_bound,
          selection_epsilon=selection_epsilon,
          release_epsilon=release_epsilon,
        )
      )
    elif n is not None:
      svt = {'num_shared': planning.num_shared(shared_fraction, n)}
    round_info = {
      'epsilon': record.epsilon,
      'delta': record.delta,
      'selection_epsilon': float(selection_epsilon),
      'release_epsilon': float(release_epsilon),
    }
  elif mechanism == accounting.GAUSSIAN:
    _require('noise_multiplier', noise_multiplier, mechanism)
    if not checks.is_number(noise_multiplier) or not noise_multiplier > 0:
      raise ValueError(
        f'noise_multiplier must be positive. Found {noise_multiplier!r}.'
      )
    record = accounting.PrivacyRecord.gaussian(noise_multiplier)
    round_info = {
      'noise_multiplier': float(noise_multiplier),
      'epsilon_at_delta': planning.total_epsilon(record, 1, delta=delta),
    }
  else:
    record = accounting.PrivacyRecord.no_guarantee(accounting.SELECTIVE_SHARING)
    if n is not None:
      svt = {'num_shared': planning.num_shared(shared_fraction, n)}
    round_info = {'epsilon': math.inf, 'delta': 0.0}

  views = [('worst_case', part.worst_case_rounds)]
  if part.fraction < 1:
    views.append(('expected', part.expected_rounds_ceil))
  totals = []
  for view, rounds in views:
    total = {'view': view, 'rounds': rounds}
    total['epsilon_summed'] = planning.total_epsilon(
      record, rounds, delta=delta, method='sum'
    )
    if mechanism == accounting.GAUSSIAN:
      total['epsilon_rdp'] = planning.total_epsilon(
        record, rounds, delta=delta, method='rdp'
      )
    total['epsilon_tight'] = planning.total_epsilon(
      record, rounds, delta=delta, method='pld'
    )
    totals.append(total)

  notes = [SAMPLING_NOTE]
  if mechanism == accounting.SPARSE_VECTOR:
    notes.append(accounting.SVT_CAVEAT)
  elif mechanism == accounting.GAUSSIAN:
    notes.append(GAUSSIAN_CAVEAT)
  else:
    notes.append('Selective sharing makes no DP claim: ε = inf.')
  result = {
    'mechanism': mechanism,
    'delta': float(delta),
    'inputs': inputs,
    'num_values': n,
    'num_values_source': n_source,
    'solved': solved,
    'round': round_info,
    'sparse_vector': svt,
    'participation': {
      'total_rounds': part.total_rounds,
      'clients_per_round': part.clients_per_round,
      'num_clients': part.num_clients,
      'fraction': part.fraction,
      'worst_case_rounds': part.worst_case_rounds,
      'expected_rounds': part.expected_rounds,
    },
    'totals': totals,
    'notes': notes,
  }
  if output_json:
    atomic.write_text(output_json, to_json(result))
  return result


def to_json(result: dict[str, Any]) -> str:
  """The result as JSON; ε = ∞ is written as the string 'inf'."""
  return json.dumps(_json_ready(result), indent=2, allow_nan=False) + '\n'


def format_report(result: dict[str, Any]) -> str:
  """The readable report of a `run_compute_privacy` result."""
  mechanism = result['mechanism']
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
  lines += _round_lines(result)
  part = result['participation']
  lines += [
    '',
    f'Participation: {part["total_rounds"]} rounds, '
    f'{part["clients_per_round"]} of {part["num_clients"]} institutions per '
    f'round (p = {part["fraction"]:.4g}).',
    f'Total ε per institution at δ = {delta:g}:',
  ]
  columns = ['ε summed']
  if mechanism == accounting.GAUSSIAN:
    columns.append('ε RDP')
  columns.append('ε tight (PLD)')
  keys = {
    'ε summed': 'epsilon_summed',
    'ε RDP': 'epsilon_rdp',
    'ε tight (PLD)': 'epsilon_tight',
  }
  labels = {
    'worst_case': 'worst case: every round',
    'expected': 'expected: ⌈pR⌉ rounds, not a bound',
  }
  header = ['view', 'rounds', *columns]
  rows = [
    [
      labels[t['view']],
      str(t['rounds']),
      *(accounting.format_epsilon(t[keys[c]]) for c in columns),
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


def _round_lines(result):
  mechanism = result['mechanism']
  inputs = result['inputs']
  r = result['round']
  delta = result['delta']
  if mechanism == accounting.GAUSSIAN:
    lines = [
      'Gaussian mechanism (TFF DP-FedAvg; McMahan et al. 2018),',
      'per participating institution and round:',
      f'  noise multiplier z = {r["noise_multiplier"]:.6g} '
      '(GaussianDpEvent, unsampled)',
      f'  one round: ε = {accounting.format_epsilon(r["epsilon_at_delta"])} '
      f'at δ = {delta:g} (PLD)',
    ]
    if inputs.get('clip_bound') is not None:
      lines.append(f'  L2 clip C = {inputs["clip_bound"]:g} (noise stddev zC)')
    return lines
  if mechanism == accounting.SELECTIVE_SHARING:
    lines = [
      'Selective sharing (Shokri & Shmatikov 2015): no DP guarantee, '
      'ε = inf per round.'
    ]
    svt = result['sparse_vector']
    if svt:
      lines.append(
        f'  releases c = ⌈qN⌉ = {svt["num_shared"]:,} of N = '
        f'{result["num_values"]:,} values (q = {inputs["shared_fraction"]:g})'
      )
    return lines
  lines = [
    'Sparse vector technique (Lyu, Su & Li 2017), per institution and round:',
    f'  (ε = {r["epsilon"]:.6g}, δ = 0)-DP: selection ε = '
    f'{r["selection_epsilon"]:.6g} + release ε3 = {r["release_epsilon"]:.6g}',
  ]
  svt = result['sparse_vector']
  if svt is None:
    lines.append(
      '  (give num_values or init_filters, and clip_bound, for the SVT '
      'internals)'
    )
    return lines
  lines += [
    f'  N = {result["num_values"]:,} values ({result["num_values_source"]})',
    f'  q = {inputs["shared_fraction"]:g}: c = ⌈qN⌉ = {svt["num_shared"]:,} '
    'released',
  ]
  if 'threshold_epsilon' not in svt:
    lines.append('  (give clip_bound for the noise scales)')
  else:
    lines += [
      f'  threshold: ε1 = ε/(1+(2c)^(2/3)) = {svt["threshold_epsilon"]:.6g}, '
      f'Laplace scale γ/ε1 = {svt["threshold_scale"]:.6g}',
      f'  queries:   ε2 = ε − ε1 = {svt["query_epsilon"]:.6g}, '
      f'Laplace scale 2cγ/ε2 = {svt["query_scale"]:.6g}',
      f'  release:   ε3 = {r["release_epsilon"]:.6g}, '
      f'Laplace scale 2cγ/ε3 = {svt["release_scale"]:.6g}',
      f'  (γ = {inputs["clip_bound"]:g})',
    ]
  if inputs.get('threshold') is not None:
    lines.append(f'  threshold τ = {inputs["threshold"]:g} (does not enter ε)')
  lines.append('  N sets c and the noise scales, not ε.')
  return lines


def _solve(
  mechanism,
  solve_for,
  *,
  target_epsilon,
  delta,
  num_rounds,
  selection_epsilon,
  release_epsilon,
):
  if solve_for not in SOLVE_FOR:
    raise ValueError(
      f'solve_for must be one of {", ".join(SOLVE_FOR)}. Found {solve_for!r}.'
    )
  wanted = (
    accounting.GAUSSIAN
    if solve_for == 'noise_multiplier'
    else accounting.SPARSE_VECTOR
  )
  if mechanism != wanted:
    raise ValueError(
      f'solve_for={solve_for!r} needs mechanism={wanted!r}. '
      f'Found {mechanism!r}.'
    )
  if solve_for == 'noise_multiplier':
    method = 'rdp'
    value = planning.solve_noise_multiplier(
      target_epsilon=target_epsilon,
      delta=delta,
      num_rounds=num_rounds,
      method=method,
    )
    record = accounting.PrivacyRecord.gaussian(value)
  else:
    method = 'pld'
    kwargs = dict(
      target_epsilon=target_epsilon,
      delta=delta,
      num_rounds=num_rounds,
      method=method,
    )
    if solve_for == 'release_epsilon':
      _require('selection_epsilon', selection_epsilon, 'solving for ε3')
      value = planning.solve_release_epsilon(
        selection_epsilon=selection_epsilon, **kwargs
      )
      record = accounting.PrivacyRecord.sparse_vector(selection_epsilon, value)
    else:
      _require('release_epsilon', release_epsilon, 'solving for ε')
      value = planning.solve_selection_epsilon(
        release_epsilon=release_epsilon, **kwargs
      )
      record = accounting.PrivacyRecord.sparse_vector(value, release_epsilon)
  achieved = planning.total_epsilon(
    record, num_rounds, delta=delta, method=method
  )
  solved = {
    'parameter': solve_for,
    'value': value,
    'target_epsilon': float(target_epsilon),
    'rounds': num_rounds,
    'method': method,
    'achieved_epsilon': achieved,
  }
  return solved, {solve_for: value}


def _num_values(num_values, init_filters):
  if num_values is not None and init_filters is not None:
    raise ValueError(
      'num_values and init_filters must not both be given. Found '
      f'num_values={num_values!r}, init_filters={init_filters!r}.'
    )
  if num_values is not None:
    checks.check_positive_int('num_values', num_values)
    return int(num_values), 'num_values'
  if init_filters is not None:
    n = count_segresnet_parameters(init_filters)
    return n, f'SegResNet(init_filters={init_filters}) trainable parameters'
  return None, None


def _svt_dict(params):
  return {
    'num_shared': params.num_shared,
    'threshold_epsilon': params.threshold_epsilon,
    'query_epsilon': params.query_epsilon,
    'threshold_scale': params.threshold_scale,
    'query_scale': params.query_scale,
    'release_scale': params.release_scale,
  }


def _require(name, value, what):
  if value is None:
    raise ValueError(f'{name} must be given for {what}. Found None.')


def _json_ready(value):
  if isinstance(value, dict):
    return {k: _json_ready(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_json_ready(v) for v in value]
  if isinstance(value, float) and math.isinf(value):
    return 'inf' if value > 0 else '-inf'
  return value
