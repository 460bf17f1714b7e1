"""Tests of tff_brats.learning.in_process: clients trained in this process.

The in-process runtime must be the worker runtime's round with the local
training moved: same state and metric types, the same model after a round
(to float tolerance), the same privacy mechanism at CLIENTS, and results
that do not depend on which device a client ran on. Placement over several
devices runs in a fresh process with two logical CPU devices (they must be
configured before TensorFlow starts); the real GPU check is `gpu`-marked.

As in fed_avg_test, processes are built before any Keras model.
"""

import asyncio
import collections
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf
import tensorflow_federated as tff

from tests import testing_utils
from tff_brats import mechanisms
from tff_brats.learning import fed_avg
from tff_brats.learning import in_process

pytestmark = pytest.mark.slow  # traces learning processes (seconds each)

MODEL_CONFIG = dict(init_filters=8, blocks_down=(1, 1), blocks_up=(1,))
CROP = (16, 16, 16)
CONFIG = fed_avg.ClientConfig(
  model_config=MODEL_CONFIG, crop_size=CROP, report_training_statistics=True
)
SEED = 2024
CLIENT_SHAPES = {'a': [(16, 16, 16), (20, 16, 16)], 'b': [(16, 18, 16)]}
CLIENTS = ('a', 'b')
# The same kernels run in another graph (the worker's, with Grappler off)
# and another process, so float results differ slightly; Adam divides by the
# root of the second moment, which brings small gradients' differences up
# to the step size: measured 3e-7 and 7.5e-6 after one round from the same
# state, while a round moves the weights by about 2e-3.
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('prepared')
  return testing_utils.write_prepared_folder(str(root), CLIENT_SHAPES)


@pytest.fixture(scope='module')
def processes():
  """(worker process, in-process process), plain FedAvg, no privacy."""
  aggregator = mechanisms.NoPrivacy().aggregation_factory()
  return (
    fed_avg.build_fed_avg_process(CONFIG, aggregator),
    in_process.InProcessLearningProcess(CONFIG, aggregator),
  )


def _inputs(folder, round_num=1, clients=CLIENTS):
  return [
    collections.OrderedDict(
      shard_paths=np.array(folder.shard_paths(client), dtype=object),
      data_key=fed_avg.client_data_key(SEED, round_num, CLIENTS.index(client)),
    )
    for client in clients
  ]


def _initial_weights():
  tf.keras.utils.set_random_seed(SEED)
  model = CONFIG.build_model()
  return tff.learning.models.ModelWeights(
    trainable=[v.numpy() for v in model.trainable_variables],
    non_trainable=[v.numpy() for v in model.non_trainable_variables],
  )


def _max_difference(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(a, b, strict=True)
  )


class TestTypes:
  def test_state_and_metrics_types_are_the_worker_process_ones(self, processes):
    worker, here = processes
    assert here.state_type == worker.initialize.type_signature.result
    worker_next = worker.next.type_signature
    here_next = here.results_process.next.type_signature
    assert here_next.result == worker_next.result
    assert here_next.parameter[0] == worker_next.parameter[0]

  @pytest.mark.parametrize('statistics', [False, True])
  def test_client_output_type(self, statistics):
    config = fed_avg.ClientConfig(
      model_config=MODEL_CONFIG,
      crop_size=CROP,
      report_training_statistics=statistics,
    )
    train = (
      '<num_clients=int32,steps=float32,loss_sum=float32,'
      'dice_intersection=float64[3],dice_predicted=float64[3],'
      'dice_target=float64[3],non_finite=int32>'
      if statistics
      else '<num_clients=int32,steps=float32>'
    )
    output = str(fed_avg.client_output_type(config))
    assert output.startswith('<result=<update=<float32[3,3,3,4,8],')
    assert output.endswith(f'>,update_weight=float32>,train={train}>')


class TestRound:
  def test_same_model_and_metrics_as_the_worker_runtime(
    self, processes, tff_runtime, folder
  ):
    worker, here = processes
    initial = _initial_weights()
    inputs = _inputs(folder)
    outputs = [
      p.next(p.set_model_weights(p.initialize(), initial), inputs)
      for p in (worker, here)
    ]
    models = [o.state.global_model_weights for o in outputs]
    assert _max_difference(models[0].trainable, models[1].trainable) < (
      TOLERANCE
    )
    # The comparison can tell: the round moved the model far more.
    assert _max_difference(models[1].trainable, initial.trainable) > (
      50 * TOLERANCE
    )
    for a, b in zip(
      models[0].non_trainable, models[1].non_trainable, strict=True
    ):
      np.testing.assert_array_equal(a, b)

    train = [o.metrics['client_work']['train'] for o in outputs]
    assert train[1]['num_clients'] == 2
    assert train[1]['steps'] == train[0]['steps'] == 3.0
    assert train[1]['loss_sum'] == pytest.approx(train[0]['loss_sum'], 1e-5)
    for key in ('dice_intersection', 'dice_predicted', 'dice_target'):
      np.testing.assert_array_equal(train[1][key], train[0][key])
    assert outputs[1].metrics['aggregator'] == outputs[0].metrics['aggregator']
    assert outputs[1].metrics['finalizer'] == outputs[0].metrics['finalizer']
    assert here.pool.last_placement == [here.pool.devices[0]] * 2

  def test_a_checkpoint_resumes_on_the_other_runtime(
    self, processes, tff_runtime, folder, tmp_path
  ):
    worker, here = processes
    state = worker.set_model_weights(worker.initialize(), _initial_weights())
    state = worker.next(state, _inputs(folder, 1)).state
    manager = tff.program.FileProgramStateManager(str(tmp_path))
    asyncio.run(manager.save(state, 1))
    loaded = asyncio.run(manager.load(1, state))
    # Round 2 on either runtime from the worker's checkpoint.
    on_worker = worker.next(loaded, _inputs(folder, 2)).state
    on_here = here.next(loaded, _inputs(folder, 2)).state
    assert (
      _max_difference(
        on_worker.global_model_weights.trainable,
        on_here.global_model_weights.trainable,
      )
      < TOLERANCE
    )
    # And back: round 3 on the worker from the in-process state.
    back = worker.next(on_here, _inputs(folder, 3)).state
    assert worker.get_model_weights(back).trainable[0].shape == (3, 3, 3, 4, 8)


def _released_counts(process, state, folder, rounds):
  """Client 'a''s released count in `rounds` rounds from one state."""
  counts = []
  for _ in range(rounds):
    output = process.next(state, _inputs(folder, 1, clients=('a',)))
    counts.append(
      float(output.metrics['aggregator']['privatization']['released_mean'])
    )
  return counts


def test_sparse_vector_released_counts_follow_the_same_law(tff_runtime, folder):
  """Two-sample test on the SVT's released counts, fresh noise each round.

  Client 'a' alone, from one state (so one update, and only the noise
  varies): γ = 1e-3, c = N = 25,355, ε = 1e5 for the selection, so the
  query noise has scale a2 = 2cG/ε2, about G/2, and the count depends on
  the update (measured in process, 60 rounds: mean 21,854, sd 113,
  skewed right, range 21,641-22,238 at τ = 1e-4; about 19,600 at τ =
  3e-4). The worker runtime trains and privatises in every round; the
  in-process one trains once (its training is deterministic) and sends
  that result through its TFF part in every round, which is all its `next`
  does besides training. Exact two-sided Mann-Whitney U on 10 rounds a
  side: under one law, p < 1e-4 has probability below 1e-4. The test can
  tell: the same samples with one side shifted by 1,000 counts (about 9
  standard deviations, beyond the measured range; less than half the
  effect of τ = 3e-4) separate completely, p = 1.1e-5. (A shift of 500
  was within the right tail's reach: it failed one CI run.)
  """
  aggregator = mechanisms.SparseVector(
    shared_fraction=1.0,
    clip_bound=1e-3,
    selection_epsilon=1e5,
    release_epsilon=1.0,
    threshold=1e-4,
  ).aggregation_factory()
  worker = fed_avg.build_fed_avg_process(CONFIG, aggregator)
  here = in_process.InProcessLearningProcess(CONFIG, aggregator)
  initial = _initial_weights()
  rounds = 10
  state = worker.set_model_weights(worker.initialize(), initial)
  on_worker = _released_counts(worker, state, folder, rounds)
  state = here.set_model_weights(here.initialize(), initial)
  outputs = here.pool.train(
    initial.trainable, _inputs(folder, 1, clients=('a',))
  )
  in_process_counts = [
    float(
      here.results_process.next(state, outputs).metrics['aggregator'][
        'privatization'
      ]['released_mean']
    )
    for _ in range(rounds)
  ]
  samples = {'worker': on_worker, 'in_process': in_process_counts}
  num_values = sum(w.size for w in initial.trainable)
  for counts in samples.values():
    # The SVT selected (c = N, so fewer passes than values) and varied.
    assert max(counts) < num_values and len(set(counts)) > 1, samples
  same = stats.mannwhitneyu(on_worker, in_process_counts, method='exact').pvalue
  shifted = stats.mannwhitneyu(
    [c + 1000 for c in on_worker], in_process_counts, method='exact'
  ).pvalue
  assert same >= 1e-4, samples
  assert shifted < 1e-4, samples


_PLACEMENT_SCRIPT = textwrap.dedent(
  """
  import collections, json, sys
  import numpy as np
  import tensorflow as tf
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  from tff_brats.learning import fed_avg, in_process
  from tff_brats.runtime import devices
  config = fed_avg.ClientConfig(
    model_config=dict(init_filters=8, blocks_down=(1, 1), blocks_up=(1,)),
    crop_size=(16, 16, 16), report_training_statistics=True)
  paths = json.loads(sys.argv[1])
  inputs = [collections.OrderedDict(
      shard_paths=np.array(p, dtype=object),
      data_key=fed_avg.client_data_key(7, 1, i)) for i, p in enumerate(paths)]
  found = devices.training_devices()
  tf.keras.utils.set_random_seed(7)
  weights = [v.numpy() for v in config.build_model().trainable_variables]
  results = {}
  for name, names in (('two', found), ('one', found[:1])):
    pool = in_process.ClientPool(config, names)
    outputs = pool.train(weights, inputs)
    results[name] = dict(
      placement=pool.last_placement,
      variable_devices=[t.model.trainable_variables[0].device
                        for t in pool.trainers],
      updates=[[u.tolist() for u in o['result'].update[:2]] for o in outputs],
      steps=[float(o['train']['steps']) for o in outputs],
      loss=[float(o['train']['loss_sum']) for o in outputs])
  print(json.dumps(dict(devices=found, **results)))
  """
)


def test_clients_go_round_robin_over_devices_and_placement_does_not_matter(
  folder,
):
  paths = [list(folder.shard_paths(c)) for c in ('b', 'b', 'b')]
  completed = subprocess.run(
    [sys.executable, '-c', _PLACEMENT_SCRIPT, json.dumps(paths)],
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
    check=False,
  )
  assert completed.returncode == 0, completed.stderr[-3000:]
  result = json.loads(completed.stdout.strip().splitlines()[-1])
  cpu0, cpu1 = result['devices']
  assert cpu0.endswith('CPU:0') and cpu1.endswith('CPU:1')
  two, one = result['two'], result['one']
  assert two['placement'] == [cpu0, cpu1, cpu0]
  assert [
    d.endswith(n)
    for d, n in zip(two['variable_devices'], ('CPU:0', 'CPU:1'), strict=True)
  ] == [True, True]
  assert one['placement'] == [cpu0] * 3
  assert two['steps'] == one['steps'] == [1.0, 1.0, 1.0]
  # The same kernels on either CPU device: identical results.
  assert two['loss'] == one['loss']
  assert two['updates'] == one['updates']
  # The three clients are one institution with three data keys.
  assert two['updates'][0] != two['updates'][2]


@pytest.mark.gpu
def test_on_a_gpu_clients_are_placed_there_and_agree_with_the_cpu(folder):
  """Runs wherever a GPU is present (`pytest -m gpu`); TF32 off."""
  gpus = tf.config.list_logical_devices('GPU')
  if not gpus:
    pytest.skip('no GPU visible to TensorFlow')
  tf.config.experimental.enable_tensor_float_32_execution(False)
  try:
    tf.keras.utils.set_random_seed(SEED)
    weights = [v.numpy() for v in CONFIG.build_model().trainable_variables]
    inputs = _inputs(folder)
    gpu_pool = in_process.ClientPool(CONFIG, [gpus[0].name])
    cpu_pool = in_process.ClientPool(CONFIG, ['/device:CPU:0'])
    on_gpu = gpu_pool.train(weights, inputs)
    on_cpu = cpu_pool.train(weights, inputs)
    assert 'GPU' in gpu_pool.trainers[0].model.trainable_variables[0].device
    for g, c in zip(on_gpu, on_cpu, strict=True):
      assert _max_difference(g['result'].update, c['result'].update) < 1e-5
      assert float(g['train']['loss_sum']) == pytest.approx(
        float(c['train']['loss_sum']), rel=1e-4
      )
  finally:
    tf.config.experimental.enable_tensor_float_32_execution(True)
