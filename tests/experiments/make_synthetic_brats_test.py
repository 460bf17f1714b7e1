"""Tests of the make_synthetic_brats binary: `main` in-process, one child run.

`tff_brats.data.synthetic` is tested in tests/data/synthetic_test.py; these
tests check that the flags reach it and what the binary prints.
"""

import json
import logging
import os

from absl import app
from absl.testing import flagsaver
import pytest

from experiments import make_synthetic_brats
from tests.experiments import binaries


def _main(argv=('make_synthetic_brats',), **flag_values):
  with flagsaver.flagsaver(**flag_values):
    make_synthetic_brats.main(list(argv))


def test_writes_the_data_and_reports_it(tmp_path, capsys):
  out = str(tmp_path / 'out')
  _main(
    output_dir=out,
    num_cases=3,
    num_institutions=2,
    shape=['24', '24', '24'],
    lgg_fraction=0.0,
  )
  stdout = capsys.readouterr().out
  assert f'Synthetic BraTS data in {out}' in stdout
  assert '2013' in stdout and '2 cases (2 HGG, 0 LGG)' in stdout
  assert 'CBICA' in stdout and '1 case (1 HGG, 0 LGG)' in stdout
  assert os.path.exists(
    os.path.join(out, 'HGG/Brats18_CBICA_001_1/Brats18_CBICA_001_1_t1ce.nii.gz')
  )
  with open(os.path.join(out, 'synthetic.json')) as f:
    parameters = json.load(f)['parameters']
  assert parameters['layout'] == 'brats2018'  # without --layout
  assert parameters['grade_folders'] is True
  assert parameters['seed'] == 0


def test_flags_become_the_recorded_parameters(tmp_path, capsys):
  out = str(tmp_path / 'out')
  _main(
    output_dir=out,
    num_cases=5,
    num_institutions=3,
    shape=['16', '20', '24'],
    spacing=['1', '1.5', '2'],
    layout='brats2023',
    institution_sizes='paper',
    lgg_fraction=0.25,
    seed=7,
    progress=False,
  )
  assert 'synthetic cases:' not in capsys.readouterr().err  # --noprogress
  with open(os.path.join(out, 'synthetic.json')) as f:
    parameters = json.load(f)['parameters']
  assert parameters == {
    'num_cases': 5,
    'num_institutions': 3,
    'shape': [16, 20, 24],
    'spacing': [1.0, 1.5, 2.0],
    'layout': 'brats2023',
    'grade_folders': False,
    'institution_sizes': 'paper',
    'lgg_fraction': 0.25,
    'seed': 7,
  }


def test_rerun_is_a_no_op_and_other_flags_need_overwrite(
  tmp_path, capsys, caplog
):
  caplog.set_level(logging.INFO)
  out = str(tmp_path / 'out')
  command = dict(
    output_dir=out,
    num_cases=2,
    num_institutions=2,
    shape=['16', '16', '16'],
    layout='brats2023',
  )
  _main(**command)
  assert 'synthetic cases:' in capsys.readouterr().err  # the progress bar
  assert sorted(os.listdir(out)) == [
    'BraTS-2013-00000-000',
    'BraTS-CBICA-00001-000',
    'synthetic.json',
  ]
  _main(**command)
  assert 'nothing to do' in caplog.text
  with pytest.raises(SystemExit) as exit_info:
    _main(**command, seed=3)
  message = str(exit_info.value)
  assert message.startswith('make_synthetic_brats: error:')
  assert 'seed=3 (on disk: 0)' in message
  _main(**command, seed=3, overwrite=True)
  with open(os.path.join(out, 'synthetic.json')) as f:
    assert json.load(f)['parameters']['seed'] == 3


def test_stray_arguments_are_rejected(tmp_path):
  out = str(tmp_path / 'out')
  with pytest.raises(
    app.UsageError, match=r"Unexpected arguments: \['extra'\]"
  ):
    _main(['make_synthetic_brats', 'extra'], output_dir=out, shape=['16'] * 3)
  assert not os.path.exists(out)


def test_bad_shape_is_a_usage_error(tmp_path):
  out = str(tmp_path / 'out')
  with pytest.raises(
    app.UsageError,
    match=r"--shape must be 3 comma-separated numbers. Found '24,x,24'",
  ):
    _main(output_dir=out, shape=['24', 'x', '24'])
  assert not os.path.exists(out)


def test_missing_output_dir_is_a_usage_error():
  with pytest.raises(app.UsageError, match='--output_dir'):
    _main(num_cases=2)


def test_smoke_child_process(tmp_path):
  out = str(tmp_path / 'out')
  result = binaries.run_binary(
    'make_synthetic_brats',
    f'--output_dir={out}',
    '--num_cases=1',
    '--num_institutions=1',
    '--shape=16,16,16',
    '--lgg_fraction=0',
    '--noprogress',
  )
  assert result.returncode == 0, result.stderr
  assert '1 case (1 HGG, 0 LGG)' in result.stdout
  assert os.path.exists(os.path.join(out, 'synthetic.json'))
