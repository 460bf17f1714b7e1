"""The federated trainer with its clients on sites, end to end.

Through `train_federated` as the binary runs it (the loop, the TFF
aggregation with the SVT, evaluation and outputs), one round with the
clients trained on two sites that hold their data (`sites=...`): two
workers in their own serving folders, each with its own copy of only its
institution's data, reached through Unix sockets. The coordinator's folder
has the validation cases only. The sites' TLS, routing errors and a killed
site are tested in tests/runtime/sites_test.py; the in-process runtime end
to end in tests/training/federated_test.py.
"""

import portpicker
import pytest

from tests import testing_utils
from tests.training import run_files
from tff_brats import mechanisms
from tff_brats.runtime import local
from tff_brats.runtime import sites as sites_lib
from tff_brats.runtime import worker as worker_lib
from tff_brats.training import federated

pytestmark = pytest.mark.slow

SHAPES = {'a': [(16, 16, 16)] * 2, 'b': [(16, 18, 16)]}


@pytest.fixture(autouse=True)
def _no_export(monkeypatch):
  # The SavedModel export does not depend on the runtime (federated_test).
  monkeypatch.setattr(
    federated.export,
    'export_model_dir',
    lambda model_dir, output_dir, overwrite: output_dir,
  )


def _config(data_dir):
  return federated.FederatedConfig(
    data_dir=data_dir,
    mechanism=mechanisms.SparseVector(0.1, 1e-3, 1.0, 1.0),
    total_rounds=1,
    crop_size=(16, 16, 16),
    init_filters=8,
    blocks_down=(1, 1),
    blocks_up=(1,),
    tumour_crop_probability=1.0,
    num_overlay_cases=0,
    seed=3,
  )


def _check_round(run_dir, summary):
  assert summary['rounds_completed'] == 1
  (row,) = run_files.rows(run_dir)
  assert row['client_ids'] == 'a b'
  assert row['steps'] == '3'  # 2 + 1 local steps
  # The SVT ran in TFF on each client's update.
  assert float(row['released_min']) > 0
  assert float(row['epsilon_per_client']) == 2.0  # ε + ε3
  assert 0.0 <= float(row['val_dice_mean']) <= 1.0
  assert summary['privacy']['rounds_per_institution'] == {'a': 1, 'b': 1}


def test_a_round_on_two_sites(tmp_path):
  workers = []
  addresses = {}
  try:
    offset = 0
    for name, institution in (('s1', 'a'), ('s2', 'b')):
      # Its own data: only its institution, the cases as they would be in
      # one folder (write_prepared_folder seeds case k with seed + k).
      data = testing_utils.write_prepared_folder(
        str(tmp_path / f'{name}_data'),
        {institution: SHAPES[institution]},
        seed=offset,
      )
      offset += len(SHAPES[institution])
      serving = str(tmp_path / f'{name}_serving')
      sites_lib.write_serving_folder(data.root, [institution], serving)
      worker = worker_lib.WorkerProcess(
        portpicker.pick_unused_port(),
        str(tmp_path / f'{name}.log'),
        cwd=serving,
      )
      worker.start()
      workers.append(worker)
      addresses[name] = worker.address
    for worker in workers:
      local.wait_for_worker(worker, 60)
    coordinator = testing_utils.write_prepared_folder(
      str(tmp_path / 'coordinator'), {}
    )
    run_dir = str(tmp_path / 'run')
    summary = federated.train_federated(
      _config(coordinator.root), run_dir, progress=False, sites=addresses
    )
    _check_round(run_dir, summary)
    # The coordinator's own worker is gone; the sites' are theirs.
    assert set(testing_utils.stray_worker_pids()) == {
      w.server_pid() for w in workers
    }
  finally:
    for worker in workers:
      worker.stop()
