"""Federated training with privacy across the institutions of a prepared folder.

Example (the demo's synthetic data, 4 institutions, SVT):

  python -m experiments.train_federated \
    --data_dir=demo_output/prepared --root_output_dir=/tmp/runs \
    --experiment_name=svt --total_rounds=20 --crop_size=48,48,48 \
    --privacy_mechanism=sparse_vector --shared_fraction=0.1 \
    --clip_bound=1e-3 --selection_epsilon=1e5 --release_epsilon=1e5 \
    --threshold=5e-4

Outputs go to `<root_output_dir>/<experiment_name>/` (see
`tff_brats.training.federated`); `--resume` continues an interrupted run,
`--target_epsilon` stops before a round that would take any institution
past a budget.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os

from absl import app
from absl import flags

from experiments import flag_types
from tff_brats.aggregators import factories
from tff_brats.learning import client_training
from tff_brats.learning import fed_avg
from tff_brats.training import federated

_DATA_DIR = flags.DEFINE_string(
  'data_dir', None, 'Output folder of prepare_data.', required=True
)
_ROOT_OUTPUT_DIR = flags.DEFINE_string(
  'root_output_dir', None, 'Folder of all runs.', required=True
)
_EXPERIMENT_NAME = flags.DEFINE_string(
  'experiment_name', 'federated', 'This run: <root_output_dir>/<name>.'
)
# Training.
_TOTAL_ROUNDS = flags.DEFINE_integer('total_rounds', 20, 'Rounds to run.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer(
  'clients_per_round', None, 'Institutions per round (default: all).'
)
_CLIENT_EPOCHS_PER_ROUND = flags.DEFINE_integer(
  'client_epochs_per_round', 1, 'Local passes over a client’s cases.'
)
_CLIENT_LEARNING_RATE = flags.DEFINE_float(
  'client_learning_rate', 1e-3, 'Client Adam step size.'
)
_SERVER_OPTIMIZER = flags.DEFINE_enum(
  'server_optimizer', 'sgd', list(fed_avg.SERVER_OPTIMIZERS), 'Server step.'
)
_SERVER_LEARNING_RATE = flags.DEFINE_float(
  'server_learning_rate', 1.0, 'Server step size (1 with sgd: FedAvg).'
)
_CROP_SIZE = flag_types.DEFINE_int_list(
  'crop_size', [64, 64, 64], 'Training crop D,H,W (multiples of 8).'
)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 1, 'Crops per step.')
_CROPS_PER_CASE = flags.DEFINE_integer(
  'crops_per_case', 1, 'Crops per case read.'
)
_TUMOUR_CROP_PROBABILITY = flags.DEFINE_float(
  'tumour_crop_probability', 1 / 3, 'Probability a crop is on tumour.'
)
_INIT_FILTERS = flags.DEFINE_integer(
  'init_filters', 16, "SegResNet's initial filters."
)
_LOSS = flags.DEFINE_enum(
  'loss', 'dice_bce', list(client_training.LOSSES), 'Soft Dice (+ BCE).'
)
_PRECISION = flags.DEFINE_enum(
  'precision',
  'float32',
  ['float32', 'mixed_float16', 'mixed_bfloat16'],
  'Compute precision (mixed_float16 for GPUs).',
)
# Privacy.
_PRIVACY_MECHANISM = flags.DEFINE_enum(
  'privacy_mechanism',
  'sparse_vector',
  list(factories.PRIVACY_MECHANISMS),
  'Client-side mechanism, or TFF Gaussian DP-FedAvg.',
)
_SHARED_FRACTION = flags.DEFINE_float(
  'shared_fraction', 0.1, 'q: fraction of values a client releases.'
)
_CLIP_BOUND = flags.DEFINE_float(
  'clip_bound', 1e-3, 'γ per value (SVT, selective), L2 clip (gaussian).'
)
_SELECTION_EPSILON = flags.DEFINE_float(
  'selection_epsilon', None, 'SVT selection ε per round.'
)
_RELEASE_EPSILON = flags.DEFINE_float(
  'release_epsilon', None, 'SVT release ε3 per round.'
)
_THRESHOLD = flags.DEFINE_float('threshold', 0.0, 'SVT threshold τ.')
_NORMALIZE_BY_STEPS = flags.DEFINE_bool(
  'normalize_by_steps', True, 'Clip the per-step update ΔW/n.'
)
_NOISE_MULTIPLIER = flags.DEFINE_float(
  'noise_multiplier', None, 'gaussian: noise stddev / clip.'
)
_TARGET_EPSILON = flags.DEFINE_float(
  'target_epsilon', None, 'Stop before any institution passes this ε.'
)
_DELTA = flags.DEFINE_float('delta', 1e-5, 'δ of the reported ε.')
_NOISE_SEED = flags.DEFINE_integer(
  'noise_seed',
  None,
  'Reproducible privacy noise (experiments only: voids the guarantee).',
)
_DIAGNOSTICS = flags.DEFINE_bool(
  'diagnostics', False, 'Record clipped fractions (leaks; simulations only).'
)
# Evaluation and outputs.
_ROUNDS_PER_EVAL = flags.DEFINE_integer(
  'rounds_per_eval', 5, 'Validate every this many rounds.'
)
_ROUNDS_PER_CHECKPOINT = flags.DEFINE_integer(
  'rounds_per_checkpoint', 1, 'Checkpoint every this many rounds.'
)
_EVAL_WINDOW = flag_types.DEFINE_int_list(
  'eval_window', None, 'Sliding-window size (default: --crop_size).'
)
_EVAL_OVERLAP = flags.DEFINE_float('eval_overlap', 0.5, 'Window overlap.')
_MAX_EVAL_CASES = flags.DEFINE_integer(
  'max_eval_cases', None, 'Validate on at most this many cases.'
)
_NUM_OVERLAY_CASES = flags.DEFINE_integer(
  'num_overlay_cases', 2, 'Validation cases drawn in TensorBoard.'
)
_EVAL_PER_INSTITUTION = flags.DEFINE_bool(
  'eval_per_institution', False, 'Also score each institution’s own cases.'
)
_MAX_INSTITUTION_EVAL_CASES = flags.DEFINE_integer(
  'max_institution_eval_cases', 4, 'Cases per institution to score.'
)
_SEED = flags.DEFINE_integer(
  'seed', 0, 'Seed of weights, sampling and data (-1: fresh).'
)
_RESUME = flags.DEFINE_bool('resume', False, 'Continue an interrupted run.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  try:
    config = federated.FederatedConfig(
      data_dir=os.path.abspath(_DATA_DIR.value),
      total_rounds=_TOTAL_ROUNDS.value,
      clients_per_round=_CLIENTS_PER_ROUND.value,
      client_epochs_per_round=_CLIENT_EPOCHS_PER_ROUND.value,
      client_learning_rate=_CLIENT_LEARNING_RATE.value,
      server_optimizer=_SERVER_OPTIMIZER.value,
      server_learning_rate=_SERVER_LEARNING_RATE.value,
      crop_size=tuple(_CROP_SIZE.value),
      batch_size=_BATCH_SIZE.value,
      crops_per_case=_CROPS_PER_CASE.value,
      tumour_crop_probability=_TUMOUR_CROP_PROBABILITY.value,
      init_filters=_INIT_FILTERS.value,
      loss=_LOSS.value,
      precision=_PRECISION.value,
      privacy_mechanism=_PRIVACY_MECHANISM.value,
      shared_fraction=_SHARED_FRACTION.value,
      clip_bound=_CLIP_BOUND.value,
      selection_epsilon=_SELECTION_EPSILON.value,
      release_epsilon=_RELEASE_EPSILON.value,
      threshold=_THRESHOLD.value,
      normalize_by_steps=_NORMALIZE_BY_STEPS.value,
      noise_multiplier=_NOISE_MULTIPLIER.value,
      target_epsilon=_TARGET_EPSILON.value,
      delta=_DELTA.value,
      rounds_per_eval=_ROUNDS_PER_EVAL.value,
      rounds_per_checkpoint=_ROUNDS_PER_CHECKPOINT.value,
      eval_window=(
        None if _EVAL_WINDOW.value is None else tuple(_EVAL_WINDOW.value)
      ),
      eval_overlap=_EVAL_OVERLAP.value,
      max_eval_cases=_MAX_EVAL_CASES.value,
      num_overlay_cases=_NUM_OVERLAY_CASES.value,
      eval_per_institution=_EVAL_PER_INSTITUTION.value,
      max_institution_eval_cases=_MAX_INSTITUTION_EVAL_CASES.value,
      seed=None if _SEED.value < 0 else _SEED.value,
      noise_seed=_NOISE_SEED.value,
      diagnostics=_DIAGNOSTICS.value,
    )
    run_dir = os.path.join(_ROOT_OUTPUT_DIR.value, _EXPERIMENT_NAME.value)
    summary = federated.train_federated(
      config, run_dir, resume=_RESUME.value, progress=_PROGRESS.value
    )
  except ValueError as e:  # bad flags or data; the message says which
    raise SystemExit(f'train_federated: error: {e}') from None
  print(json.dumps(summary, indent=1, sort_keys=True))
  with open(summary['privacy_ledger']) as f:
    print(f.read())
  if summary['stopped']:
    print(summary['stopped'])
  print(f'Run folder: {run_dir}')


def run_main() -> None:
  """Console entry point."""
  app.run(main)


if __name__ == '__main__':
  app.run(main)
