"""Tests of the prepare_data binary: `main` in-process, one child run.

`tff_brats.data.prepare` is tested in tests/data/prepare_test.py; these
tests check that the flags reach it and what the binary prints.
"""

import json
import logging
import os

from absl import app
from absl.testing import flagsaver
import pytest

from experiments import prepare_data
from tests.experiments import binaries
from tff_brats.data import synthetic


@pytest.fixture(scope='module')
def synthetic_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('synthetic') / 'brats')
  synthetic.generate_dataset(
    out,
    num_cases=8,
    num_institutions=3,
    shape=(16, 16, 16),
    seed=1,
    progress=False,
  )
  return out


def _main(argv=('prepare_data',), **flag_values):
  with flagsaver.flagsaver(**flag_values):
    prepare_data.main(list(argv))


def _manifest(out):
  with open(os.path.join(out, 'manifest.json')) as f:
    return json.load(f)


@pytest.mark.parametrize(
  'partition, expected_clients',
  [
    ('brats18_institutions', ['2013', 'CBICA', 'TCIA01']),
    ('uniform:2', ['client-00', 'client-01']),
    ('skewed:3:0.5', ['client-00', 'client-01', 'client-02']),
  ],
)
def test_prepares_each_partition(
  synthetic_dir, tmp_path, capsys, partition, expected_clients
):
  out = str(tmp_path / 'prepared')
  _main(
    data_dir=synthetic_dir,
    output_dir=out,
    partition=partition,
    validation_fraction=0.25,
    seed=3,
  )
  captured = capsys.readouterr()
  assert f'Manifest: {out}/manifest.json' in captured.out
  assert 'validation' in captured.out  # the partition table
  assert 'preparing cases' in captured.err  # the progress bar
  manifest = _manifest(out)
  assert list(manifest['clients']) == expected_clients
  assert manifest['request']['partition'] == partition
  assert manifest['request']['seed'] == 3
  assert manifest['request']['validation_fraction'] == 0.25
  n_clients = sum(c['num_cases'] for c in manifest['clients'].values())
  assert n_clients + manifest['validation']['num_cases'] == 8
  for client in manifest['clients'].values():
    for shard in client['shards']:
      assert os.path.getsize(os.path.join(out, 'shards', shard)) > 0


def test_crop_margin_and_layout_reach_the_request(synthetic_dir, tmp_path):
  # Unset, --crop_margin is 0 (the brain box itself) and --layout detects.
  default = str(tmp_path / 'default')
  _main(data_dir=synthetic_dir, output_dir=default, progress=False)
  request = _manifest(default)['request']
  assert request['crop_margin'] == 0
  assert request['layout'] is None
  margin = str(tmp_path / 'margin')
  _main(
    data_dir=synthetic_dir,
    output_dir=margin,
    crop_margin=2,
    layout='brats2018',
    progress=False,
  )
  request = _manifest(margin)['request']
  assert request['crop_margin'] == 2
  assert request['layout'] == 'brats2018'


def test_fets_csv_partition(synthetic_dir, tmp_path):
  with open(os.path.join(synthetic_dir, 'synthetic.json')) as f:
    cases = [c['case_id'] for c in json.load(f)['cases']]
  csv_path = tmp_path / 'partitioning.csv'
  rows = [f'{1 + i % 2},{case_id}' for i, case_id in enumerate(cases)]
  csv_path.write_text('Partition_ID,Subject_ID\n' + '\n'.join(rows) + '\n')
  out = str(tmp_path / 'prepared')
  _main(
    data_dir=synthetic_dir,
    output_dir=out,
    partition=f'fets_csv:{csv_path}',
    progress=False,
  )
  clients = _manifest(out)['clients']
  assert {c: v['num_cases'] for c, v in clients.items()} == {'1': 4, '2': 4}


def test_rerun_is_a_no_op_and_other_flags_are_an_error(
  synthetic_dir, tmp_path, caplog
):
  caplog.set_level(logging.INFO)
  caplog.set_level(logging.INFO, logger='absl')  # prepare logs with absl
  out = str(tmp_path / 'prepared')
  command = dict(data_dir=synthetic_dir, output_dir=out, progress=False)
  _main(**command)
  caplog.clear()
  _main(**command)
  assert 'nothing to do' in caplog.text
  with pytest.raises(SystemExit) as exit_info:
    _main(**command, partition='uniform:2')
  assert str(exit_info.value).startswith('prepare_data: error:')
  assert "partition: prepared with 'brats18_institutions', now 'uniform:2'" in (
    str(exit_info.value)
  )
  assert sorted(os.listdir(tmp_path)) == ['prepared']


def test_bad_data_dir_is_named(tmp_path):
  out = str(tmp_path / 'prepared')
  with pytest.raises(SystemExit) as exit_info:
    _main(data_dir=f'{tmp_path}/nowhere', output_dir=out)
  assert str(exit_info.value).startswith(
    'prepare_data: error: data_dir must be an existing directory. Found '
    f"'{tmp_path}/nowhere'"
  )
  assert not os.path.exists(out)


def test_missing_flags_and_stray_arguments(synthetic_dir, tmp_path):
  out = str(tmp_path / 'prepared')
  with pytest.raises(app.UsageError, match=r'--data_dir, --output_dir$'):
    _main()
  with pytest.raises(
    app.UsageError, match=r"Unexpected arguments: \['extra'\]"
  ):
    _main(['prepare_data', 'extra'], data_dir=synthetic_dir, output_dir=out)
  assert not os.path.exists(out)


def test_smoke_child_process(synthetic_dir, tmp_path):
  out = str(tmp_path / 'prepared')
  result = binaries.run_binary(
    'prepare_data',
    f'--data_dir={synthetic_dir}',
    f'--output_dir={out}',
    '--validation_fraction=0.25',
    '--noprogress',
  )
  assert result.returncode == 0, result.stderr
  assert f'Manifest: {out}/manifest.json' in result.stdout
  assert _manifest(out)['validation']['num_cases'] == 3
