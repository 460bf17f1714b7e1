"""Tests of the prepare_data binary, run in a child process as a user runs it.

(Binaries share absl flag names, so they are never imported into the pytest
process; see make_synthetic_brats_test.py.)
"""

import json
import os
import subprocess
import sys

import pytest

from tff_brats.data import synthetic

# Each test starts Python processes that import TensorFlow (~5 s each).
pytestmark = pytest.mark.slow

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _run(*flags):
  return subprocess.run(
    [sys.executable, '-m', 'experiments.prepare_data', *flags],
    capture_output=True,
    text=True,
    cwd=_REPO,
    check=False,
    timeout=300,
  )


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


@pytest.mark.parametrize(
  'partition, expected_clients',
  [
    ('brats18_institutions', ['2013', 'CBICA', 'TCIA01']),
    ('uniform:2', ['client-00', 'client-01']),
    ('skewed:3:0.5', ['client-00', 'client-01', 'client-02']),
  ],
)
def test_prepares_each_partition(
  synthetic_dir, tmp_path, partition, expected_clients
):
  out = str(tmp_path / 'prepared')
  result = _run(
    f'--data_dir={synthetic_dir}',
    f'--output_dir={out}',
    f'--partition={partition}',
    '--validation_fraction=0.25',
    '--seed=3',
  )
  assert result.returncode == 0, result.stderr
  assert f'Manifest: {out}/manifest.json' in result.stdout
  assert 'validation' in result.stdout  # the partition table
  assert 'preparing cases' in result.stderr  # the progress bar
  with open(os.path.join(out, 'manifest.json')) as f:
    manifest = json.load(f)
  assert list(manifest['clients']) == expected_clients
  assert manifest['request']['partition'] == partition
  assert manifest['request']['seed'] == 3
  assert manifest['request']['validation_fraction'] == 0.25
  n_clients = sum(c['num_cases'] for c in manifest['clients'].values())
  assert n_clients + manifest['validation']['num_cases'] == 8
  for client in manifest['clients'].values():
    for shard in client['shards']:
      assert os.path.getsize(os.path.join(out, 'shards', shard)) > 0


def test_fets_csv_partition(synthetic_dir, tmp_path):
  with open(os.path.join(synthetic_dir, 'synthetic.json')) as f:
    cases = [c['case_id'] for c in json.load(f)['cases']]
  csv_path = tmp_path / 'partitioning.csv'
  rows = [f'{1 + i % 2},{case_id}' for i, case_id in enumerate(cases)]
  csv_path.write_text('Partition_ID,Subject_ID\n' + '\n'.join(rows) + '\n')
  out = str(tmp_path / 'prepared')
  result = _run(
    f'--data_dir={synthetic_dir}',
    f'--output_dir={out}',
    f'--partition=fets_csv:{csv_path}',
    '--noprogress',
  )
  assert result.returncode == 0, result.stderr
  with open(os.path.join(out, 'manifest.json')) as f:
    clients = json.load(f)['clients']
  assert {c: v['num_cases'] for c, v in clients.items()} == {'1': 4, '2': 4}


def test_rerun_is_a_no_op_and_other_flags_are_an_error(synthetic_dir, tmp_path):
  out = str(tmp_path / 'prepared')
  flags = [f'--data_dir={synthetic_dir}', f'--output_dir={out}', '--noprogress']
  assert _run(*flags).returncode == 0
  again = _run(*flags)
  assert again.returncode == 0, again.stderr
  assert 'nothing to do' in again.stderr
  other = _run(*flags, '--partition=uniform:2')
  assert other.returncode != 0
  assert "partition: prepared with 'brats18_institutions', now 'uniform:2'" in (
    other.stderr
  )
  assert sorted(os.listdir(tmp_path)) == ['prepared']


def test_bad_data_dir_is_named(tmp_path):
  out = str(tmp_path / 'prepared')
  result = _run(f'--data_dir={tmp_path}/nowhere', f'--output_dir={out}')
  assert result.returncode != 0
  assert (
    f"prepare_data: error: data_dir must be an existing directory. Found '{tmp_path}/nowhere'"
    in result.stderr
  )
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(out)


def test_stray_arguments_are_rejected(synthetic_dir, tmp_path):
  out = str(tmp_path / 'prepared')
  result = _run(f'--data_dir={synthetic_dir}', f'--output_dir={out}', 'extra')
  assert result.returncode != 0
  assert "Unexpected arguments: ['extra']" in result.stderr
  assert not os.path.exists(out)
