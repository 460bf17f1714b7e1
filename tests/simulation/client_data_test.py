"""Tests of tff_brats.simulation.client_data (TFF, on a real local worker)."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import testing_utils
from tff_brats.data import errors
from tff_brats.data import pipeline
from tff_brats.runtime import local
from tff_brats.simulation import client_data

# Runs TFF computations on a real worker (about 30 s in all).
pytestmark = pytest.mark.slow

CROP = (8, 8, 8)
# Client 'a': 3 cases in 2 shards, 'b': 2 cases, 'c': 1 case.
CLIENT_SHAPES = {
  'a': [(16, 16, 16), (18, 16, 20), (16, 20, 16)],
  'b': [(20, 16, 16), (16, 16, 18)],
  'c': [(16, 18, 16)],
}


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('prepared')
  return testing_utils.write_prepared_folder(
    str(root), CLIENT_SHAPES, shards_per_client=2
  )


@pytest.fixture(scope='module')
def runtime(tmp_path_factory):
  log_dir = tmp_path_factory.mktemp('runtime')
  with local.LocalRuntime(log_dir=str(log_dir)) as rt:
    pid = rt.worker_pid
    yield rt
  assert testing_utils.wait_process_gone(pid), (
    f'TFF worker {pid} survived the runtime'
  )


def _summary_computation(dataset_type):
  """Dataset -> (batches, tumour voxels, sum of image values)."""

  @tff.tensorflow.computation(dataset_type)
  def summarise(dataset):
    def add(state, batch):
      image, regions = batch
      return (
        state[0] + 1,
        state[1] + tf.reduce_sum(regions),
        state[2] + tf.reduce_sum(image),
      )

    return dataset.reduce((0, 0.0, 0.0), add)

  return summarise


def _summaries_on_clients(dataset_computation):
  """A federated computation mapping `dataset_computation` and a summary."""
  summarise = _summary_computation(dataset_computation.type_signature.result)

  @tff.federated_computation(
    tff.FederatedType(dataset_computation.type_signature.parameter, tff.CLIENTS)
  )
  def summaries(values):
    datasets = tff.federated_map(dataset_computation, values)
    return tff.federated_map(summarise, datasets)

  return summaries


def _summary(dataset):
  batches = regions = image = 0.0
  for batch_image, batch_regions in dataset:
    batches += 1
    regions += float(tf.reduce_sum(batch_regions))
    image += float(tf.reduce_sum(batch_image))
  return batches, regions, image


def _assert_summaries_equal(actual, expected):
  assert len(actual) == len(expected)
  for (batches, regions, image), (e_batches, e_regions, e_image) in zip(
    actual, expected, strict=True
  ):
    assert batches == e_batches
    assert regions == e_regions
    # Reduction order differs between the worker and eager TF.
    assert image == pytest.approx(e_image, rel=1e-4, abs=1e-2)


class TestBratsClientData:
  def test_clients_and_shard_paths(self, folder):
    data = client_data.BratsClientData(
      folder.root, crop_size=CROP, batch_size=1
    )
    assert data.client_ids == ['a', 'b', 'c']
    assert data.shard_paths('a') == folder.shard_paths('a')
    assert len(data.shard_paths('a')) == 2
    assert all(os.path.isfile(p) for p in data.shard_paths('a'))
    assert data.manifest.clients == folder.clients
    from_manifest = client_data.BratsClientData(
      folder, crop_size=CROP, batch_size=1
    )
    assert from_manifest.client_ids == data.client_ids

  def test_element_type_structure(self, folder):
    data = client_data.BratsClientData(folder, crop_size=CROP, batch_size=2)
    assert data.element_type_structure == pipeline.training_element_spec(
      CROP, 2
    )

  @pytest.mark.parametrize('client_id', ['a', 'b', 'c'])
  def test_client_dataset_is_the_pipeline_over_its_shards(
    self, folder, client_id
  ):
    kwargs = dict(crop_size=CROP, batch_size=1, crops_per_case=2, seed=3)
    data = client_data.BratsClientData(folder, **kwargs)
    actual = _summary(data.create_tf_dataset_for_client(client_id))
    expected = _summary(
      pipeline.make_training_dataset(folder.shard_paths(client_id), **kwargs)
    )
    assert actual == expected
    assert actual[0] == 2 * len(CLIENT_SHAPES[client_id])

  def test_serializable_dataset_fn_in_a_graph(self, folder):
    data = client_data.BratsClientData(folder, crop_size=CROP, batch_size=1)
    dataset_fn = data.serializable_dataset_fn

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def count(client_id):
      return dataset_fn(client_id).reduce(0, lambda n, _: n + 1)

    assert [int(count(c)) for c in ('a', 'b', 'c')] == [3, 2, 1]
    with pytest.raises(
      tf.errors.InvalidArgumentError, match='client_id must be one of'
    ):
      count('nobody')

  def test_dataset_from_all_clients(self, folder):
    # TFF's base class flat-maps serializable_dataset_fn over the ids.
    data = client_data.BratsClientData(folder, crop_size=CROP, batch_size=1)
    batches = list(data.create_tf_dataset_from_all_clients(seed=0))
    assert len(batches) == 6  # 3 + 2 + 1 cases
    assert batches[0][0].shape == (1, *CROP, 4)

  def test_unknown_client(self, folder):
    data = client_data.BratsClientData(folder, crop_size=CROP, batch_size=1)
    with pytest.raises(ValueError, match='nobody'):
      data.create_tf_dataset_for_client('nobody')

  def test_bad_pipeline_options(self, folder):
    with pytest.raises(ValueError, match='batch_size must be a positive'):
      client_data.BratsClientData(folder, crop_size=CROP, batch_size=0)
    with pytest.raises(ValueError, match='tumour_crop_probability must'):
      client_data.BratsClientData(
        folder, crop_size=CROP, batch_size=1, tumour_crop_probability=2
      )

  def test_not_a_prepared_folder(self, tmp_path):
    with pytest.raises(errors.BratsDataError, match='manifest.json'):
      client_data.BratsClientData(str(tmp_path), crop_size=CROP, batch_size=1)


class TestTypeSignatures:
  def _expected_result(self, batch_size):
    image, regions = pipeline.training_element_spec(CROP, batch_size)
    return tff.SequenceType(
      tff.StructWithPythonType(
        [
          tff.TensorType(np.float32, image.shape),
          tff.TensorType(np.float32, regions.shape),
        ],
        tuple,
      )
    )

  def test_build_dataset_computation(self):
    computation = client_data.build_dataset_computation(
      crop_size=CROP, batch_size=2
    )
    expected = tff.FunctionType(
      tff.TensorType(np.str_, [None]), self._expected_result(2)
    )
    computation.type_signature.check_equivalent_to(expected)
    assert str(computation.type_signature) == (
      '(str[?] -> <float32[2,8,8,8,4],float32[2,8,8,8,3]>*)'
    )

  def test_client_data_dataset_computation(self, folder):
    data = client_data.BratsClientData(folder, crop_size=CROP, batch_size=3)
    expected = tff.FunctionType(
      tff.TensorType(np.str_), self._expected_result(3)
    )
    data.dataset_computation.type_signature.check_equivalent_to(expected)

  @pytest.mark.parametrize(
    'kwargs, message',
    [
      ({'batch_size': 1}, 'crop_size must be'),
      ({'crop_size': CROP}, 'batch_size must be a positive integer'),
      ({'crop_size': (8, 0, 8), 'batch_size': 1}, 'crop_size must be'),
      (
        {'crop_size': CROP, 'batch_size': 1, 'crops_per_case': 0},
        'crops_per_case must be a positive integer',
      ),
    ],
  )
  def test_bad_arguments(self, kwargs, message):
    with pytest.raises(ValueError, match=message):
      client_data.build_dataset_computation(**kwargs)


class TestExecution:
  def test_dataset_computation_matches_plain_tf(self, folder, runtime):
    del runtime  # installs the context
    kwargs = dict(crop_size=CROP, batch_size=2, crops_per_case=3, seed=11)
    computation = client_data.build_dataset_computation(**kwargs)
    clients = ['a', 'b', 'c']
    actual = _summaries_on_clients(computation)(
      [folder.shard_paths(c) for c in clients]
    )
    expected = [
      _summary(pipeline.make_training_dataset(folder.shard_paths(c), **kwargs))
      for c in clients
    ]
    _assert_summaries_equal(actual, expected)
    # 9, 6 and 3 crops in batches of 2, the remainder dropped.
    assert [a[0] for a in actual] == [4, 3, 1]

  def test_fresh_randomness_per_client_and_call(self, folder, runtime):
    del runtime  # installs the context
    computation = client_data.build_dataset_computation(
      crop_size=CROP, batch_size=1, crops_per_case=2
    )
    summaries = _summaries_on_clients(computation)
    paths = folder.shard_paths('a')
    first = summaries([paths, paths])
    second = summaries([paths, paths])
    image_sums = [s[2] for s in first + second]
    # Sums of randomly scaled/shifted crops: two equal by chance has odds
    # of order 2^-23 (float32 resolution).
    assert len(set(image_sums)) == 4, image_sums

  def test_fixed_seed_is_identical_on_every_client(self, folder, runtime):
    del runtime  # installs the context
    computation = client_data.build_dataset_computation(
      crop_size=CROP, batch_size=1, crops_per_case=2, seed=5
    )
    summaries = _summaries_on_clients(computation)
    paths = folder.shard_paths('a')
    first = summaries([paths, paths])
    assert first[0] == first[1]
    assert summaries([paths]) == [first[0]]

  def test_client_id_dataset_computation(self, folder, runtime):
    del runtime  # installs the context
    kwargs = dict(crop_size=CROP, batch_size=1, seed=2)
    data = client_data.BratsClientData(folder, **kwargs)
    actual = _summaries_on_clients(data.dataset_computation)(['c', 'a', 'b'])
    expected = [
      _summary(data.create_tf_dataset_for_client(c)) for c in ('c', 'a', 'b')
    ]
    _assert_summaries_equal(actual, expected)
    assert [a[0] for a in actual] == [1, 3, 2]

  @pytest.mark.parametrize('by', ['shard_paths', 'client_id'])
  def test_one_round_of_fed_avg(self, folder, runtime, by):
    del runtime  # installs the context
    kwargs = dict(crop_size=CROP, batch_size=2, crops_per_case=2)
    if by == 'shard_paths':
      dataset_computation = client_data.build_dataset_computation(**kwargs)
      client_values = [folder.shard_paths('a'), folder.shard_paths('b')]
    else:
      data = client_data.BratsClientData(folder, **kwargs)
      dataset_computation = data.dataset_computation
      client_values = ['a', 'b']
    process = tff.learning.algorithms.build_weighted_fed_avg(
      _tiny_model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1),
    )
    composed = tff.simulation.compose_dataset_computation_with_learning_process(
      dataset_computation, process
    )
    state = composed.initialize()
    before = composed.get_model_weights(state).trainable
    output = composed.next(state, client_values)
    after = composed.get_model_weights(output.state).trainable
    train = output.metrics['client_work']['train']
    # a: 3 cases x 2 crops = 3 batches of 2; b: 2 x 2 = 2 batches.
    assert train['num_batches'] == 5
    assert train['num_examples'] == 10
    assert np.isfinite(train['loss'])
    assert any(
      not np.allclose(b, a) for b, a in zip(before, after, strict=True)
    )


def _tiny_model_fn():
  keras_model = tf.keras.Sequential(
    [
      tf.keras.layers.InputLayer(input_shape=(*CROP, 4)),
      tf.keras.layers.Conv3D(4, 3, padding='same', activation='relu'),
      tf.keras.layers.Conv3D(3, 1, activation='sigmoid'),
    ]
  )
  image, regions = pipeline.training_element_spec(CROP, 1)
  input_spec = (
    tf.TensorSpec([None, *image.shape[1:]], tf.float32),
    tf.TensorSpec([None, *regions.shape[1:]], tf.float32),
  )
  return tff.learning.models.from_keras_model(
    keras_model,
    loss=tf.keras.losses.BinaryCrossentropy(),
    input_spec=input_spec,
  )
