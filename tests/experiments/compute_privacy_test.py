"""Tests of the compute_privacy binary, run in a child process as a user runs it.

(Binaries share absl flag names, so they are never imported into the pytest
process; `tff_brats.privacy.privacy_report` is tested directly in
tests/privacy/privacy_report_test.py.)

Expected numbers (see privacy_report_test.py for their provenance): SVT with
ε = ε3 = 0.1 over 100 rounds at δ = 1e-5 spends 20 summed and 9.7483 tight
(Kairouz, Oh & Viswanath 2015, Thm. 3.3), 24 expected rounds 3.9477; c =
⌈0.1 · 4,702,227⌉ = 470,223.
"""

import json
import os
import subprocess
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _run(*flags):
  return subprocess.run(
    [sys.executable, '-m', 'experiments.compute_privacy', *flags],
    capture_output=True,
    text=True,
    cwd=_REPO,
    check=False,
    timeout=300,
  )


def test_known_configuration(tmp_path):
  out = tmp_path / 'privacy.json'
  result = _run(
    '--mechanism=sparse_vector',
    '--num_values=4702227',
    '--shared_fraction=0.1',
    '--clip_bound=1e-4',
    '--selection_epsilon=0.1',
    '--release_epsilon=0.1',
    '--threshold=1e-4',
    '--total_rounds=100',
    '--clients_per_round=3',
    '--num_clients=13',
    '--delta=1e-5',
    f'--output_json={out}',
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert '  (ε = 0.2, δ = 0)-DP: selection ε = 0.1 + release ε3 = 0.1' in lines
  assert 'c = ⌈qN⌉ = 470,223 released' in result.stdout
  assert 'Laplace scale 2cγ/ε3 = 940.446' in result.stdout
  worst = next(line for line in lines if 'worst case' in line)
  assert worst.split()[-3:] == ['100', '20.0000', '9.7483']
  expected = next(line for line in lines if 'not a bound' in line)
  assert expected.split()[-3:] == ['24', '4.8000', '3.9477']
  assert 'step count n' in result.stdout
  assert f'JSON: {out}' in lines
  data = json.loads(out.read_text())
  assert data['totals'][0]['epsilon_tight'] == pytest.approx(
    9.748253704013988, rel=1e-9
  )
  assert data['sparse_vector']['num_shared'] == 470_223
  assert os.listdir(tmp_path) == ['privacy.json']  # written atomically


def test_inverse_mode_meets_the_target():
  result = _run(
    '--selection_epsilon=0.05',
    '--target_epsilon=10',
    '--solve_for=release_epsilon',
    '--total_rounds=100',
  )
  assert result.returncode == 0, result.stderr
  first = result.stdout.splitlines()[0]
  assert first.startswith('Solved release_epsilon = 0.154')
  assert 'achieved ε = 10)' in first
  worst = next(line for line in result.stdout.splitlines() if 'worst' in line)
  assert worst.split()[-1] == '10.0000'


def test_gaussian_inverse_mode():
  result = _run(
    '--mechanism=gaussian',
    '--target_epsilon=10.8602036',
    '--solve_for=noise_multiplier',
    '--total_rounds=2',
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('Solved noise_multiplier = 0.7 ')
  worst = next(line for line in result.stdout.splitlines() if 'worst' in line)
  assert worst.split()[-2] == '10.8602'  # the RDP column


@pytest.mark.parametrize(
  'flags, message',
  [
    (
      ['--selection_epsilon=-1', '--release_epsilon=0.1'],
      'compute_privacy: error: selection_epsilon must be a positive number. '
      'Found -1.0.',
    ),
    (
      ['--selection_epsilon=0.1', '--target_epsilon=1'],
      'compute_privacy: error: target_epsilon and solve_for must be given '
      'together. Found target_epsilon=1.0, solve_for=None.',
    ),
    (
      [
        '--mechanism=gaussian',
        '--solve_for=release_epsilon',
        '--target_epsilon=1',
      ],
      "compute_privacy: error: solve_for='release_epsilon' needs "
      "mechanism='sparse_vector'. Found 'gaussian'.",
    ),
    (
      ['--num_values=10', '--init_filters=16', '--selection_epsilon=1'],
      'compute_privacy: error: num_values and init_filters must not both be '
      'given. Found num_values=10, init_filters=16.',
    ),
  ],
)
def test_bad_arguments_give_one_line_errors(flags, message):
  result = _run(*flags)
  assert result.returncode == 1
  assert result.stderr.strip() == message
  assert result.stdout == ''


def test_bad_flag_values_and_stray_arguments():
  bad_enum = _run('--mechanism=laplace')
  assert bad_enum.returncode != 0
  assert 'Traceback' not in bad_enum.stderr
  assert '--mechanism' in bad_enum.stderr
  stray = _run('--selection_epsilon=0.1', '--release_epsilon=0.1', 'extra')
  assert stray.returncode != 0
  assert 'Traceback' not in stray.stderr
  assert "Unexpected arguments: ['extra']" in stray.stderr


@pytest.mark.slow  # the child imports TensorFlow to build SegResNet
def test_counts_segresnet_parameters():
  result = _run(
    '--init_filters=16',
    '--clip_bound=1e-4',
    '--selection_epsilon=0.1',
    '--release_epsilon=0.1',
    '--total_rounds=10',
  )
  assert result.returncode == 0, result.stderr
  assert (
    'N = 4,702,227 values (SegResNet(init_filters=16) trainable parameters)'
    in result.stdout
  )
  assert 'c = ⌈qN⌉ = 470,223 released' in result.stdout
  assert all(len(line) <= 79 for line in result.stdout.splitlines())
