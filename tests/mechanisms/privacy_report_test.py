"""Tests for tff_brats.mechanisms.privacy_report (compute_privacy's library).

Expected numbers:

* SVT with selection ε = 0.1 and release ε3 = 0.1 is 0.2-DP per round. Over
  the worst case of 100 rounds: summed 20; tight 9.748253704013988 and over
  the expected ⌈100 · 3/13⌉ = 24 rounds 3.9476630493874407, both from the
  optimal composition theorem (Kairouz, Oh & Viswanath 2015, Thm. 3.3)
  evaluated independently in accounting_test.py (`_kov_epsilon`).
* N = 4,702,227 (SegResNet-16, DESIGN.md) and q = 0.1: c = 470,223; ε1 =
  0.1 / (1 + 940,446^(2/3)) = 1.0416748590665316e-05; with γ = 1e-4 the
  Laplace scales are γ/ε1 = 9.5999…, 2cγ/ε2 = 940.5439… and 2cγ/ε3 =
  940.446.
* Gaussian: 2 rounds of noise 0.7 at δ = 1e-5 give RDP 10.8602036 and PLD
  10.1224946 (tensorflow_privacy 0.9.0, compute_dp_sgd_privacy_test.py).
"""

import json
import math

import pytest

from tff_brats.mechanisms import privacy_report

pytestmark = pytest.mark.filterwarnings(
  'ignore:np.find_common_type is deprecated:DeprecationWarning'
)

_SVT = dict(
  privacy_mechanism='sparse_vector',
  parameters=dict(
    shared_fraction=0.1,
    clip_bound=1e-4,
    selection_epsilon=0.1,
    release_epsilon=0.1,
    threshold=1e-4,
  ),
  num_values=4_702_227,
  total_rounds=100,
  clients_per_round=3,
  num_clients=13,
  delta=1e-5,
)


def _svt(**parameters):
  return dict(
    privacy_mechanism='sparse_vector', parameters=parameters, init_filters=None
  )


def test_sparse_vector_report():
  result = privacy_report.run_compute_privacy(**_SVT)
  assert result['privacy_mechanism'] == 'sparse_vector'
  assert result['parameters']['selection_epsilon'] == 0.1
  assert result['round']['guarantee'] == '(ε = 0.2, δ = 0) per round'
  assert result['round']['dp_event'] == {
    'class_name': 'EpsilonDeltaDpEvent',
    'epsilon': pytest.approx(0.2),
    'delta': 0.0,
  }
  svt = result['internals']
  assert svt['shared_count'] == 470_223
  assert svt['threshold_epsilon'] == pytest.approx(1.0416748590665316e-05)
  assert svt['query_epsilon'] == pytest.approx(0.1 - 1.0416748590665316e-05)
  assert svt['threshold_scale'] == pytest.approx(1e-4 / 1.0416748590665316e-05)
  assert svt['query_scale'] == pytest.approx(940.5439741011667)
  assert svt['release_scale'] == pytest.approx(940.446)
  worst, expected = result['totals']
  assert worst['view'] == 'worst_case'
  assert worst['rounds'] == 100
  assert worst['epsilon_summed'] == pytest.approx(20.0)
  assert worst['epsilon_tight'] == pytest.approx(9.748253704013988, rel=1e-9)
  # RDP of pure 0.2-DP rounds bounds ε from above, looser than the PLD.
  assert worst['epsilon_tight'] < worst['epsilon_rdp'] < 20.0
  assert expected['view'] == 'expected'
  assert expected['rounds'] == 24
  assert expected['epsilon_summed'] == pytest.approx(4.8)
  assert expected['epsilon_tight'] == pytest.approx(
    3.9476630493874407, rel=1e-9
  )
  report = privacy_report.format_report(result)
  for text in (
    '(ε = 0.2, δ = 0)-DP',
    'c = ⌈qN⌉ = 470,223',
    'Laplace scale 2cγ/ε3 = 940.446',
    'N sets c and the noise scales, not ε.',
    'threshold τ = 0.0001 does not',
    '9.7483',
    '3.9477',
    '20.0000',
    'step count n',
    'worst case: every round',
    'expected: ⌈pR⌉ rounds, not a bound',
    'one round: ε per institution = 0.2000 at δ = 1e-05 (PLD)',
    'Update: N = 4,702,227 values (num_values).',
  ):
    assert text in report
  assert all(len(line) <= 79 for line in report.splitlines())


def test_gaussian_report_lines_fit():
  result = privacy_report.run_compute_privacy(
    privacy_mechanism='gaussian',
    parameters=dict(noise_multiplier=3.0),
    clients_per_round=3,
    init_filters=None,
  )
  report = privacy_report.format_report(result)
  assert all(len(line) <= 79 for line in report.splitlines())


def test_all_clients_every_round_has_one_view():
  result = privacy_report.run_compute_privacy(
    **_svt(selection_epsilon=0.5, release_epsilon=0.5), total_rounds=10
  )
  assert [t['view'] for t in result['totals']] == ['worst_case']
  assert result['internals'] == {}
  assert 'give num_values or init_filters' in privacy_report.format_report(
    result
  )


def test_inverse_release_epsilon_meets_the_target():
  result = privacy_report.run_compute_privacy(
    **_svt(selection_epsilon=0.05),
    target_epsilon=10.0,
    solve_for='release_epsilon',
    total_rounds=100,
  )
  solved = result['solved']
  assert solved['parameter'] == 'release_epsilon'
  assert solved['rounds'] == 100
  assert solved['method'] == 'pld'
  assert solved['achieved_epsilon'] <= 10.0 * (1 + 1e-9)
  assert solved['achieved_epsilon'] == pytest.approx(10.0, rel=1e-8)
  assert result['parameters']['release_epsilon'] == solved['value']
  assert result['totals'][0]['epsilon_tight'] == pytest.approx(10.0, rel=1e-8)
  assert privacy_report.format_report(result).startswith(
    'Solved release_epsilon = 0.154'
  )


def test_inverse_selection_epsilon():
  result = privacy_report.run_compute_privacy(
    **_svt(release_epsilon=0.05),
    target_epsilon=2.0,
    solve_for='selection_epsilon',
    total_rounds=20,
    clients_per_round=4,
  )
  assert result['parameters']['selection_epsilon'] == result['solved']['value']
  assert result['totals'][0]['epsilon_tight'] == pytest.approx(2.0, rel=1e-8)
  assert result['totals'][1]['epsilon_tight'] < 2.0


def test_gaussian_report_and_inverse():
  result = privacy_report.run_compute_privacy(
    privacy_mechanism='gaussian',
    parameters=dict(noise_multiplier=0.7, l2_norm_clip=0.5),
    total_rounds=2,
    init_filters=None,
  )
  (total,) = result['totals']
  assert total['epsilon_rdp'] == pytest.approx(10.8602036, abs=1e-7)
  assert total['epsilon_tight'] == pytest.approx(10.1224946, abs=1e-7)
  report = privacy_report.format_report(result)
  assert 'noise multiplier z = 0.7' in report
  assert 'L2 clip C = 0.5' in report
  assert 'secure aggregation' in report
  solved = privacy_report.run_compute_privacy(
    privacy_mechanism='gaussian',
    target_epsilon=10.1224946,
    solve_for='noise_multiplier',
    total_rounds=2,
    init_filters=None,
  )
  assert solved['solved']['value'] == pytest.approx(0.7, abs=1e-6)
  assert solved['solved']['method'] == 'pld'
  assert solved['totals'][0]['epsilon_tight'] <= 10.1224946 * (1 + 1e-9)


def test_selective_sharing_has_no_finite_epsilon(tmp_path):
  out = tmp_path / 'privacy.json'
  result = privacy_report.run_compute_privacy(
    privacy_mechanism='selective_sharing',
    num_values=1000,
    clients_per_round=2,
    output_json=str(out),
  )
  assert result['internals'] == {'shared_count': 100}
  for total in result['totals']:
    assert total['epsilon_summed'] == math.inf
    assert total['epsilon_rdp'] == math.inf
    assert total['epsilon_tight'] == math.inf
  data = json.loads(out.read_text())
  assert data['totals'][0]['epsilon_tight'] == 'inf'
  assert data['privacy_mechanism'] == 'selective_sharing'
  assert data['round']['dp_event'] == {'class_name': 'NonPrivateDpEvent'}
  assert 'no DP guarantee' in privacy_report.format_report(result)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['privacy.json']


def test_parameters_of_other_mechanisms_are_ignored():
  result = privacy_report.run_compute_privacy(
    privacy_mechanism='gaussian',
    parameters=dict(noise_multiplier=1.0, selection_epsilon=9.0),
    init_filters=None,
  )
  assert result['parameters'] == {'noise_multiplier': 1.0, 'l2_norm_clip': 0.1}


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (
      dict(**_svt(), target_epsilon=1.0),
      r'target_epsilon and solve_for must be given together',
    ),
    (
      dict(
        **_svt(selection_epsilon=0.1),
        target_epsilon=1.0,
        solve_for='noise_multiplier',
      ),
      r'solve_for must be one of the parameters sparse_vector can solve for '
      r"\(release_epsilon, selection_epsilon\). Found 'noise_multiplier'.",
    ),
    (
      _svt(release_epsilon=0.1),
      r'selection_epsilon must be given for sparse_vector. Found None.',
    ),
    (
      dict(privacy_mechanism='gaussian', init_filters=None),
      r'noise_multiplier must be given for gaussian. Found None.',
    ),
    (
      dict(privacy_mechanism='laplace'),
      r'privacy_mechanism must be one of none, selective_sharing, '
      r'sparse_vector, gaussian, dp_sgd',
    ),
    (dict(**_svt(), delta=0.0), r'delta must be in \(0, 1\). Found 0.0.'),
    (
      dict(**_svt(), clients_per_round=20),
      r'clients_per_round must be at most num_clients=13. Found 20.',
    ),
    (
      dict(
        **_svt(selection_epsilon=5.0),
        target_epsilon=1.0,
        solve_for='release_epsilon',
      ),
      r'selection_epsilon must be below',
    ),
  ],
)
def test_validation(kwargs, message):
  with pytest.raises(ValueError, match=message):
    privacy_report.run_compute_privacy(**kwargs)


@pytest.mark.slow  # builds a SegResNet (imports TensorFlow)
def test_counts_segresnet_parameters():
  # MONAI's count for 16 initial filters (DESIGN.md).
  assert privacy_report.count_segresnet_parameters(16) == 4_702_227
  result = privacy_report.run_compute_privacy(
    privacy_mechanism='selective_sharing', init_filters=16
  )
  assert result['num_values'] == 4_702_227
  assert result['num_values_source'] == (
    'SegResNet(init_filters=16) trainable parameters'
  )
