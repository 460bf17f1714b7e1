"""What leaves a client besides its update, pinned for every mechanism.

A round of the trainer's learning process reports measurements at SERVER,
and every measurement that starts at CLIENTS is something the clients send.
The trainer's default sends, per client, only its (privatised) update and
its step count; the measurements are then

* `client_work/train`: `num_clients` (public: the coordinator picked them)
  and `steps` (the sum of the weights, which the clients send anyway);
* `aggregator/privatization` (client-side mechanisms): `num_clients`, the
  released counts (post-processing of the privatised update: its non-zero
  entries) and `epsilon_per_client` (public);
* TFF's Gaussian aggregator's own (empty) query metrics, and the plain
  mean's (empty) ones under DP-SGD (whose step count is the same T for
  every client);
* `finalizer/update_non_finite`: computed at the server from the aggregate.

A new measurement (an unprivatised statistic of a client's data) changes
these types and fails this test. The simulation switches
(`report_training_statistics`, `diagnostics`) add exactly the fields they
document.
"""

import pytest

from tests import testing_utils
from tff_brats import mechanisms
from tff_brats.training import federated

pytestmark = pytest.mark.slow  # traces the learning process (seconds)

_TRAIN = 'client_work=<train=<num_clients=int32,steps=float32>>'
_PRIVATIZATION = (
  'privatization=<num_clients=int32,released_mean=float32,'
  'released_min=float32,released_max=float32,epsilon_per_client=float64>'
)
_CLIENT_SIDE = (
  f'<distributor=<>,{_TRAIN},aggregator=<{_PRIVATIZATION},'
  'inner_agg=<mean_value=<>,mean_weight=<>>>,'
  'finalizer=<update_non_finite=int32>>@SERVER'
)
_SVT = mechanisms.SparseVector(0.1, 1e-3, 1.0, 1.0)
_EXPECTED = {
  'none': (mechanisms.NoPrivacy(), _CLIENT_SIDE),
  'selective_sharing': (mechanisms.SelectiveSharing(0.1, 1e-3), _CLIENT_SIDE),
  'sparse_vector': (_SVT, _CLIENT_SIDE),
  'gaussian': (
    mechanisms.Gaussian(1.0, 0.1),
    f'<distributor=<>,{_TRAIN},aggregator=<dp_query_metrics=<>,dp=<>>,'
    'finalizer=<update_non_finite=int32>>@SERVER',
  ),
  # The clients' training is private; the step count is T for everyone.
  'dp_sgd': (
    mechanisms.DpSgd(noise_multiplier=1.0),
    f'<distributor=<>,{_TRAIN},aggregator=<mean_value=<>,mean_weight=<>>,'
    'finalizer=<update_non_finite=int32>>@SERVER',
  ),
}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('prepared'))
  testing_utils.write_prepared_folder(root, {'a': [(16, 16, 16)]})
  return root


def _metrics_type(data_dir, mechanism, **overrides):
  config = federated.FederatedConfig(
    data_dir=data_dir,
    mechanism=mechanism,
    crop_size=(16, 16, 16),
    init_filters=8,
    blocks_down=(1, 1),
    blocks_up=(1,),
    **overrides,
  )
  process = federated.build_learning_process(
    config, config.model_aggregator(clients_per_round=2)
  )
  return str(process.next.type_signature.result.metrics)


def test_every_mechanism_is_pinned():
  assert tuple(_EXPECTED) == mechanisms.NAMES


@pytest.mark.parametrize('name', list(_EXPECTED))
def test_by_default_clients_send_only_their_update_and_steps(data_dir, name):
  mechanism, expected = _EXPECTED[name]
  assert _metrics_type(data_dir, mechanism) == expected


def test_simulation_switches_add_exactly_their_fields(data_dir):
  statistics = _metrics_type(data_dir, _SVT, report_training_statistics=True)
  assert statistics == _CLIENT_SIDE.replace(
    _TRAIN,
    'client_work=<train=<num_clients=int32,steps=float32,loss_sum=float32,'
    'dice_intersection=float64[3],dice_predicted=float64[3],'
    'dice_target=float64[3],non_finite=int32>>',
  )
  diagnostics = _metrics_type(data_dir, _SVT, diagnostics=True)
  assert diagnostics == _CLIENT_SIDE.replace(
    'epsilon_per_client=float64>',
    'epsilon_per_client=float64,clipped_fraction_mean=float32,'
    'clipped_fraction_max=float32,noisy_threshold_mean=float32>',
  )
