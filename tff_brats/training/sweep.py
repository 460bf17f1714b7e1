"""The privacy-utility study: one grid of federated runs, one table.

`run_sweep(output_dir, grid)` builds the 13-institution synthetic benchmark
(institution sizes proportional to Li et al. 2019's BraTS 2018 split), a
public cohort for pre-training (another seed, hence other scanners), the
pre-trained model, then one federated run per configuration of the grid,
and writes

    benchmark/ public/                 the two synthetic cohorts, prepared
    pretrained/                        the centrally pre-trained run
    runs/<name>/                       one federated run per configuration
    results.csv, results.md            one row per configuration
    dice_vs_epsilon.png                mean Dice against ε (log axis), one
                                       line per mechanism and unit
    dice_vs_shared_fraction.png        selective sharing and SVT
    learning_curves.png                validation Dice against rounds

Every step is skipped when its outputs exist, and an interrupted run is
resumed (`train_federated(..., resume=True)`), so the sweep can be stopped
and started again; the tables are rebuilt from the run folders each time.

A grid is JSON (`DEFAULT_GRID` is the default): `settings` (the data,
model and training shared by every run; `SweepSettings`) and `runs`, each
`{"name", "mechanism": {"name", <parameters>}, "levers": {...},
"solve": {...}}`:

* `levers`: `pretrained` (start from the pre-trained model),
  `trainable_layers` (a list of SegResNet parts), `total_rounds` and
  `client_epochs_per_round` (fewer, longer rounds);
* `solve`: `{"parameter": "noise_multiplier", "target_epsilon": E}` solves
  the mechanism's parameter for ε ≤ E at the settings' δ over the run's
  rounds, as `compute_privacy.py` does.

Reported per run: Dice and HD95 per region of the *last* round's model on
the validation cases (not the best round's, which validation would select
optimistically), ε of the worst-off institution at δ with its unit (tight
and summed), rounds, wall time, and the bytes a client sends per round:
dense (4 bytes per value of the update) and as a sparse index + value
encoding (8 bytes per non-zero value, from the mean released count for the
client-side mechanisms; every value is non-zero for the others).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import copy
import csv
import dataclasses
import io
import json
import math
import os
import time
from typing import Any

from absl import logging

from tff_brats import mechanisms
from tff_brats.data import manifest as manifest_lib
from tff_brats.data import prepare
from tff_brats.data import synthetic
from tff_brats.evaluation import evaluate
from tff_brats.inference import options as options_lib
from tff_brats.inference import predictors
from tff_brats.mechanisms import base as mechanisms_base
from tff_brats.models import model_io
from tff_brats.models import segresnet
from tff_brats.training import centralized
from tff_brats.training import federated
from tff_brats.utils import atomic
from tff_brats.utils import checks

RESULTS_CSV = 'results.csv'
RESULTS_MD = 'results.md'
PRETRAINED_RUN = 'pretrained'
# The row of the pre-trained model alone (no institution's data: ε = 0).
PRETRAINED_ONLY = 'pretrained only (public data)'
REGIONS = ('TC', 'WT', 'ET', 'mean')
COLUMNS = (
  'name',
  'mechanism',
  'unit',
  'parameters',
  'levers',
  'rounds',
  *(f'dice_{r}' for r in REGIONS),
  *(f'hd95_{r}' for r in REGIONS),
  'epsilon_tight',
  'epsilon_summed',
  'delta',
  'values_sent',
  'bytes_dense',
  'bytes_sparse',
  'seconds',
)


@dataclasses.dataclass(frozen=True)
class SweepSettings:
  """The data, model and training every run of a sweep shares.

  Attributes:
    num_cases: Cases of the benchmark (institution sizes proportional to
      the paper's 242 training cases over 13 institutions; each at least 1).
    shape: Synthetic volume shape.
    validation_fraction: Held out of every institution for validation.
    public_cases: Cases of the public cohort (pre-training only).
    public_seed: Its seed (another seed: other scanners and patients).
    pretrain_epochs: Epochs of central pre-training on the public cohort.
    crop_size, init_filters, blocks_down, blocks_up: The model and crops.
    total_rounds, client_epochs_per_round, client_learning_rate,
      rounds_per_eval: The federated runs (levers may change rounds).
    delta: δ of every ε.
    seed: Seed of the benchmark, the partition and every run.
  """

  num_cases: int = 143
  shape: tuple[int, int, int] = (48, 48, 48)
  validation_fraction: float = 0.15
  public_cases: int = 40
  public_seed: int = 1
  pretrain_epochs: int = 30
  crop_size: tuple[int, int, int] = (32, 32, 32)
  init_filters: int = 8
  blocks_down: tuple[int, ...] = (1, 1, 1)
  blocks_up: tuple[int, ...] = (1, 1)
  total_rounds: int = 20
  client_epochs_per_round: int = 1
  client_learning_rate: float = 1e-3
  rounds_per_eval: int = 5
  delta: float = 1e-5
  seed: int = 0

  def __post_init__(self):
    for name in ('shape', 'crop_size', 'blocks_down', 'blocks_up'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    for name in (
      'num_cases',
      'public_cases',
      'pretrain_epochs',
      'init_filters',
      'total_rounds',
      'client_epochs_per_round',
      'rounds_per_eval',
    ):
      checks.check_positive_int(name, getattr(self, name))
    segresnet.check_blocks(self.blocks_down, self.blocks_up)

  @property
  def model_config(self) -> dict[str, Any]:
    return {
      'init_filters': self.init_filters,
      'blocks_down': self.blocks_down,
      'blocks_up': self.blocks_up,
    }


# The default grid, sized for at most 2 hours on 2 CPU cores. On the 2-core
# machine a round of 13 clients and 120 training cases took 8-15 s, 20-24 s
# with DP-SGD, and the 17-run grid of 2026-12-05 took 2 h 6 min; this grid
# leaves out two of its runs that taught nothing the others do not
# (Gaussian z = 0.3, ε 174 per institution; DP-SGD z = 5, ε 2.7 per patient
# and Dice 0.02, the longest run at 15 min). Over 20 rounds at δ = 1e-5: the
# SVT's per-round ε + ε3 of 0.5 sums to 10 per institution; Gaussian z = 3
# and 1 give ε 7.0 and 28 per institution; DP-SGD (q = 1/4, 8 steps) z = 2
# and 0.7 give 8.4 and 47 per patient.
DEFAULT_GRID: dict[str, Any] = {
  'settings': {},
  'runs': [
    {'name': 'none', 'mechanism': {'name': 'none'}},
    *(
      {
        'name': f'selective_sharing_{q:g}',
        'mechanism': {
          'name': 'selective_sharing',
          'shared_fraction': q,
          'clip_bound': 1e-3,
        },
      }
      for q in (0.01, 0.1, 0.4)
    ),
    *(
      {
        'name': f'sparse_vector_{eps:g}',
        'mechanism': {
          'name': 'sparse_vector',
          'shared_fraction': 0.4,
          'clip_bound': 1e-3,
          'selection_epsilon': eps / 2,
          'release_epsilon': eps / 2,
        },
      }
      for eps in (0.5, 1e4, 1e8)
    ),
    *(
      {
        'name': f'gaussian_z{z:g}',
        'mechanism': {
          'name': 'gaussian',
          'noise_multiplier': z,
          'l2_norm_clip': 1.0,
        },
      }
      for z in (1.0, 3.0)
    ),
    *(
      {
        'name': f'dp_sgd_z{z:g}',
        'mechanism': {
          'name': 'dp_sgd',
          'noise_multiplier': z,
          'l2_norm_clip': 0.1,
          'sampling_probability': 0.25,
          'local_steps': 8,
        },
      }
      for z in (0.7, 2.0)
    ),
    {
      'name': 'none_pretrained',
      'mechanism': {'name': 'none'},
      'levers': {'pretrained': True},
    },
    {
      'name': 'gaussian_eps10_pretrained_decoder',
      'mechanism': {'name': 'gaussian', 'l2_norm_clip': 1.0},
      'solve': {'parameter': 'noise_multiplier', 'target_epsilon': 10.0},
      'levers': {
        'pretrained': True,
        'trainable_layers': ['up0', 'up1', 'head'],
        'total_rounds': 6,
        'client_epochs_per_round': 2,
      },
    },
    {
      'name': 'dp_sgd_eps8_pretrained_decoder',
      'mechanism': {
        'name': 'dp_sgd',
        'l2_norm_clip': 0.1,
        'sampling_probability': 0.25,
        'local_steps': 16,
      },
      'solve': {'parameter': 'noise_multiplier', 'target_epsilon': 8.0},
      'levers': {
        'pretrained': True,
        'trainable_layers': ['up0', 'up1', 'head'],
        'total_rounds': 6,
      },
    },
  ],
}


def load_grid(path: str | None) -> dict[str, Any]:
  """`DEFAULT_GRID`, or the grid in the JSON file `path`.

  Raises:
    ValueError: The file is not valid JSON or not a grid (naming the file
      and the field).
  """
  if path is None:
    return copy.deepcopy(DEFAULT_GRID)
  try:
    with open(path) as f:
      grid = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f'grid {path} is not a readable JSON file: {e}') from e
  check_grid(grid, where=path)
  return grid


def check_grid(grid: Any, where: str = 'grid') -> None:
  """Raises ValueError naming the first malformed field of a grid."""
  if not isinstance(grid, dict) or not isinstance(grid.get('runs'), list):
    raise ValueError(f'{where}: field "runs" must be a list. Found {grid!r}.')
  unknown = sorted(set(grid) - {'settings', 'runs'})
  if unknown:
    raise ValueError(f'{where}: unknown field {unknown[0]!r}.')
  try:
    SweepSettings(**grid.get('settings', {}))
  except (TypeError, ValueError) as e:
    raise ValueError(f'{where}: field "settings": {e}') from e
  names = set()
  for index, run in enumerate(grid['runs']):
    field = f'runs[{index}]'
    if not isinstance(run, dict) or not isinstance(run.get('name'), str):
      raise ValueError(f'{where}: field "{field}.name" must be a string.')
    if run['name'] in names or not run['name'] or '/' in run['name']:
      raise ValueError(
        f'{where}: field "{field}.name" must be unique and a folder name. '
        f'Found {run["name"]!r}.'
      )
    names.add(run['name'])
    unknown = sorted(set(run) - {'name', 'mechanism', 'levers', 'solve'})
    if unknown:
      raise ValueError(f'{where}: unknown field "{field}.{unknown[0]}".')
    levers = run.get('levers', {})
    bad = sorted(
      set(levers)
      - {
        'pretrained',
        'trainable_layers',
        'total_rounds',
        'client_epochs_per_round',
      }
    )
    if bad:
      raise ValueError(f'{where}: unknown lever "{field}.levers.{bad[0]}".')
    try:
      _check_mechanism(run)
    except (TypeError, ValueError) as e:
      raise ValueError(f'{where}: field "{field}.mechanism": {e}') from e


def run_sweep(
  output_dir: str,
  grid: Mapping[str, Any] | None = None,
  *,
  only: Sequence[str] | None = None,
  progress: bool = False,
) -> list[dict[str, Any]]:
  """Runs (or resumes) the study and writes its tables and plots.

  Args:
    output_dir: The sweep's folder (see the module docstring).
    grid: The grid (default `DEFAULT_GRID`).
    only: Run only these configurations (the tables hold every finished
      one).
    progress: Progress bars in the runs.

  Returns:
    The result rows (`COLUMNS`), the pre-trained model's first.

  Raises:
    ValueError: A malformed grid or an unknown name in `only`.
  """
  grid = copy.deepcopy(dict(grid or DEFAULT_GRID))
  check_grid(grid)
  settings = SweepSettings(**grid.get('settings', {}))
  runs = grid['runs']
  names = [r['name'] for r in runs]
  for name in only or ():
    if name not in names:
      raise ValueError(
        f'only must name runs of the grid ({", ".join(names)}). Found {name!r}.'
      )
  os.makedirs(output_dir, exist_ok=True)
  atomic.write_text(
    os.path.join(output_dir, 'grid.json'), json.dumps(grid, indent=1) + '\n'
  )
  benchmark = _prepare_benchmark(output_dir, settings)
  pretrained = None
  if any(r.get('levers', {}).get('pretrained') for r in runs):
    pretrained = _pretrain(output_dir, settings)
  for run in runs:
    if only and run['name'] not in only:
      continue
    _run_one(output_dir, run, settings, benchmark, pretrained, progress)
  rows = collect_results(output_dir, grid)
  write_results(output_dir, rows, settings)
  return rows


def collect_results(
  output_dir: str, grid: Mapping[str, Any]
) -> list[dict[str, Any]]:
  """The rows of every finished run (and the pre-trained model)."""
  rows = []
  pretrained_row = os.path.join(output_dir, PRETRAINED_RUN, 'sweep_row.json')
  if os.path.exists(pretrained_row):
    with open(pretrained_row) as f:
      rows.append(json.load(f))
  for run in grid['runs']:
    run_dir = os.path.join(output_dir, 'runs', run['name'])
    summary_path = os.path.join(run_dir, 'summary.json')
    if not os.path.exists(summary_path):
      continue
    rows.append(_result_row(run, run_dir))
  return rows


def write_results(
  output_dir: str, rows: Sequence[Mapping[str, Any]], settings: SweepSettings
) -> None:
  """results.csv, results.md and the three plots (atomically)."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow({k: _csv_value(row.get(k)) for k in COLUMNS})
  atomic.write_text(os.path.join(output_dir, RESULTS_CSV), buffer.getvalue())
  atomic.write_text(
    os.path.join(output_dir, RESULTS_MD), markdown_table(rows, settings)
  )
  _plots(output_dir, rows)


def markdown_table(
  rows: Sequence[Mapping[str, Any]], settings: SweepSettings
) -> str:
  """The results as a Markdown table, with the settings it holds for."""
  lines = [
    '| run | mechanism | ε (tight / summed) | rounds | Dice TC / WT / ET '
    '(mean) | HD95 TC / WT / ET | sent per client and round (dense / '
    'sparse) | time |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    epsilon = (
      f'{_eps(row["epsilon_tight"])} / {_eps(row["epsilon_summed"])} '
      f'per {row["unit"]}'
    )
    dice = ' / '.join(f'{row[f"dice_{r}"]:.3f}' for r in REGIONS[:3])
    hd95 = ' / '.join(f'{row[f"hd95_{r}"]:.1f}' for r in REGIONS[:3])
    sent = (
      '–'
      if not row['bytes_dense']
      else f'{_size(row["bytes_dense"])} / {_size(row["bytes_sparse"])}'
    )
    lines.append(
      f'| {row["name"]} | {row["mechanism"]} | {epsilon} | {row["rounds"]} '
      f'| {dice} ({row["dice_mean"]:.3f}) | {hd95} | {sent} '
      f'| {row["seconds"] / 60:.1f} min |'
    )
  lines += [
    '',
    f'δ = {settings.delta:g}. ε is the worst-off institution\'s, "per '
    'institution" (adding or removing its whole contribution) or "per '
    'patient" (one case of it); inf: no DP guarantee. Dice and HD95 (voxels) '
    "of the last round's model on the validation cases. Benchmark: "
    f'{settings.num_cases} synthetic cases of '
    f'{"x".join(map(str, settings.shape))} voxels over 13 institutions '
    "sized like Li et al. 2019's BraTS 2018 split, "
    f'{settings.validation_fraction:g} of each held out; SegResNet-'
    f'{settings.init_filters} with {len(settings.blocks_down)} levels '
    f'on {"x".join(map(str, settings.crop_size))} crops; '
    f'{settings.total_rounds} rounds unless the run says otherwise. '
    '"pretrained": started from a model trained centrally on '
    f'{settings.public_cases} public synthetic cases of another seed (other '
    'scanners).',
  ]
  return '\n'.join(lines) + '\n'


# ------------------------------------------------------------- helpers ----


def _prepare_benchmark(output_dir, settings):
  """The benchmark's prepared folder: 13 institutions, the paper's sizes."""
  return _cohort(
    os.path.join(output_dir, 'benchmark'),
    settings.shape,
    num_cases=settings.num_cases,
    num_institutions=13,
    institution_sizes='paper',
    validation_fraction=settings.validation_fraction,
    seed=settings.seed,
  )


def _cohort(folder, shape, *, validation_fraction, seed, **generate):
  """Writes `folder/raw` (synthetic) and `folder/prepared` unless done."""
  raw = os.path.join(folder, 'raw')
  prepared = os.path.join(folder, 'prepared')
  if not os.path.exists(os.path.join(prepared, manifest_lib.MANIFEST_NAME)):
    logging.info('Writing the synthetic cohort in %s.', folder)
    if not os.path.exists(os.path.join(raw, synthetic.MANIFEST_NAME)):
      synthetic.generate_dataset(
        output_dir=raw,
        shape=shape,
        seed=seed,
        overwrite=True,
        progress=False,
        **generate,
      )
    prepare.prepare_dataset(
      raw,
      prepared,
      partition='brats18_institutions',
      validation_fraction=validation_fraction,
      seed=seed,
      overwrite=True,
      progress=False,
    )
  return prepared


def _pretrain(output_dir, settings):
  """The centrally pre-trained model folder (public cohort)."""
  prepared = _cohort(
    os.path.join(output_dir, 'public'),
    settings.shape,
    num_cases=settings.public_cases,
    # Several scanners, each with enough cases to hold one out.
    num_institutions=max(1, min(4, settings.public_cases // 10)),
    validation_fraction=0.2,
    seed=settings.public_seed,
  )
  run_dir = os.path.join(output_dir, PRETRAINED_RUN)
  final = os.path.join(run_dir, 'final_model')
  if not os.path.exists(os.path.join(run_dir, 'summary.json')):
    logging.info('Pre-training on the public cohort.')
    started = time.monotonic()
    config = centralized.CentralizedConfig(
      data_dir=prepared,
      epochs=settings.pretrain_epochs,
      learning_rate=1e-3,
      crop_size=settings.crop_size,
      init_filters=settings.init_filters,
      blocks_down=settings.blocks_down,
      blocks_up=settings.blocks_up,
      num_overlay_cases=0,
      seed=settings.public_seed,
    )
    centralized.train_centralized(
      config,
      run_dir,
      resume=os.path.exists(os.path.join(run_dir, 'hparams.json')),
      progress=False,
    )
    _add_seconds(run_dir, time.monotonic() - started)
  if not os.path.exists(os.path.join(run_dir, 'sweep_row.json')):
    _write_pretrained_row(output_dir, final, settings)
  return final


def _add_seconds(run_dir, seconds):
  """Adds to the wall time of a run kept in `sweep_seconds.json`."""
  path = os.path.join(run_dir, 'sweep_seconds.json')
  atomic.write_text(
    path, json.dumps({'seconds': _seconds(run_dir) + seconds}) + '\n'
  )


def _seconds(run_dir):
  path = os.path.join(run_dir, 'sweep_seconds.json')
  if not os.path.exists(path):
    return 0.0
  with open(path) as f:
    return float(json.load(f)['seconds'])


def _write_pretrained_row(output_dir, model_dir, settings):
  """Scores the pre-trained model alone on the benchmark's validation."""
  prepared = manifest_lib.load(
    os.path.join(output_dir, 'benchmark', 'prepared')
  )
  model = model_io.load_model(model_dir)
  evaluation = evaluate.evaluate_prepared(
    predictors.from_keras_model(model),
    prepared,
    options=options_lib.InferenceOptions(window=settings.crop_size),
  )
  row = {
    'name': PRETRAINED_ONLY,
    'mechanism': '–',
    'unit': 'institution',
    'parameters': '',
    'levers': '',
    'rounds': 0,
    **_scores(evaluation.summary),
    'epsilon_tight': 0.0,
    'epsilon_summed': 0.0,
    'delta': settings.delta,
    'values_sent': 0,
    'bytes_dense': 0,
    'bytes_sparse': 0,
    'seconds': _seconds(os.path.join(output_dir, PRETRAINED_RUN)),
  }
  atomic.write_text(
    os.path.join(output_dir, PRETRAINED_RUN, 'sweep_row.json'),
    json.dumps(row) + '\n',
  )


def _mechanism_spec(run):
  """(the mechanism class of `run`, its parameters as given)."""
  spec = dict(run.get('mechanism') or {})
  if 'name' not in spec:
    raise ValueError(f'a mechanism needs a name. Found {spec!r}.')
  return mechanisms.get(spec.pop('name')), spec


def _check_mechanism(run):
  """Builds the run's mechanism without solving (solving takes seconds)."""
  cls, spec = _mechanism_spec(run)
  solve = run.get('solve')
  if solve is not None:
    if not isinstance(solve, dict) or set(solve) != {
      'parameter',
      'target_epsilon',
    }:
      raise ValueError(
        'solve must be {"parameter": ..., "target_epsilon": ...}. '
        f'Found {solve!r}.'
      )
    mechanisms_base.check_solvable(cls, solve['parameter'])
    checks.check_positive_number('target_epsilon', solve['target_epsilon'])
    spec[solve['parameter']] = 1.0  # a placeholder, to check the others
  cls.from_parameters(spec)


def _mechanism(run, settings, total_rounds):
  """The run's mechanism, with its `solve` applied over `total_rounds`."""
  cls, spec = _mechanism_spec(run)
  solve = run.get('solve')
  if solve is None:
    return cls.from_parameters(spec)
  return cls.solve(
    solve['parameter'],
    target_epsilon=float(solve['target_epsilon']),
    delta=settings.delta,
    num_rounds=int(total_rounds),
    **spec,
  ).mechanism


def _config(run, settings, benchmark, pretrained):
  levers = run.get('levers', {})
  rounds = levers.get('total_rounds', settings.total_rounds)
  layers = levers.get('trainable_layers')
  return federated.FederatedConfig(
    data_dir=benchmark,
    mechanism=_mechanism(run, settings, rounds),
    total_rounds=rounds,
    client_epochs_per_round=levers.get(
      'client_epochs_per_round', settings.client_epochs_per_round
    ),
    client_learning_rate=settings.client_learning_rate,
    crop_size=settings.crop_size,
    init_filters=settings.init_filters,
    blocks_down=settings.blocks_down,
    blocks_up=settings.blocks_up,
    trainable_layers=None if layers is None else tuple(layers),
    initial_model=pretrained if levers.get('pretrained') else None,
    delta=settings.delta,
    rounds_per_eval=settings.rounds_per_eval,
    num_overlay_cases=0,
    seed=settings.seed,
  )


def _run_one(output_dir, run, settings, benchmark, pretrained, progress):
  run_dir = os.path.join(output_dir, 'runs', run['name'])
  if os.path.exists(os.path.join(run_dir, 'summary.json')):
    logging.info('%s: done before.', run['name'])
    return
  resume = os.path.exists(os.path.join(run_dir, 'hparams.json'))
  logging.info('%s: %s.', run['name'], 'resuming' if resume else 'starting')
  config = _config(run, settings, benchmark, pretrained)
  started = time.monotonic()
  try:
    federated.train_federated(
      config, run_dir, resume=resume, progress=progress, runtime='worker'
    )
  finally:
    if os.path.exists(os.path.join(run_dir, 'hparams.json')):
      _add_seconds(run_dir, time.monotonic() - started)


def _result_row(run, run_dir):
  with open(os.path.join(run_dir, 'summary.json')) as f:
    summary = json.load(f)
  with open(os.path.join(run_dir, 'hparams.json')) as f:
    hparams = json.load(f)
  seconds = _seconds(run_dir)
  mechanism = mechanisms.from_dict(hparams['privacy_mechanism'])
  privacy = summary['privacy']
  values = _values_sent(hparams)
  released = _mean_released(run_dir)
  nonzero = values if released is None else released
  return {
    'name': run['name'],
    'mechanism': mechanism.name,
    'unit': privacy.get('unit', mechanism.unit),
    'parameters': json.dumps(
      {k: v for k, v in mechanism.to_dict().items() if k != 'name'}
    ),
    'levers': json.dumps(run.get('levers', {})),
    'rounds': summary['rounds_completed'],
    **_scores(summary['final_validation']),
    'epsilon_tight': _worst(privacy['epsilon_tight']),
    'epsilon_summed': _worst(privacy['epsilon_summed']),
    'delta': privacy['delta'],
    'values_sent': values,
    'bytes_dense': 4 * values,
    'bytes_sparse': round(8 * nonzero),
    'seconds': seconds,
  }


def _scores(summary):
  scores = {}
  for region in REGIONS:
    for metric in ('dice', 'hd95'):
      value = (summary or {}).get(f'{metric}_{region}', {}).get('mean')
      scores[f'{metric}_{region}'] = math.nan if value is None else value
  return scores


def _worst(epsilons):
  """The largest ε over the institutions (None in JSON means ∞)."""
  values = [math.inf if e is None else e for e in epsilons.values()]
  return max(values, default=0.0)


def _values_sent(hparams):
  """Values in one client's update: the run's trainable parameters."""
  model = segresnet.SegResNet(
    **{k: hparams[k] for k in ('init_filters', 'blocks_down', 'blocks_up')}
  )
  size = model.size_multiple
  model.build((None, size, size, size, 4))
  if hparams.get('trainable_layers'):
    segresnet.freeze_all_but(model, hparams['trainable_layers'])
  return model.num_parameters


def _mean_released(run_dir):
  """Mean released values per client over the rounds (None: all)."""
  with open(os.path.join(run_dir, 'metrics.csv')) as f:
    rows = list(csv.DictReader(f))
  values = [
    float(r['released_mean'])
    for r in rows
    if r.get('released_mean') not in (None, '', 'nan')
  ]
  return sum(values) / len(values) if values else None


def _plots(output_dir, rows):
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  families = {}
  for row in rows:
    if row['mechanism'] == '–':
      continue
    label = f'{row["mechanism"]} (ε per {row["unit"]})'
    if json.loads(row['levers'] or '{}'):
      label += ', with levers'
    families.setdefault(label, []).append(row)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  try:
    finite = [
      r['epsilon_tight'] for r in rows if 0 < r['epsilon_tight'] < math.inf
    ]
    right = max(finite, default=10.0) * 10
    for label, members in sorted(families.items()):
      points = sorted(
        (
          min(r['epsilon_tight'], right) if r['epsilon_tight'] > 0 else 1e-3,
          r['dice_mean'],
        )
        for r in members
      )
      ax.plot(*zip(*points, strict=True), marker='o', label=label)
    for row in rows:
      if row['mechanism'] == '–':
        ax.axhline(
          row['dice_mean'],
          color='grey',
          linestyle=':',
          label='pre-trained only (public data, ε = 0)',
        )
    ax.axvline(10, color='tab:red', linestyle='--', linewidth=1, label='ε = 10')
    ax.set_xscale('log')
    ax.set_xlabel(f'ε at δ (log; ∞ drawn at {right:.0e})')
    ax.set_ylabel('validation Dice (mean of TC, WT, ET)')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=7, loc='lower right')
    fig.tight_layout()
    _save(fig, os.path.join(output_dir, 'dice_vs_epsilon.png'))
  finally:
    plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  try:
    for mechanism in ('selective_sharing', 'sparse_vector'):
      points = sorted(
        (json.loads(r['parameters'])['shared_fraction'], r['dice_mean'])
        for r in rows
        if r['mechanism'] == mechanism and not json.loads(r['levers'] or '{}')
      )
      if points:
        ax.plot(*zip(*points, strict=True), marker='o', label=mechanism)
    for row in rows:
      if row['name'] == 'none':
        ax.axhline(
          row['dice_mean'], color='grey', linestyle=':', label='no privacy'
        )
    ax.set_xscale('log')
    ax.set_xlabel('shared fraction q (log)')
    ax.set_ylabel('validation Dice (mean)')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=8)
    fig.tight_layout()
    _save(fig, os.path.join(output_dir, 'dice_vs_shared_fraction.png'))
  finally:
    plt.close(fig)

  fig, ax = plt.subplots(figsize=(8, 5))
  try:
    for row in rows:
      metrics_path = os.path.join(
        output_dir, 'runs', row['name'], 'metrics.csv'
      )
      if not os.path.exists(metrics_path):
        continue
      with open(metrics_path) as f:
        points = [
          (int(r['round']), float(r['val_dice_mean']))
          for r in csv.DictReader(f)
          if r.get('val_dice_mean') not in (None, '', 'nan')
        ]
      if points:
        ax.plot(*zip(*points, strict=True), marker='.', label=row['name'])
    ax.set_xlabel('round')
    ax.set_ylabel('validation Dice (mean)')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=6, ncol=2)
    fig.tight_layout()
    _save(fig, os.path.join(output_dir, 'learning_curves.png'))
  finally:
    plt.close(fig)


def _legend(ax, **kwargs):
  if ax.get_legend_handles_labels()[0]:
    ax.legend(**kwargs)
  else:
    ax.text(
      0.5, 0.5, 'no runs of this kind yet', ha='center', transform=ax.transAxes
    )


def _save(fig, path):
  with atomic.staged_file(path) as tmp:
    fig.savefig(tmp, format='png', dpi=110)


def _eps(value):
  if value is None or math.isinf(value):
    return '∞'
  if value == 0:
    return '0'
  return f'{value:.3g}'


def _size(num_bytes):
  for unit in ('B', 'kB', 'MB', 'GB'):
    if num_bytes < 1000 or unit == 'GB':
      return f'{num_bytes:.3g} {unit}'
    num_bytes /= 1000
  return f'{num_bytes:.3g} GB'


def _csv_value(value):
  if isinstance(value, float) and math.isinf(value):
    return 'inf'
  return value
