"""Tests of the compute_privacy binary: `main` in-process, one child run.

`tff_brats.mechanisms.privacy_report` is tested directly in
tests/mechanisms/privacy_report_test.py; these tests check that the flags
reach it and that its report and errors come out as a user sees them.

Expected numbers (see privacy_report_test.py for their provenance): SVT with
ε = ε3 = 0.1 over 100 rounds at δ = 1e-5 spends 20 summed, 10.7255 RDP and
9.7483 tight (Kairouz, Oh & Viswanath 2015, Thm. 3.3), 24 expected rounds
3.9477 tight; c = ⌈0.1 · 4,702,227⌉ = 470,223. Gaussian: 2 rounds of noise
0.7 at δ = 1e-5 give PLD 10.1224946 and RDP 10.8602036 (tensorflow_privacy
0.9.0); the noise is solved with the PLD accountant.
"""

import json
import os

from absl import app
from absl import flags
from absl.testing import flagsaver
import pytest

from experiments import compute_privacy
from tests.experiments import binaries

_SVT = dict(
  privacy_mechanism='sparse_vector',
  num_values=4_702_227,
  shared_fraction=0.1,
  clip_bound=1e-4,
  selection_epsilon=0.1,
  release_epsilon=0.1,
  threshold=1e-4,
  total_rounds=100,
  clients_per_round=3,
  num_clients=13,
  delta=1e-5,
)


def _main(capsys, argv=('compute_privacy',), **flag_values):
  """Runs `main` with these flags; returns its stdout lines."""
  with flagsaver.flagsaver(**flag_values):
    compute_privacy.main(list(argv))
  return capsys.readouterr().out.splitlines()


def _line(lines, part):
  return next(line for line in lines if part in line)


def test_known_configuration(tmp_path, capsys):
  out = tmp_path / 'privacy.json'
  lines = _main(capsys, **_SVT, output_json=str(out))
  assert '  (ε = 0.2, δ = 0)-DP: selection ε = 0.1 + release ε3 = 0.1' in lines
  text = '\n'.join(lines)
  assert 'c = ⌈qN⌉ = 470,223 released' in text
  assert 'Laplace scale 2cγ/ε3 = 940.446' in text
  # Columns: rounds, ε summed, ε RDP, ε tight (PLD).
  worst = _line(lines, 'worst case')
  assert worst.split()[-4:] == ['100', '20.0000', '10.7255', '9.7483']
  expected = _line(lines, 'not a bound')
  assert expected.split()[-4:] == ['24', '4.8000', '4.6189', '3.9477']
  assert 'step count n' in text
  assert f'JSON: {out}' in lines
  data = json.loads(out.read_text())
  assert data['totals'][0]['epsilon_tight'] == pytest.approx(
    9.748253704013988, rel=1e-9
  )
  assert data['internals']['shared_count'] == 470_223
  assert os.listdir(tmp_path) == ['privacy.json']  # written atomically


def test_inverse_mode_meets_the_target(capsys):
  lines = _main(
    capsys,
    selection_epsilon=0.05,
    target_epsilon=10.0,
    solve_for='release_epsilon',
    total_rounds=100,
    num_values=4_702_227,  # as --init_filters=16, without building it
  )
  assert lines[0].startswith('Solved release_epsilon = 0.154')
  assert 'achieved ε = 10)' in lines[0]
  assert _line(lines, 'worst').split()[-1] == '10.0000'


def test_gaussian_inverse_mode(capsys):
  lines = _main(
    capsys,
    privacy_mechanism='gaussian',
    target_epsilon=10.1224946,
    solve_for='noise_multiplier',
    total_rounds=2,
    num_values=4_702_227,  # N does not enter the Gaussian's ε
  )
  assert lines[0].startswith('Solved noise_multiplier = 0.7 ')
  assert '(pld; achieved ε = 10.1225)' in lines[0]
  worst = _line(lines, 'worst').split()
  assert worst[-2:] == ['10.8602', '10.1225']  # the RDP and tight columns


@pytest.mark.slow  # builds SegResNet-16 to count its parameters
def test_counts_segresnet_parameters(capsys):
  lines = _main(
    capsys,
    init_filters=16,
    clip_bound=1e-4,
    selection_epsilon=0.1,
    release_epsilon=0.1,
    total_rounds=10,
  )
  text = '\n'.join(lines)
  assert (
    'N = 4,702,227 values (SegResNet(init_filters=16) trainable parameters)'
    in text
  )
  assert 'c = ⌈qN⌉ = 470,223 released' in text
  assert all(len(line) <= 79 for line in lines)


@pytest.mark.parametrize(
  'flag_values, message',
  [
    (
      dict(selection_epsilon=-1.0, release_epsilon=0.1),
      'compute_privacy: error: selection_epsilon must be a positive number. '
      'Found -1.0.',
    ),
    (
      dict(selection_epsilon=0.1, target_epsilon=1.0),
      'compute_privacy: error: target_epsilon and solve_for must be given '
      'together. Found target_epsilon=1.0, solve_for=None.',
    ),
    (
      dict(
        privacy_mechanism='gaussian',
        solve_for='release_epsilon',
        target_epsilon=1.0,
      ),
      'compute_privacy: error: solve_for must be one of the parameters '
      "gaussian can solve for (noise_multiplier). Found 'release_epsilon'.",
    ),
  ],
)
def test_bad_arguments_give_one_line_errors(capsys, flag_values, message):
  with pytest.raises(SystemExit) as exit_info:
    _main(capsys, **flag_values)
  assert str(exit_info.value) == message
  assert capsys.readouterr().out == ''


def test_num_values_and_init_filters_are_exclusive(capsys):
  # Only explicit flags conflict (--init_filters has a default), so they
  # are parsed as from a command line.
  with pytest.raises(SystemExit) as exit_info:
    with flagsaver.as_parsed(
      num_values='10', init_filters='16', selection_epsilon='1'
    ):
      compute_privacy.main(['compute_privacy'])
  assert str(exit_info.value) == (
    'compute_privacy: error: num_values and init_filters must not both be '
    'given. Found num_values=10, init_filters=16.'
  )
  assert capsys.readouterr().out == ''


def test_bad_flag_values_and_stray_arguments(capsys):
  # absl's flag parser names the flag and the value (app.run prints it).
  with pytest.raises(flags.IllegalFlagValueError, match='privacy_mechanism'):
    with flagsaver.as_parsed(privacy_mechanism='laplace'):
      pass
  with pytest.raises(
    app.UsageError, match=r"Unexpected arguments: \['extra'\]"
  ):
    _main(
      capsys,
      ['compute_privacy', 'extra'],
      selection_epsilon=0.1,
      release_epsilon=0.1,
    )
  assert capsys.readouterr().out == ''


def test_smoke_child_process():
  result = binaries.run_binary(
    'compute_privacy',
    '--num_values=4702227',
    '--selection_epsilon=0.1',
    '--release_epsilon=0.1',
    '--total_rounds=100',
    '--clients_per_round=3',
    '--num_clients=13',
  )
  assert result.returncode == 0, result.stderr
  worst = next(ln for ln in result.stdout.splitlines() if 'worst case' in ln)
  assert worst.split()[-4:] == ['100', '20.0000', '10.7255', '9.7483']
