"""Tests of tff_brats.training.sweep and its binary.

One tiny sweep end to end (13 institutions of 16³ cases, one round, a
two-level SegResNet-8): the data, the pre-training, one DP-SGD run with
every lever (solved for ε = 1 per patient), the tables and plots; then the
same sweep again, which must skip what is done. The table's other rows
(no guarantee, per institution) are checked on made-up rows.
"""

import csv
import json
import math
import os

from absl.testing import flagsaver
import pytest

from experiments import privacy_utility_sweep
from tests import figure_checks
from tests.experiments import binaries
from tff_brats.models import segresnet
from tff_brats.training import sweep

TINY_MODEL = dict(init_filters=8, blocks_down=(1, 1), blocks_up=(1,))
TINY_SETTINGS = dict(
  num_cases=20,
  shape=(16, 16, 16),
  validation_fraction=0.15,
  public_cases=6,
  pretrain_epochs=1,
  crop_size=(16, 16, 16),
  init_filters=8,
  blocks_down=(1, 1),
  blocks_up=(1,),
  total_rounds=1,
  rounds_per_eval=1,
)
TINY_GRID = {
  'settings': TINY_SETTINGS,
  'runs': [
    {
      'name': 'dp_sgd_levers',
      'mechanism': {
        'name': 'dp_sgd',
        'sampling_probability': 0.5,
        'local_steps': 2,
      },
      # ε = 1: a large z, whose PLD is quick to build (ε = 8 took 15 s).
      'solve': {'parameter': 'noise_multiplier', 'target_epsilon': 1.0},
      'levers': {'pretrained': True, 'trainable_layers': ['up0', 'head']},
    },
  ],
}


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp('sweep'))
  # Every figure the sweep and its runs save: each legend entry has data.
  with figure_checks.checking_figures():
    rows = sweep.run_sweep(output_dir, TINY_GRID)
  return output_dir, rows


@pytest.mark.slow
def test_tiny_sweep_writes_every_output(tiny_sweep):
  output_dir, rows = tiny_sweep
  assert [r['name'] for r in rows] == [sweep.PRETRAINED_ONLY, 'dp_sgd_levers']
  pretrained, private = rows
  assert pretrained['epsilon_tight'] == 0.0 and pretrained['rounds'] == 0
  # The solved DP-SGD run meets its target per patient.
  assert private['unit'] == 'patient' and private['rounds'] == 1
  assert 0 < private['epsilon_tight'] <= 1.0 * (1 + 1e-6)
  assert private['epsilon_summed'] >= private['epsilon_tight']
  assert json.loads(private['levers'])['pretrained'] is True
  # Only the decoder's stage and the head are sent, 4 bytes a value (all
  # of them non-zero: 8 bytes each as index + value).
  parts = segresnet.SegResNet(**TINY_MODEL)
  parts.build((None, 16, 16, 16, 4))
  segresnet.freeze_all_but(parts, ['up0', 'head'])
  assert private['values_sent'] == parts.num_parameters
  assert private['bytes_dense'] == 4 * private['values_sent']
  assert private['bytes_sparse'] == 8 * private['values_sent']
  assert private['seconds'] > 0
  for row in rows:
    for region in sweep.REGIONS:
      assert 0.0 <= row[f'dice_{region}'] <= 1.0
  with open(os.path.join(output_dir, sweep.RESULTS_CSV)) as f:
    table = list(csv.DictReader(f))
  assert [r['name'] for r in table] == [r['name'] for r in rows]
  with open(os.path.join(output_dir, sweep.RESULTS_MD)) as f:
    markdown = f.read()
  assert '| dp_sgd_levers | dp_sgd |' in markdown
  assert 'per patient' in markdown
  for name in (
    'dice_vs_epsilon.png',
    'dice_vs_shared_fraction.png',
    'learning_curves.png',
  ):
    with open(os.path.join(output_dir, name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
def test_a_second_run_skips_what_is_done(tiny_sweep, caplog):
  output_dir, rows = tiny_sweep
  summary = os.path.join(output_dir, 'runs', 'dp_sgd_levers', 'summary.json')
  before = os.stat(summary).st_mtime_ns
  with caplog.at_level('INFO', logger='absl'):
    again = sweep.run_sweep(output_dir, TINY_GRID, only=['dp_sgd_levers'])
  assert os.stat(summary).st_mtime_ns == before
  assert any(
    'dp_sgd_levers: done before' in r.getMessage() for r in caplog.records
  )
  assert again == rows


def test_markdown_table_of_made_up_rows():
  row = dict(
    name='none',
    mechanism='none',
    unit='institution',
    rounds=12,
    epsilon_tight=math.inf,
    epsilon_summed=math.inf,
    bytes_dense=1_234_000,
    bytes_sparse=2_468_000,
    seconds=90.0,
    **{f'dice_{r}': 0.5 for r in sweep.REGIONS},
    **{f'hd95_{r}': 7.25 for r in sweep.REGIONS},
  )
  settings = sweep.SweepSettings()
  table = sweep.markdown_table([row], settings)
  assert (
    '| none | none | ∞ / ∞ per institution | 12 | 0.500 / 0.500 / 0.500 '
    '(0.500) | 7.2 / 7.2 / 7.2 | 1.23 MB / 2.47 MB | 1.5 min |'
  ) in table
  assert 'δ = 1e-05' in table


@pytest.mark.parametrize(
  'grid, message',
  [
    ({'runs': 3}, 'field "runs" must be a list'),
    ({'runs': [], 'extra': 1}, "unknown field 'extra'"),
    ({'runs': [], 'settings': {'total_rounds': 0}}, 'total_rounds must be'),
    ({'runs': [{'name': 'a/b', 'mechanism': {'name': 'none'}}]}, 'folder name'),
    (
      {
        'runs': [
          {'name': 'a', 'mechanism': {'name': 'none'}},
          {'name': 'a', 'mechanism': {'name': 'none'}},
        ]
      },
      'must be unique',
    ),
    (
      {'runs': [{'name': 'a', 'mechanism': {'name': 'laplace'}}]},
      r'runs\[0\].mechanism": privacy_mechanism must be one of',
    ),
    (
      {
        'runs': [
          {'name': 'a', 'mechanism': {'name': 'none'}, 'levers': {'x': 1}}
        ]
      },
      r'unknown lever "runs\[0\].levers.x"',
    ),
  ],
)
def test_bad_grids_name_the_field(grid, message):
  with pytest.raises(ValueError, match=message):
    sweep.check_grid(grid)


def test_default_grid_is_valid_and_covers_every_family():
  sweep.check_grid(sweep.DEFAULT_GRID)
  mechanisms = {r['mechanism']['name'] for r in sweep.DEFAULT_GRID['runs']}
  assert mechanisms == {
    'none',
    'selective_sharing',
    'sparse_vector',
    'gaussian',
    'dp_sgd',
  }
  with_levers = [r for r in sweep.DEFAULT_GRID['runs'] if r.get('levers')]
  assert {r['mechanism']['name'] for r in with_levers} >= {'gaussian', 'dp_sgd'}


def test_grid_file_errors_name_the_file(tmp_path):
  path = tmp_path / 'grid.json'
  path.write_text('{not json')
  with pytest.raises(ValueError, match=f'grid {path} is not a readable JSON'):
    sweep.load_grid(str(path))
  path.write_text(json.dumps({'runs': 'x'}))
  with pytest.raises(ValueError, match=f'{path}: field "runs" must be a list'):
    sweep.load_grid(str(path))


def test_readme_block_is_replaced_between_the_markers(tmp_path):
  readme = tmp_path / 'README.md'
  begin, end = (
    privacy_utility_sweep.BEGIN_MARKER,
    privacy_utility_sweep.END_MARKER,
  )
  readme.write_text(f'intro\n{begin}\nold table\n{end}\noutro\n')
  privacy_utility_sweep.update_readme(str(readme), '| new |\n')
  assert readme.read_text() == f'intro\n{begin}\n| new |\n{end}\noutro\n'
  readme.write_text('no markers\n')
  with pytest.raises(ValueError, match='must hold'):
    privacy_utility_sweep.update_readme(str(readme), '| new |\n')


def test_print_default_grid(capsys):
  with flagsaver.flagsaver(print_default_grid=True):
    privacy_utility_sweep.main(['privacy_utility_sweep'])
  shown = capsys.readouterr().out
  assert json.loads(shown) == json.loads(json.dumps(sweep.DEFAULT_GRID))


def test_smoke_child_process(tmp_path):
  grid = tmp_path / 'grid.json'
  grid.write_text(json.dumps({'runs': [{'name': 'x', 'mechanism': {}}]}))
  bad = binaries.run_binary(
    'privacy_utility_sweep',
    f'--output_dir={tmp_path / "out"}',
    f'--grid={grid}',
  )
  assert bad.returncode != 0
  assert (
    f'privacy_utility_sweep: error: {grid}: field "runs[0].mechanism": a '
    'mechanism needs a name.'
  ) in bad.stderr
  assert not (tmp_path / 'out').exists()
