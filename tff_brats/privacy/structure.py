"""Flattens a model update (a nest of tensors) into one vector and back.

The privacy mechanisms treat a client's update ΔW as one vector of N values
(Li et al. 2019, "Privacy-preserving Federated Brain Tumour Segmentation":
the shared fraction and the top values are taken over all trainable tensors
together). `flatten` concatenates the leaves of any `tf.nest` structure in
`tf.nest.flatten` order, each leaf in row-major order, as float32;
`unflatten` restores the structure, shapes and dtypes.

Shapes must be static (fully defined), so N is a Python int: TFF types every
tensor with a static shape, and the mechanisms derive their noise scales
from N when the graph is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class FlatSpec:
  """How to turn a flat vector back into the structure it came from.

  Attributes:
    structure: The original nest with every leaf replaced by its
      `tf.TensorSpec` (shape and dtype).
    sizes: Number of values of each leaf, in `tf.nest.flatten` order.
    num_values: N, the length of the flat vector (the sum of `sizes`).
  """

  structure: Any
  sizes: tuple[int, ...]
  num_values: int


def flatten(structure: Any) -> tuple[tf.Tensor, FlatSpec]:
  """Concatenates every leaf of `structure` into one float32 vector.

  Args:
    structure: A nest (list, tuple, dict, ...) of tensors, variables or
      arrays with static shapes and floating-point dtypes, e.g. the deltas of
      `model.trainable_variables`. A single tensor is a nest of one leaf.

  Returns:
    `(vector, spec)`: the float32 `[N]` concatenation and the `FlatSpec` that
    `unflatten` needs.

  Raises:
    ValueError: A leaf has a dynamic shape or a non-floating dtype.
  """
  leaves = tf.nest.flatten(structure)
  tensors = [tf.convert_to_tensor(leaf) for leaf in leaves]
  specs = []
  for i, tensor in enumerate(tensors):
    if not tensor.shape.is_fully_defined():
      raise ValueError(
        'structure must have static shapes. Found shape '
        f'{tensor.shape} at leaf {i}.'
      )
    if not tensor.dtype.is_floating:
      raise ValueError(
        'structure must hold floating-point tensors. Found dtype '
        f'{tensor.dtype.name} at leaf {i}.'
      )
    specs.append(tf.TensorSpec(tensor.shape, tensor.dtype))
  sizes = tuple(spec.shape.num_elements() for spec in specs)
  spec = FlatSpec(
    structure=tf.nest.pack_sequence_as(structure, specs),
    sizes=sizes,
    num_values=sum(sizes),
  )
  parts = [tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors]
  if not parts:
    return tf.zeros([0], tf.float32), spec
  if len(parts) == 1:
    return parts[0], spec
  return tf.concat(parts, axis=0), spec


def unflatten(vector: tf.Tensor, spec: FlatSpec) -> Any:
  """Splits a flat vector back into the structure described by `spec`.

  Args:
    vector: A `[N]` tensor, N = `spec.num_values` (any real dtype; each leaf
      is cast back to its original dtype).
    spec: The `FlatSpec` returned by `flatten`.

  Returns:
    A nest like the one given to `flatten`, with the original shapes and
    dtypes.

  Raises:
    ValueError: `vector` does not have shape `[spec.num_values]`.
  """
  vector = tf.convert_to_tensor(vector)
  if vector.shape.rank != 1 or vector.shape[0] not in (None, spec.num_values):
    raise ValueError(
      f'vector must have shape [{spec.num_values}]. Found {vector.shape}.'
    )
  leaf_specs = tf.nest.flatten(spec.structure)
  if len(leaf_specs) == 1:
    parts = [vector]
  elif leaf_specs:
    parts = tf.split(vector, list(spec.sizes))
  else:
    parts = []
  leaves = [
    tf.cast(tf.reshape(part, leaf.shape), leaf.dtype)
    for part, leaf in zip(parts, leaf_specs, strict=True)
  ]
  return tf.nest.pack_sequence_as(spec.structure, leaves)
