"""Client datasets of a prepared folder as TFF objects, built on the clients.

The coordinator never sends voxels: each client receives a small string
value (its shard paths, or its client id) and a `tff.tensorflow.computation`
turns it into the client's batched `tf.data.Dataset` where the computation
runs (TFF's C++ worker, or a remote worker reading its own disk):

* `build_dataset_computation(**pipeline_kwargs)`: shard paths
  (`tf.string[?]`) -> batches. Joined to a learning process with
  `tff.simulation.compose_dataset_computation_with_learning_process`, the
  process's `next` takes `{tf.string[?]}@CLIENTS`, one path list per client.
* `BratsClientData(root, **pipeline_kwargs)`: a
  `tff.simulation.datasets.ClientData` over the folder's manifest; its
  `dataset_computation` maps a client id (`tf.string`) to batches, looking
  the client's shard paths up in constants built into the graph.

`pipeline_kwargs` are the keyword arguments of
`tff_brats.data.pipeline.make_training_dataset` (`crop_size`, `batch_size`,
`tumour_crop_probability`, `crops_per_case`, `augment`, `shuffle`, `seed`,
...). With the default `seed=None` every call of the computation, i.e. every
client in every round, draws fresh crops and augmentation; an integer seed
makes each client's data a fixed function of its paths (the same in every
round), for reproducible experiments only.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_brats.data import manifest as manifest_lib
from tff_brats.data import pipeline

# The dataset computation's parameter: one client's shard paths.
SHARD_PATHS_TYPE = tff.TensorType(np.str_, [None])


def build_dataset_computation(**pipeline_kwargs: Any) -> tff.Computation:
  """A TFF computation from a client's shard paths to its training batches.

  Args:
    **pipeline_kwargs: Keyword arguments of
      `pipeline.make_training_dataset` (`crop_size` and `batch_size` are
      required); checked here.

  Returns:
    A `tff.Computation` of type signature
    `(tf.string[?] -> <float32[B,d,h,w,4],float32[B,d,h,w,3]>*)`.
  """
  pipeline.training_element_spec(
    pipeline_kwargs.get('crop_size'), pipeline_kwargs.get('batch_size')
  )

  @tff.tensorflow.computation(SHARD_PATHS_TYPE)
  def dataset_computation(shard_paths):
    return pipeline.make_training_dataset(shard_paths, **pipeline_kwargs)

  return dataset_computation


class BratsClientData(tff.simulation.datasets.ClientData):
  """The clients of a prepared folder, each with its training pipeline."""

  def __init__(
    self, root: str | os.PathLike | manifest_lib.Manifest, **pipeline_kwargs
  ):
    """Loads the manifest and checks the pipeline options.

    Args:
      root: A prepared folder (see `manifest.load`) or a loaded `Manifest`.
      **pipeline_kwargs: Keyword arguments of
        `pipeline.make_training_dataset` (`crop_size` and `batch_size` are
        required).

    Raises:
      ValueError: A pipeline option is invalid or the manifest has no
        client.
      BratsDataError: The folder's manifest cannot be loaded.
    """
    if isinstance(root, manifest_lib.Manifest):
      self._manifest = root
    else:
      self._manifest = manifest_lib.load(os.fspath(root))
    if not self._manifest.client_ids:
      raise ValueError(
        f'The manifest must list at least one client. Found none in '
        f'{self._manifest.root!r}.'
      )
    self._pipeline_kwargs = dict(pipeline_kwargs)
    # Builds (does not run) one client's pipeline: checks every option.
    first = self._manifest.client_ids[0]
    self._element_spec = pipeline.make_training_dataset(
      self._manifest.shard_paths(first), **self._pipeline_kwargs
    ).element_spec

  @property
  def manifest(self) -> manifest_lib.Manifest:
    return self._manifest

  @property
  def client_ids(self) -> list[str]:
    return self._manifest.client_ids

  def shard_paths(self, client_id: str) -> list[str]:
    """A client's absolute shard paths (the input of
    `build_dataset_computation`)."""
    return self._manifest.shard_paths(client_id)

  @property
  def element_type_structure(self) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    return self._element_spec

  @property
  def serializable_dataset_fn(self):
    """Client id (str or `tf.string` scalar) -> the client's batches.

    Traceable by TF: the shard paths of every client are constants of the
    graph, looked up by id (an unknown id fails with InvalidArgumentError
    when the graph runs).
    """
    client_ids = list(self.client_ids)
    paths = [self._manifest.shard_paths(c) for c in client_ids]
    flat_paths = [p for client_paths in paths for p in client_paths]
    ends = np.cumsum([len(p) for p in paths]).tolist()
    pipeline_kwargs = self._pipeline_kwargs

    def dataset_fn(client_id):
      client_id = tf.convert_to_tensor(client_id, tf.string)
      matches = tf.where(tf.equal(tf.constant(client_ids), client_id))
      check = tf.debugging.Assert(
        tf.equal(tf.size(matches), 1),
        [f'client_id must be one of {client_ids}. Found', client_id],
      )
      with tf.control_dependencies([check]):
        index = matches[0, 0]
      bounds = tf.constant([0, *ends], tf.int64)
      shard_paths = tf.constant(flat_paths)[bounds[index] : bounds[index + 1]]
      return pipeline.make_training_dataset(shard_paths, **pipeline_kwargs)

    return dataset_fn
