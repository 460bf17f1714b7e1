"""SegResNet: the encoder–decoder of Myronenko 2018 without the VAE branch.

Myronenko, "3D MRI brain tumor segmentation using autoencoder
regularization" (BrainLes 2018, arXiv:1810.11654), as MONAI's `SegResNet`
(the network of the reference federated BraTS recipes), channels-last:

    input [B, D, H, W, 4]
      └ 3³ conv (init_filters) → spatial dropout           ┐
      └ level 0: residual blocks ×blocks_down[0]           │ encode
      └ level i: 3³ conv stride 2 (×2 filters) → blocks    ┘
      └ stage j: 1³ conv (½ filters) → trilinear ×2        ┐
                 → + skip of the same level → blocks       ┘ decode
      └ GroupNorm → ReLU → 1³ conv (with bias) → sigmoid     head
    output [B, D, H, W, 3] float32 probabilities (TC, WT, ET)

A residual block is pre-activation: GroupNorm → ReLU → 3³ conv, twice, plus
the identity. Every convolution is bias-free except the last one. With the
defaults the network has 4,702,227 parameters, MONAI's count.

Layers → blocks → net: `GroupNorm` (with the ReLU fused) and
`TrilinearUpsampling3D` (`tff_brats.models.layers`); `ResidualBlock`,
`EncoderLevel`, `DecoderStage` and `OutputHead` (blocks, here); `SegResNet`
(net, here). Every class is Keras-serialisable under the package name
'tff_brats'.

Precision: layers take the global Keras policy at construction (see
`tff_brats.models.precision`); group-norm statistics are always computed in
float32 and the final sigmoid runs in float32, so the model returns float32
probabilities under 'mixed_float16' and 'mixed_bfloat16' as well.
"""

from __future__ import annotations

from collections.abc import Sequence
import inspect
import math
from typing import Any

import tensorflow as tf

from tff_brats.models import layers
from tff_brats.utils import checks

_PACKAGE = 'tff_brats'
# The version of `SegResNet.get_config`'s layout, saved with every config
# (model folders, `.keras` files, export metadata). `from_config` refuses a
# newer one with a message to upgrade, instead of a confusing failure.
SERIALIZATION_VERSION = 1
SERIALIZATION_VERSION_KEY = 'tff_brats_serialization_version'
# MONAI's SegResNet: four resolution levels (1, 2, 2, 4 residual blocks down,
# one per decoder stage up).
DEFAULT_BLOCKS_DOWN = (1, 2, 2, 4)
DEFAULT_BLOCKS_UP = (1, 1, 1)

# PyTorch's default convolution initialisation (kaiming_uniform, a=√5), i.e.
# U(±1/√fan_in), which MONAI's SegResNet trains from.
_KERNEL_INITIALIZER = {
  'class_name': 'VarianceScaling',
  'config': {'scale': 1.0 / 3.0, 'mode': 'fan_in', 'distribution': 'uniform'},
}


# ---------------------------------------------------------------- blocks ----


@tf.keras.saving.register_keras_serializable(package=_PACKAGE)
class ResidualBlock(tf.keras.layers.Layer):
  """Pre-activation residual block: (GroupNorm → ReLU → 3³ conv) ×2 + x.

  Keeps the channel count and the spatial size (Myronenko 2018, Fig. 1;
  MONAI's `ResBlock`).
  """

  def __init__(
    self,
    filters: int,
    norm_groups: int = 8,
    norm_epsilon: float = 1e-5,
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    checks.check_positive_int('filters', filters)
    self.filters = int(filters)
    self.norm_groups = norm_groups
    self.norm_epsilon = norm_epsilon
    self.norm1 = _norm_relu(norm_groups, norm_epsilon, name='norm1')
    self.conv1 = _conv(filters, 3, name='conv1')
    self.norm2 = _norm_relu(norm_groups, norm_epsilon, name='norm2')
    self.conv2 = _conv(filters, 3, name='conv2')

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    x = self.conv1(self.norm1(inputs))
    x = self.conv2(self.norm2(x))
    return x + inputs

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      'filters': self.filters,
      'norm_groups': self.norm_groups,
      'norm_epsilon': self.norm_epsilon,
    }


@tf.keras.saving.register_keras_serializable(package=_PACKAGE)
class EncoderLevel(tf.keras.layers.Layer):
  """One encoder level: an optional strided 3³ conv, then residual blocks.

  With `downsample`, a bias-free 3³ convolution with stride 2 halves every
  spatial size and sets the channel count to `filters` (MONAI: twice the
  previous level's); the residual blocks follow.
  """

  def __init__(
    self,
    filters: int,
    num_blocks: int,
    downsample: bool,
    norm_groups: int = 8,
    norm_epsilon: float = 1e-5,
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    checks.check_non_negative_int('num_blocks', num_blocks)
    self.filters = int(filters)
    self.num_blocks = int(num_blocks)
    self.downsample = bool(downsample)
    self.norm_groups = norm_groups
    self.norm_epsilon = norm_epsilon
    self.down_conv = (
      _conv(filters, 3, strides=2, name='down_conv') if downsample else None
    )
    self.blocks = [
      ResidualBlock(filters, norm_groups, norm_epsilon, name=f'block{i}')
      for i in range(num_blocks)
    ]

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    x = inputs if self.down_conv is None else self.down_conv(inputs)
    for block in self.blocks:
      x = block(x)
    return x

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      'filters': self.filters,
      'num_blocks': self.num_blocks,
      'downsample': self.downsample,
      'norm_groups': self.norm_groups,
      'norm_epsilon': self.norm_epsilon,
    }


@tf.keras.saving.register_keras_serializable(package=_PACKAGE)
class DecoderStage(tf.keras.layers.Layer):
  """One decoder stage: 1³ conv → trilinear ×2 → + skip → residual blocks.

  The bias-free 1³ convolution sets the channel count to `filters` (half the
  input's) before upsampling, so the additive skip from the encoder level of
  the same resolution matches (MONAI's `up_samples` + `up_layers`).
  """

  def __init__(
    self,
    filters: int,
    num_blocks: int,
    norm_groups: int = 8,
    norm_epsilon: float = 1e-5,
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    checks.check_non_negative_int('num_blocks', num_blocks)
    self.filters = int(filters)
    self.num_blocks = int(num_blocks)
    self.norm_groups = norm_groups
    self.norm_epsilon = norm_epsilon
    self.reduce_conv = _conv(filters, 1, name='reduce_conv')
    self.upsample = layers.TrilinearUpsampling3D(name='upsample')
    self.blocks = [
      ResidualBlock(filters, norm_groups, norm_epsilon, name=f'block{i}')
      for i in range(num_blocks)
    ]

  def call(self, inputs: tf.Tensor, skip: tf.Tensor) -> tf.Tensor:
    x = self.upsample(self.reduce_conv(inputs)) + skip
    for block in self.blocks:
      x = block(x)
    return x

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      'filters': self.filters,
      'num_blocks': self.num_blocks,
      'norm_groups': self.norm_groups,
      'norm_epsilon': self.norm_epsilon,
    }


@tf.keras.saving.register_keras_serializable(package=_PACKAGE)
class OutputHead(tf.keras.layers.Layer):
  """GroupNorm → ReLU → 1³ conv with bias → sigmoid (MONAI's `conv_final`).

  The sigmoid always runs in float32 (the logits are cast first), so the
  probabilities are float32 under any mixed-precision policy.
  """

  def __init__(
    self,
    out_channels: int,
    norm_groups: int = 8,
    norm_epsilon: float = 1e-5,
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    checks.check_positive_int('out_channels', out_channels)
    self.out_channels = int(out_channels)
    self.norm_groups = norm_groups
    self.norm_epsilon = norm_epsilon
    self.norm = _norm_relu(norm_groups, norm_epsilon, name='norm')
    self.conv = _conv(out_channels, 1, use_bias=True, name='conv')
    self.sigmoid = tf.keras.layers.Activation(
      'sigmoid', dtype='float32', name='sigmoid'
    )

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    return self.sigmoid(self.conv(self.norm(inputs)))

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      'out_channels': self.out_channels,
      'norm_groups': self.norm_groups,
      'norm_epsilon': self.norm_epsilon,
    }


# ------------------------------------------------------------------- net ----


@tf.keras.saving.register_keras_serializable(package=_PACKAGE)
class SegResNet(tf.keras.Model):
  """SegResNet (Myronenko 2018 without the VAE branch; MONAI's `SegResNet`).

  Input `[B, D, H, W, in_channels]` (channels-last) with every spatial size
  a multiple of `2 ** (len(blocks_down) - 1)` (8 by default); output
  `[B, D, H, W, out_channels]` float32 sigmoid probabilities.

  Encoder level `i` has `init_filters * 2**i` channels and
  `blocks_down[i]` residual blocks; every level after the first starts with
  a stride-2 3³ convolution. Decoder stage `j` has
  `init_filters * 2**(L - 2 - j)` channels (`L = len(blocks_down)`) and
  `blocks_up[j]` residual blocks, so `len(blocks_up)` must be `L - 1`.
  Dropout (`dropout_rate`, channel-wise like MONAI's `Dropout3d`; see
  `layers.ChannelDropout`) is applied to the first features in training
  only. Its random key is a non-trainable variable of the model, so the
  trainable parameters are counted with `num_parameters`, not
  `count_params()` (which adds the two key entries).

  Example:

    model = SegResNet()            # 4 → 3 channels, 16 filters
    probs = model(images)          # [B, D, H, W, 3], float32
    features, skips = model.encode(images)
  """

  def __init__(
    self,
    in_channels: int = 4,
    out_channels: int = 3,
    init_filters: int = 16,
    blocks_down: Sequence[int] = DEFAULT_BLOCKS_DOWN,
    blocks_up: Sequence[int] = DEFAULT_BLOCKS_UP,
    norm_groups: int = 8,
    norm_epsilon: float = 1e-5,
    dropout_rate: float = 0.2,
    **kwargs: Any,
  ):
    """Builds the layers (weights are created on the first call).

    Args:
      in_channels: Input channels (MRI sequences).
      out_channels: Output channels (regions), each with its own sigmoid.
      init_filters: Channels of the first level; level `i` has
        `init_filters * 2**i`.
      blocks_down: Residual blocks per encoder level (non-empty; entries
        >= 0). Its length is the number of resolution levels.
      blocks_up: Residual blocks per decoder stage, from coarse to fine;
        `len(blocks_up) == len(blocks_down) - 1`.
      norm_groups: GroupNorm groups; must divide `init_filters`.
      norm_epsilon: GroupNorm epsilon (> 0).
      dropout_rate: Channel-wise dropout on the first features, in [0, 1).
      **kwargs: `tf.keras.Model` keyword arguments (`name`, ...).

    Raises:
      ValueError: An argument is out of range, naming it and its value.
    """
    super().__init__(**kwargs)
    checks.check_positive_int('in_channels', in_channels)
    checks.check_positive_int('out_channels', out_channels)
    checks.check_positive_int('init_filters', init_filters)
    blocks_down, blocks_up = check_blocks(blocks_down, blocks_up)
    checks.check_positive_int('norm_groups', norm_groups)
    if init_filters % norm_groups:
      raise ValueError(
        f'norm_groups must divide init_filters={init_filters}. '
        f'Found {norm_groups!r}.'
      )
    checks.check_positive_number('norm_epsilon', norm_epsilon)
    if not checks.is_number(dropout_rate) or not 0 <= dropout_rate < 1:
      raise ValueError(
        f'dropout_rate must be in [0, 1). Found {dropout_rate!r}.'
      )
    self.in_channels = int(in_channels)
    self.out_channels = int(out_channels)
    self.init_filters = int(init_filters)
    self.blocks_down = blocks_down
    self.blocks_up = blocks_up
    self.norm_groups = int(norm_groups)
    self.norm_epsilon = float(norm_epsilon)
    self.dropout_rate = float(dropout_rate)

    norm = dict(norm_groups=self.norm_groups, norm_epsilon=self.norm_epsilon)
    self.init_conv = _conv(init_filters, 3, name='init_conv')
    self.dropout = layers.ChannelDropout(self.dropout_rate, name='dropout')
    self.down_levels = [
      EncoderLevel(
        init_filters * 2**i, n, downsample=i > 0, name=f'down{i}', **norm
      )
      for i, n in enumerate(blocks_down)
    ]
    top = len(blocks_down) - 1
    self.up_stages = [
      DecoderStage(init_filters * 2 ** (top - 1 - j), n, name=f'up{j}', **norm)
      for j, n in enumerate(blocks_up)
    ]
    self.head = OutputHead(out_channels, name='head', **norm)

  @classmethod
  def architecture_defaults(cls) -> dict[str, Any]:
    """The constructor's default arguments, by name."""
    signature = inspect.signature(cls.__init__)
    return {
      name: p.default
      for name, p in signature.parameters.items()
      if p.default is not inspect.Parameter.empty
    }

  @property
  def num_parameters(self) -> int:
    """Number of trainable parameters (MONAI's parameter count)."""
    return sum(int(math.prod(v.shape)) for v in self.trainable_weights)

  @property
  def size_multiple(self) -> int:
    """Every spatial size of the input must be a multiple of this."""
    return 2 ** (len(self.blocks_down) - 1)

  def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
    """Segments `inputs` `[B, D, H, W, in_channels]` into probabilities."""
    return self._forward(inputs, training)

  # Not converted by AutoGraph: the network has no control flow on tensors
  # (its loops and branches are over its Python configuration), and
  # converting every layer's helpers again on each trace cost seconds per
  # trace (a training step, a TFF client computation, a SavedModel export).
  # `call` keeps its own signature, which Keras reads.
  @tf.autograph.experimental.do_not_convert
  def _forward(self, inputs: tf.Tensor, training: bool | None) -> tf.Tensor:
    features, skips = self.encode(inputs, training=training)
    return self.head(self.decode(features, skips))

  def encode(
    self, inputs: tf.Tensor, training: bool | None = None
  ) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """Runs the encoder.

    Args:
      inputs: `[B, D, H, W, in_channels]`.
      training: Whether dropout is active.

    Returns:
      `(features, skips)`: the coarsest level's output and the outputs of
      the finer levels, coarse to fine (the decoder's additive skips).
    """
    self._check_input_shape(inputs.shape)
    x = self.dropout(self.init_conv(inputs), training=training)
    outputs = []
    for level in self.down_levels:
      x = level(x)
      outputs.append(x)
    return outputs[-1], outputs[-2::-1]

  def decode(
    self, features: tf.Tensor, skips: Sequence[tf.Tensor]
  ) -> tf.Tensor:
    """Runs the decoder: per stage upsample, add the skip, residual blocks.

    Returns:
      The full-resolution features `[B, D, H, W, init_filters]` (before the
      output head).
    """
    x = features
    for stage, skip in zip(self.up_stages, skips, strict=True):
      x = stage(x, skip)
    return x

  def get_config(self) -> dict[str, Any]:
    """The constructor arguments (and `name`); `from_config` inverts it."""
    return {
      'name': self.name,
      'in_channels': self.in_channels,
      'out_channels': self.out_channels,
      'init_filters': self.init_filters,
      'blocks_down': list(self.blocks_down),
      'blocks_up': list(self.blocks_up),
      'norm_groups': self.norm_groups,
      'norm_epsilon': self.norm_epsilon,
      'dropout_rate': self.dropout_rate,
      SERIALIZATION_VERSION_KEY: SERIALIZATION_VERSION,
    }

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> SegResNet:
    """Rebuilds a model from `get_config` (configs without a version too).

    Raises:
      ValueError: The config comes from a newer tff_brats.
    """
    config = dict(config)
    version = config.pop(SERIALIZATION_VERSION_KEY, 1)
    if not isinstance(version, int) or version > SERIALIZATION_VERSION:
      import tff_brats

      raise ValueError(
        f'This SegResNet was saved by a newer tff_brats (serialization '
        f'version {version!r}); the installed tff_brats '
        f'{tff_brats.__version__} reads versions up to '
        f'{SERIALIZATION_VERSION}. Upgrade tff_brats to load it.'
      )
    return cls(**config)

  def _check_input_shape(self, shape: tf.TensorShape) -> None:
    shape = tf.TensorShape(shape)
    if shape.rank is not None and shape.rank != 5:
      raise ValueError(
        'The input must be [batch, depth, height, width, channels]. '
        f'Found shape {shape}.'
      )
    if shape.rank is None:
      return
    if shape[-1] is not None and shape[-1] != self.in_channels:
      raise ValueError(
        f'The input must have in_channels={self.in_channels} channels. '
        f'Found shape {shape}.'
      )
    multiple = self.size_multiple
    for size in shape[1:4]:
      if size is not None and size % multiple:
        raise ValueError(
          f'Every spatial size must be a multiple of {multiple} '
          f'(2**(len(blocks_down) - 1)). Found shape {shape}.'
        )


# --------------------------------------------------------------- helpers ----


def _conv(
  filters: int,
  kernel_size: int,
  *,
  strides: int = 1,
  use_bias: bool = False,
  name: str,
) -> tf.keras.layers.Conv3D:
  """A channels-last 3D convolution with 'same' padding."""
  return tf.keras.layers.Conv3D(
    filters,
    kernel_size,
    strides=strides,
    padding='same',
    use_bias=use_bias,
    kernel_initializer=tf.keras.initializers.get(_KERNEL_INITIALIZER),
    name=name,
  )


def _norm_relu(groups: int, epsilon: float, *, name: str) -> layers.GroupNorm:
  """GroupNorm followed by ReLU, fused (see `layers.GroupNorm`)."""
  return layers.GroupNorm(groups, epsilon, activation='relu', name=name)


def part_names(num_levels: int) -> tuple[str, ...]:
  """The names of a SegResNet's parts with weights, input to output.

  'init_conv', 'down0' … 'down{L-1}' (encoder levels), 'up0' … 'up{L-2}'
  (decoder stages, coarse to fine) and 'head', for L = `num_levels` =
  `len(blocks_down)`: the units `freeze_all_but` works on.
  """
  checks.check_positive_int('num_levels', num_levels)
  return (
    'init_conv',
    *(f'down{i}' for i in range(num_levels)),
    *(f'up{j}' for j in range(num_levels - 1)),
    'head',
  )


def check_part_names(names: str | Sequence[str], num_levels: int) -> tuple:
  """`names` (one name or several) as a tuple of `part_names(num_levels)`.

  Raises:
    ValueError: `names` is empty or names something that is not a part of a
      SegResNet with `num_levels` levels (the message lists the parts).
  """
  valid = part_names(num_levels)
  names = (names,) if isinstance(names, str) else tuple(names)
  unknown = [n for n in names if n not in valid]
  if not names or unknown:
    raise ValueError(
      f'trainable_layers must name parts of the SegResNet ({", ".join(valid)}). '
      f'Found {list(names)!r}.'
    )
  return names


def freeze_all_but(model: SegResNet, names: Sequence[str]) -> None:
  """Makes only the parts `names` (`part_names`) trainable.

  The other parts' weights become non-trainable: an optimiser, FedAvg's
  update and every privacy mechanism then see only the named parts.

  Raises:
    ValueError: A name is not a part of this model (naming the valid ones),
      or `names` is empty (`check_part_names`).
  """
  valid = part_names(len(model.blocks_down))
  names = check_part_names(names, len(model.blocks_down))
  for layer in model.layers:
    if layer.name in valid:
      layer.trainable = layer.name in names


def check_blocks(
  blocks_down: Any, blocks_up: Any
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The architecture's block counts as tuples, or ValueError naming them.

  `blocks_down` must be a non-empty sequence of non-negative ints (one per
  resolution level) and `blocks_up` one entry shorter.
  """
  blocks_down = _block_counts('blocks_down', blocks_down)
  blocks_up = _block_counts('blocks_up', blocks_up)
  if not blocks_down:
    raise ValueError(
      'blocks_down must be a non-empty sequence of non-negative integers. '
      f'Found {blocks_down!r}.'
    )
  if len(blocks_up) != len(blocks_down) - 1:
    raise ValueError(
      'blocks_up must have one entry fewer than blocks_down '
      f'({len(blocks_down) - 1}). Found {blocks_up!r}.'
    )
  return blocks_down, blocks_up


def _block_counts(name: str, value: Any) -> tuple[int, ...]:
  """`value` as a tuple of non-negative ints, or ValueError naming it."""
  message = (
    f'{name} must be a sequence of non-negative integers. Found {value!r}.'
  )
  if isinstance(value, str | bytes) or not isinstance(value, Sequence):
    raise ValueError(message)
  if not all(checks.is_int(v) and v >= 0 for v in value):
    raise ValueError(message)
  return tuple(int(v) for v in value)
