"""Flags more than one binary uses, each defined once with one default.

Binaries import this module and read the flags they need; a flag that only
one binary has is defined in that binary. Every name is defined once in the
whole `experiments` package, so all binaries can be imported into one
process (their tests run `main` in-process with absl's `flagsaver`).

Flags that a binary needs but that have no sensible default are checked by
`require(...)` at the start of its `main` (not with absl's `required=True`,
which would make every binary that imports this module require them).

A name has one meaning: `--threshold` is the SVT's threshold τ and
`--batch_size` the crops per training step; inference has
`--probability_threshold` and `--window_batch_size`. Where binaries read
a flag differently when it is unset (`--layout`, `--crop_margin`,
`--window`), its help says what each does.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging

from experiments import flag_types
from tff_brats import mechanisms
from tff_brats.data import layouts
from tff_brats.data import pipeline
from tff_brats.inference import options as options_lib
from tff_brats.inference import sliding_window
from tff_brats.learning import client_training
from tff_brats.models import precision
from tff_brats.models import segresnet

FLAGS = flags.FLAGS

# ------------------------------------------------- inputs and outputs --

DATA_DIR = flags.DEFINE_string(
  'data_dir',
  None,
  'Input folder: a prepared folder (prepare_data output) for training and '
  'evaluate; a folder of BraTS case folders for prepare_data and predict.',
)
OUTPUT_DIR = flags.DEFINE_string(
  'output_dir',
  None,
  'The folder this binary writes: the data set (make_synthetic_brats), the '
  'prepared folder (prepare_data), the scores (evaluate), the SavedModel '
  '(export_model) or the segmentations (predict).',
)
OVERWRITE = flags.DEFINE_bool(
  'overwrite',
  False,
  'Replace existing outputs (or a folder made with other arguments).',
)
PROGRESS = flags.DEFINE_bool('progress', True, 'Show progress bars.')
SEED = flags.DEFINE_integer(
  'seed',
  0,
  "Seed of the binary's random choices: training's weights, client "
  'sampling, crops and augmentation (-1: fresh); the partitions of '
  'prepare_data; the cases of make_synthetic_brats.',
)
LAYOUT = flags.DEFINE_enum(
  'layout',
  None,
  sorted(layouts.LAYOUTS),
  'BraTS file and label layout of the cases: the one make_synthetic_brats '
  'writes (default brats2018) or the one prepare_data requires (default: '
  'detect per case).',
)
CROP_MARGIN = flags.DEFINE_integer(
  'crop_margin',
  None,
  'Voxels kept around the brain bounding box. prepare_data: default 0; '
  "predict: default the crop margin of the model's training data (0 if the "
  'model records none).',
)

# ------------------------------------------------------------ run folder --

ROOT_OUTPUT_DIR = flags.DEFINE_string(
  'root_output_dir', None, 'Folder of all runs; a run is <root>/<name>.'
)
EXPERIMENT_NAME = flags.DEFINE_string(
  'experiment_name',
  None,
  "This run's folder name under --root_output_dir (default: the binary's "
  'name, e.g. federated or centralized).',
)
RESUME = flags.DEFINE_bool('resume', False, 'Continue an interrupted run.')

# ---------------------------------------------------- model and training --

CROP_SIZE = flag_types.DEFINE_int_list(
  'crop_size', [64, 64, 64], 'Training crop D,H,W (multiples of 8).'
)
BATCH_SIZE = flags.DEFINE_integer('batch_size', 1, 'Crops per training step.')
CROPS_PER_CASE = flags.DEFINE_integer(
  'crops_per_case', 1, 'Crops taken from a case each time it is read.'
)
TUMOUR_CROP_PROBABILITY = flags.DEFINE_float(
  'tumour_crop_probability',
  pipeline.DEFAULT_TUMOUR_CROP_PROBABILITY,
  'Probability that a training crop is centred on tumour.',
)
INIT_FILTERS = flags.DEFINE_integer(
  'init_filters', 16, "SegResNet's initial filters (16: 4,702,227 values)."
)
BLOCKS_DOWN = flag_types.DEFINE_int_list(
  'blocks_down',
  list(segresnet.DEFAULT_BLOCKS_DOWN),
  "SegResNet's residual blocks per encoder level (its length is the number "
  'of resolution levels; e.g. 1,1 for a fast two-level model).',
)
BLOCKS_UP = flag_types.DEFINE_int_list(
  'blocks_up',
  list(segresnet.DEFAULT_BLOCKS_UP),
  "SegResNet's residual blocks per decoder stage (one fewer than "
  '--blocks_down).',
)
LOSS = flags.DEFINE_enum(
  'loss', 'dice_bce', list(client_training.LOSSES), 'Soft Dice (+ BCE).'
)
PRECISION = flags.DEFINE_enum(
  'precision',
  precision.FLOAT32,
  list(precision.PRECISIONS),
  'Compute precision (mixed_float16 for GPUs).',
)

# ------------------------------------------------------------ validation --

EVAL_WINDOW = flag_types.DEFINE_int_list(
  'eval_window', None, 'Validation sliding window (default: --crop_size).'
)
EVAL_OVERLAP = flags.DEFINE_float(
  'eval_overlap', 0.5, 'Validation window overlap in [0, 1).'
)
MAX_EVAL_CASES = flags.DEFINE_integer(
  'max_eval_cases', None, 'Validate on at most this many cases.'
)
NUM_OVERLAY_CASES = flags.DEFINE_integer(
  'num_overlay_cases', 2, 'Validation cases drawn in TensorBoard.'
)
INITIAL_MODEL = flags.DEFINE_string(
  'initial_model',
  None,
  'Start from this model instead of random weights (same architecture): a '
  'model folder (e.g. a pre-trained final_model/), a .keras file or an '
  'exported SavedModel folder.',
)

# ------------------------------------------ inference (predict, evaluate) --

MODEL = flags.DEFINE_string(
  'model',
  None,
  'A model folder written by training (best_model/, final_model/; model_io), '
  'an exported SavedModel (export_model) or a .keras file.',
)
WINDOW = flag_types.DEFINE_int_list(
  'window',
  None,
  "Sliding-window size D,H,W (or one size: a cube), a multiple of the model's "
  "size multiple (8 for SegResNet). Default: the model's recorded training "
  'crop (a model that records none gets the default window of the binary, '
  'with a warning).',
)
OVERLAP = flags.DEFINE_float(
  'overlap', sliding_window.DEFAULT_OVERLAP, 'Window overlap in [0, 1).'
)
BLENDING = flags.DEFINE_enum(
  'blending',
  'gaussian',
  list(sliding_window.BLENDING_MODES),
  'How overlapping windows are blended.',
)
SIGMA_SCALE = flags.DEFINE_float(
  'sigma_scale',
  sliding_window.DEFAULT_SIGMA_SCALE,
  'Gaussian blending sigma as a fraction of the window size.',
)
PROBABILITY_THRESHOLD = flags.DEFINE_float(
  'probability_threshold',
  sliding_window.DEFAULT_THRESHOLD,
  'Region probability at or above which a voxel is in the region.',
)
WINDOW_BATCH_SIZE = flags.DEFINE_integer(
  'window_batch_size', 1, 'Windows per network call.'
)

# ----------------------------------------------------- rounds and budget --

TOTAL_ROUNDS = flags.DEFINE_integer('total_rounds', 20, 'Rounds R.')
CLIENTS_PER_ROUND = flags.DEFINE_integer(
  'clients_per_round', None, 'Institutions per round (default: all).'
)
TARGET_EPSILON = flags.DEFINE_float(
  'target_epsilon',
  None,
  'Total ε per institution at --delta: training stops before a round that '
  'would pass it; compute_privacy solves --solve_for to meet it.',
)
DELTA = flags.DEFINE_float('delta', 1e-5, 'δ of every reported ε.')

# ------------------------------------------------------------- privacy ----
# Each mechanism's parameters are flags named like its dataclass fields
# (see `privacy_mechanism`).

PRIVACY_MECHANISM = flags.DEFINE_enum(
  'privacy_mechanism',
  'sparse_vector',
  list(mechanisms.NAMES),
  'What each round sends: none, selective_sharing, sparse_vector (client-'
  'side), gaussian (TFF DP-FedAvg; ε per institution) or dp_sgd '
  '(patient-level DP-SGD at every client; ε per patient).',
)
SHARED_FRACTION = flags.DEFINE_float(
  'shared_fraction',
  0.1,
  'q: fraction of values a client releases (selective_sharing, sparse_vector).',
)
CLIP_BOUND = flags.DEFINE_float(
  'clip_bound',
  1e-3,
  'γ: every value of the (per-step) update is clipped to [-γ, γ] '
  '(selective_sharing, sparse_vector).',
)
SELECTION_EPSILON = flags.DEFINE_float(
  'selection_epsilon', None, 'sparse_vector: selection ε per round.'
)
RELEASE_EPSILON = flags.DEFINE_float(
  'release_epsilon', None, 'sparse_vector: release ε3 per round.'
)
THRESHOLD = flags.DEFINE_float(
  'threshold', 0.0, 'sparse_vector: threshold τ on |value| + noise.'
)
NORMALIZE_BY_STEPS = flags.DEFINE_bool(
  'normalize_by_steps',
  True,
  'Clip the per-step update ΔW/n (selective_sharing, sparse_vector).',
)
NOISE_MULTIPLIER = flags.DEFINE_float(
  'noise_multiplier',
  None,
  'gaussian, dp_sgd: noise stddev / --l2_norm_clip.',
)
L2_NORM_CLIP = flags.DEFINE_float(
  'l2_norm_clip',
  0.1,
  "L2 bound C: of one client's whole update (gaussian), of one case's "
  'gradient in a step (dp_sgd).',
)
SAMPLING_PROBABILITY = flags.DEFINE_float(
  'sampling_probability',
  0.25,
  "dp_sgd: q, each case's chance to be in a step's (Poisson) lot.",
)
LOCAL_STEPS = flags.DEFINE_integer(
  'local_steps', 8, 'dp_sgd: T, DP-SGD steps per client and round.'
)

# `--privacy_mechanism` and every mechanism's parameter flags.
PRIVACY_FLAGS = (
  'privacy_mechanism',
  *dict.fromkeys(
    name for cls in mechanisms.MECHANISMS for name in cls.parameter_names()
  ),
)


# Flag groups several binaries read (for `declare_key_flags`).
RUN_FLAGS = (
  'data_dir',
  'root_output_dir',
  'experiment_name',
  'resume',
  'progress',
  'seed',
)
# The fields both trainers' configs share, named as the flags.
TRAINER_FLAGS = (
  'crop_size',
  'batch_size',
  'crops_per_case',
  'tumour_crop_probability',
  'init_filters',
  'blocks_down',
  'blocks_up',
  'loss',
  'precision',
  'eval_window',
  'eval_overlap',
  'max_eval_cases',
  'num_overlay_cases',
  'initial_model',
)
INFERENCE_FLAGS = (
  'model',
  'data_dir',
  'output_dir',
  'window',
  'overlap',
  'blending',
  'sigma_scale',
  'probability_threshold',
  'window_batch_size',
  'overwrite',
  'progress',
)


def declare_key_flags(*names: str) -> None:
  """Lists these shared flags in the calling binary's --help.

  absl's `declare_key_flag` registers the flag for the module that calls
  it, which here would be this one; so the caller's module is named, as
  absl names it (the main module by its path, `sys.argv[0]`).
  """
  module_name = sys._getframe(1).f_globals['__name__']
  if module_name == '__main__':
    module_name = sys.argv[0]
  for name in dict.fromkeys(names):
    FLAGS.register_key_flag_for_module(module_name, FLAGS[name])


def trainer_kwargs() -> dict[str, Any]:
  """Both trainers' shared config fields (`TRAINER_FLAGS`, data_dir, seed)."""
  eval_window = EVAL_WINDOW.value
  return dict(
    data_dir=os.path.abspath(DATA_DIR.value),
    crop_size=tuple(CROP_SIZE.value),
    batch_size=BATCH_SIZE.value,
    crops_per_case=CROPS_PER_CASE.value,
    tumour_crop_probability=TUMOUR_CROP_PROBABILITY.value,
    init_filters=INIT_FILTERS.value,
    blocks_down=tuple(BLOCKS_DOWN.value),
    blocks_up=tuple(BLOCKS_UP.value),
    loss=LOSS.value,
    precision=PRECISION.value,
    eval_window=None if eval_window is None else tuple(eval_window),
    eval_overlap=EVAL_OVERLAP.value,
    max_eval_cases=MAX_EVAL_CASES.value,
    num_overlay_cases=NUM_OVERLAY_CASES.value,
    initial_model=None
    if INITIAL_MODEL.value is None
    else os.path.abspath(INITIAL_MODEL.value),
    seed=seed(),
  )


def require(*names: str) -> None:
  """Raises `app.UsageError` naming every flag in `names` that is unset."""
  missing = [name for name in names if FLAGS[name].value is None]
  if missing:
    raise app.UsageError(
      'Flag(s) must be given: ' + ', '.join(f'--{name}' for name in missing)
    )


def seed() -> int | None:
  """`--seed`, or None for fresh randomness (-1)."""
  return None if SEED.value < 0 else SEED.value


def privacy_parameters() -> dict[str, Any]:
  """The flag value of every parameter of `--privacy_mechanism`.

  An explicitly given flag that is a parameter of another mechanism only
  is reported with a warning (it has no effect).
  """
  cls = mechanisms.get(PRIVACY_MECHANISM.value)
  names = cls.parameter_names()
  ignored = sorted(
    name
    for other in mechanisms.MECHANISMS
    for name in other.parameter_names()
    if name not in names and FLAGS[name].present
  )
  for name in dict.fromkeys(ignored):
    logging.warning(
      '--%s has no effect with --privacy_mechanism=%s (its parameters: %s).',
      name,
      cls.name,
      ', '.join(names) or 'none',
    )
  return {name: FLAGS[name].value for name in names}


def privacy_mechanism() -> mechanisms.PrivacyMechanism:
  """The mechanism of `--privacy_mechanism` with its parameter flags.

  Raises:
    ValueError: A parameter is missing or invalid (the message names it).
  """
  cls = mechanisms.get(PRIVACY_MECHANISM.value)
  return cls.from_parameters(privacy_parameters())


def window() -> int | tuple[int, ...] | None:
  """`--window` as `InferenceOptions` takes it: None, one size or D,H,W."""
  value = WINDOW.value
  if value is None:
    return None
  return value[0] if len(value) == 1 else tuple(value)


def inference_options(**kwargs: Any) -> options_lib.InferenceOptions:
  """The `InferenceOptions` of the sliding-window flags.

  Args:
    **kwargs: Further fields (`output_layout`, `crop_margin`) of the binary.

  Raises:
    ValueError: A value is invalid (the message names the option).
  """
  return options_lib.InferenceOptions(
    window=window(),
    overlap=OVERLAP.value,
    blending=BLENDING.value,
    sigma_scale=SIGMA_SCALE.value,
    threshold=PROBABILITY_THRESHOLD.value,
    batch_size=WINDOW_BATCH_SIZE.value,
    **kwargs,
  )
