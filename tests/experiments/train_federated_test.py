"""Tests of the train_federated binary's `main` and flags, without TFF runs.

Full runs of the binary's configuration (every mechanism, an interrupted
and resumed run through `python -m experiments.train_federated`) are in
tests/training/federated_test.py; the loop is tested on a fake process in
tests/training/federated_loop_test.py. These tests stop before any TFF
computation is built.
"""

import os

from absl import app
from absl.testing import flagsaver
import pytest

from experiments import train_federated
from tests.experiments import binaries
from tff_brats import mechanisms
from tff_brats.training import federated

_SVT = dict(selection_epsilon=1.0, release_epsilon=0.5)


def _main(argv=('train_federated',), **flag_values):
  with flagsaver.flagsaver(**flag_values):
    train_federated.main(list(argv))


def test_config_defaults_are_the_librarys(tmp_path):
  # One default per flag, and the same as the library's.
  with flagsaver.flagsaver(data_dir=str(tmp_path), **_SVT):
    config = train_federated.config_from_flags()
  assert config == federated.FederatedConfig(
    data_dir=str(tmp_path),
    mechanism=mechanisms.SparseVector(
      shared_fraction=0.1,
      clip_bound=1e-3,
      selection_epsilon=1.0,
      release_epsilon=0.5,
      threshold=0.0,
      normalize_by_steps=True,
    ),
  )


def test_config_from_flags():
  with flagsaver.as_parsed(
    crop_size='16,16,16',
    eval_window='24,24,24',
    blocks_down='1,2',
    blocks_up='3',
  ):
    with flagsaver.flagsaver(
      data_dir='prepared',
      privacy_mechanism='gaussian',
      noise_multiplier=0.7,
      l2_norm_clip=0.05,
      total_rounds=3,
      clients_per_round=2,
      client_epochs_per_round=4,
      client_learning_rate=3e-4,
      server_optimizer='adam',
      server_learning_rate=0.5,
      batch_size=2,
      crops_per_case=3,
      tumour_crop_probability=1.0,
      init_filters=8,
      loss='dice',
      target_epsilon=20.0,
      delta=1e-6,
      rounds_per_eval=2,
      rounds_per_checkpoint=3,
      eval_overlap=0.25,
      max_eval_cases=5,
      num_overlay_cases=1,
      eval_per_institution=True,
      max_institution_eval_cases=2,
      seed=-1,
      noise_seed=None,  # a budget needs fresh noise
      diagnostics=True,
      report_training_statistics=True,
    ):
      config = train_federated.config_from_flags()
  assert config == federated.FederatedConfig(
    data_dir=os.path.abspath('prepared'),
    mechanism=mechanisms.Gaussian(noise_multiplier=0.7, l2_norm_clip=0.05),
    total_rounds=3,
    clients_per_round=2,
    client_epochs_per_round=4,
    client_learning_rate=3e-4,
    server_optimizer='adam',
    server_learning_rate=0.5,
    crop_size=(16, 16, 16),
    batch_size=2,
    crops_per_case=3,
    tumour_crop_probability=1.0,
    init_filters=8,
    blocks_down=(1, 2),
    blocks_up=(3,),
    loss='dice',
    target_epsilon=20.0,
    delta=1e-6,
    rounds_per_eval=2,
    rounds_per_checkpoint=3,
    eval_window=(24, 24, 24),
    eval_overlap=0.25,
    max_eval_cases=5,
    num_overlay_cases=1,
    eval_per_institution=True,
    max_institution_eval_cases=2,
    seed=None,
    noise_seed=None,
    diagnostics=True,
    report_training_statistics=True,
  )


@pytest.mark.parametrize(
  'mechanism, flag_values, expected',
  [
    ('none', {}, mechanisms.NoPrivacy()),
    (
      'selective_sharing',
      dict(shared_fraction=0.5, clip_bound=1e-2, normalize_by_steps=False),
      mechanisms.SelectiveSharing(
        shared_fraction=0.5, clip_bound=1e-2, normalize_by_steps=False
      ),
    ),
    (
      'sparse_vector',
      dict(**_SVT, threshold=5e-4),
      mechanisms.SparseVector(
        shared_fraction=0.1,
        clip_bound=1e-3,
        selection_epsilon=1.0,
        release_epsilon=0.5,
        threshold=5e-4,
        normalize_by_steps=True,
      ),
    ),
  ],
)
def test_mechanism_from_flags(mechanism, flag_values, expected):
  with flagsaver.flagsaver(
    data_dir='prepared', privacy_mechanism=mechanism, **flag_values
  ):
    assert train_federated.config_from_flags().mechanism == expected


def test_missing_flags_stop_before_anything_runs(tmp_path):
  with pytest.raises(
    app.UsageError,
    match=r'^Flag\(s\) must be given: --data_dir, --root_output_dir$',
  ):
    _main(**_SVT)
  with pytest.raises(app.UsageError, match=r'--data_dir$'):
    _main(root_output_dir=str(tmp_path), **_SVT)
  assert os.listdir(tmp_path) == []


def test_stray_argument(tmp_path):
  with pytest.raises(app.UsageError, match=r"Unexpected arguments: \['7'\]"):
    _main(
      ['train_federated', '7'],
      data_dir=str(tmp_path),
      root_output_dir=str(tmp_path),
      **_SVT,
    )
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
  'flag_values, message',
  [
    (
      dict(release_epsilon=0.5),
      # --selection_epsilon has no default.
      'train_federated: error: selection_epsilon must be given for '
      'sparse_vector. Found None.',
    ),
    (
      dict(selection_epsilon=-1.0, release_epsilon=0.5),
      'train_federated: error: selection_epsilon must be a positive number. '
      'Found -1.0.',
    ),
    (
      dict(privacy_mechanism='gaussian', noise_multiplier=1.0, l2_norm_clip=0),
      'train_federated: error: l2_norm_clip must be a positive number. '
      'Found 0.',
    ),
    (
      dict(**_SVT, crop_size=[16, 16, 20]),
      'train_federated: error: crop_size must be multiples of 8 (SegResNet '
      'halves the resolution 3 times). Found (16, 16, 20).',
    ),
  ],
)
def test_bad_values_stop_with_one_line(tmp_path, flag_values, message):
  with pytest.raises(SystemExit) as exit_info:
    _main(data_dir=str(tmp_path), root_output_dir=str(tmp_path), **flag_values)
  assert str(exit_info.value) == message
  assert os.listdir(tmp_path) == []  # no run folder


def test_smoke_child_process(tmp_path):
  # A real run is tests/training/federated_test.py's; this one shows the
  # binary starts, parses and stops on a bad parameter with one line.
  result = binaries.run_binary(
    'train_federated',
    f'--data_dir={tmp_path}',
    f'--root_output_dir={tmp_path}',
    '--selection_epsilon=1',
    '--release_epsilon=0',
    timeout=300,
  )
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
    'train_federated: error: release_epsilon must be a positive number. '
    'Found 0.0.'
  )
  assert 'Traceback' not in result.stderr
  assert os.listdir(tmp_path) == []


def test_noise_seed_flag_reaches_the_config():
  with flagsaver.flagsaver(
    data_dir='prepared',
    selection_epsilon=1.0,
    release_epsilon=1.0,
    noise_seed=11,
  ):
    config = train_federated.config_from_flags()
  assert config.noise_seed == 11
  assert config.guarantee_text() == 'no guarantee (fixed noise seed)'
