"""Tests for tff_brats.mechanisms.dp_sgd (patient-level DP-SGD)."""

import dp_accounting
import pytest
import tensorflow_federated as tff

from tff_brats import mechanisms
from tff_brats.learning import dp_sgd_training
from tff_brats.learning import fed_avg
from tff_brats.privacy import accounting
from tff_brats.privacy import planning


def test_guarantee_is_per_patient_and_composes_every_step():
  mechanism = mechanisms.DpSgd(
    noise_multiplier=1.2,
    l2_norm_clip=0.5,
    sampling_probability=0.2,
    local_steps=6,
  )
  assert mechanism.name == 'dp_sgd'
  assert mechanism.unit == 'patient'
  assert mechanisms.Gaussian.unit == 'institution'
  assert mechanism.dp_event() == dp_accounting.SelfComposedDpEvent(
    dp_accounting.PoissonSampledDpEvent(
      0.2, dp_accounting.GaussianDpEvent(1.2)
    ),
    6,
  )
  assert mechanism.has_guarantee
  assert 'per patient' in mechanism.guarantee_text()
  unit, size, float_noise = mechanism.caveats
  assert 'one case' in unit and 'group' in unit
  assert 'public' in size
  assert 'Mironov' in float_noise
  assert mechanism.describe(None) == {
    'noise_stddev': pytest.approx(0.6),
    'steps_per_round': 6,
    'sampling_probability': 0.2,
  }
  # Zero noise: no claim.
  assert not mechanisms.DpSgd(noise_multiplier=0.0).has_guarantee


def test_ledger_composes_rounds_per_patient():
  # Ten rounds of 6 steps equal one accountant over 60 steps.
  mechanism = mechanisms.DpSgd(
    noise_multiplier=1.2, sampling_probability=0.2, local_steps=6
  )
  ledger = accounting.PrivacyLedger(['a'])
  for round_num in range(10):
    ledger.record_round(round_num, ['a'], mechanism.record())
  direct = (
    dp_accounting.pld.PLDAccountant()
    .compose(
      dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
          0.2, dp_accounting.GaussianDpEvent(1.2)
        ),
        60,
      )
    )
    .get_epsilon(1e-5)
  )
  assert ledger.epsilon('a', delta=1e-5) == pytest.approx(direct, rel=1e-9)
  # The ledger's JSON keeps the nested event.
  again = accounting.PrivacyLedger.from_json(ledger.to_json())
  assert again.epsilon('a', delta=1e-5) == pytest.approx(direct, rel=1e-9)
  assert again.epsilon('a', delta=1e-5, method='rdp') >= direct


def test_clients_train_with_its_options():
  mechanism = mechanisms.DpSgd(
    noise_multiplier=1.0, sampling_probability=0.5, local_steps=3
  )
  options = mechanism.client_training(noise_seed=7)
  assert options == dp_sgd_training.DpSgdOptions(
    noise_multiplier=1.0,
    l2_norm_clip=0.1,
    sampling_probability=0.5,
    local_steps=3,
    noise_seed=7,
  )
  assert mechanisms.Gaussian(1.0).client_training(None) is None
  assert isinstance(
    mechanism.aggregation_factory(), tff.aggregators.MeanFactory
  )
  assert isinstance(
    mechanism.aggregation_factory(weighted=False),
    tff.aggregators.UnweightedMeanFactory,
  )


def test_client_config_takes_one_batch_and_one_pass():
  options = mechanisms.DpSgd(noise_multiplier=1.0).client_training(None)
  for name in ('batch_size', 'client_epochs_per_round'):
    with pytest.raises(ValueError, match=f'^{name} must be 1 with DP-SGD'):
      fed_avg.ClientConfig(
        model_config={}, crop_size=(16, 16, 16), dp_sgd=options, **{name: 2}
      )


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (dict(), '^noise_multiplier must be given for dp_sgd. Found None.$'),
    (dict(noise_multiplier=1.0, sampling_probability=0.0), 'sampling_prob'),
    (dict(noise_multiplier=1.0, local_steps=0), 'local_steps must be'),
    (dict(noise_multiplier=1.0, l2_norm_clip=0.0), 'l2_norm_clip must be'),
  ],
)
def test_rejects(kwargs, message):
  with pytest.raises(ValueError, match=message):
    mechanisms.DpSgd(**kwargs)


def test_solve_meets_the_target_per_patient():
  solved = mechanisms.DpSgd.solve(
    'noise_multiplier',
    target_epsilon=8.0,
    delta=1e-5,
    num_rounds=20,
    sampling_probability=0.25,
    local_steps=8,
  )
  assert solved.method == 'pld'
  z = solved.value
  assert solved.mechanism.noise_multiplier == z
  assert solved.mechanism.local_steps == 8
  spent = planning.total_epsilon(solved.mechanism.record(), 20, delta=1e-5)
  assert spent == pytest.approx(8.0, rel=1e-5)
  assert not accounting.exceeds(spent, 8.0)
  # Slightly less noise overspends: the smallest z, not just one that fits.
  less = mechanisms.DpSgd(
    noise_multiplier=z * (1 - 1e-3), sampling_probability=0.25, local_steps=8
  )
  assert planning.total_epsilon(less.record(), 20, delta=1e-5) > 8.0
  # Amplification by sampling: 160 unsampled Gaussian steps need more noise
  # for the same budget than 160 steps sampled at q = 1/4.
  assert (
    z
    < mechanisms.Gaussian.solve(
      'noise_multiplier', target_epsilon=8.0, delta=1e-5, num_rounds=160
    ).value
  )
