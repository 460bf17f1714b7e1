"""Benchmarks training crops per second: TFRecord shards vs. arrays in memory.

Both sources run the same preprocessing (`pipeline.case_to_crops`: z-score,
crop, flips, intensity scale/shift); the shard source also reads, parses
and decodes each record (`pipeline.make_training_dataset`), the in-memory
source starts from decoded arrays (`pipeline.make_training_dataset_from_cases`
over `tf.data.Dataset.from_tensor_slices`). Cases are BraTS-sized random
brain-like volumes (an ellipsoidal brain of positive intensities, exactly 0
outside, and a tumour blob), written to a temporary folder.

Example:

  python -m benchmarks.input_pipeline --num_cases=4 --iterations=20 \
    --crop_sizes=64,128 --crops_per_case=1,4

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from benchmarks import machine
from experiments import flag_types
from tff_brats.data import manifest
from tff_brats.data import pipeline
from tff_brats.data import records

_NUM_CASES = flags.DEFINE_integer('num_cases', 4, 'Cases to write.')
_VOLUME_SHAPE = flag_types.DEFINE_int_list(
  'volume_shape', [140, 170, 140], 'Case shape D,H,W (brain-cropped).'
)
_CROP_SIZES = flag_types.DEFINE_int_list(
  'crop_sizes', [64, 128], 'Cube crop edge lengths to measure.'
)
_CROPS_PER_CASE = flag_types.DEFINE_int_list(
  'crops_per_case', [1, 4], 'Crops per parsed case to measure.'
)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 1, 'Crops per batch.')
_ITERATIONS = flags.DEFINE_integer(
  'iterations', 20, 'Minimum timed batches per configuration.'
)
_MIN_SECONDS = flags.DEFINE_float(
  'min_seconds',
  3.0,
  'Minimum timed seconds per configuration (more batches are read until '
  'then, so prefetched batches bias short runs less).',
)
_WARMUP = flags.DEFINE_integer(
  'warmup', 2, 'Untimed batches per configuration (graph building, buffers).'
)
_TUMOUR_CROP_PROBABILITY = flags.DEFINE_float(
  'tumour_crop_probability',
  pipeline.DEFAULT_TUMOUR_CROP_PROBABILITY,
  'Probability of a tumour-centred crop.',
)
_WHOLE_INTENSITIES = flags.DEFINE_bool(
  'whole_intensities',
  True,
  'Whole-number intensities, as BraTS scans (int16 on disk; shards store '
  'them as int16), else arbitrary floats (float32 in the shards).',
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the cases and the pipeline.')
_WORK_DIR = flags.DEFINE_string(
  'work_dir', None, 'Folder for the shards (a temporary one when unset).'
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for holder in (_VOLUME_SHAPE, _CROP_SIZES, _CROPS_PER_CASE):
    if not holder.value or min(holder.value) < 1:
      raise app.UsageError(
        f'--{holder.name} must be positive integers. Found {holder.value}.'
      )
  result = run_benchmark(
    num_cases=_NUM_CASES.value,
    volume_shape=tuple(_VOLUME_SHAPE.value),
    crop_sizes=_CROP_SIZES.value,
    crops_per_case=_CROPS_PER_CASE.value,
    batch_size=_BATCH_SIZE.value,
    iterations=_ITERATIONS.value,
    min_seconds=_MIN_SECONDS.value,
    warmup=_WARMUP.value,
    tumour_crop_probability=_TUMOUR_CROP_PROBABILITY.value,
    whole_intensities=_WHOLE_INTENSITIES.value,
    seed=_SEED.value,
    work_dir=_WORK_DIR.value,
  )
  json.dump(result, sys.stdout, indent=1)
  sys.stdout.write('\n')


def run_benchmark(
  *,
  num_cases: int = 4,
  volume_shape: tuple[int, int, int] = (140, 170, 140),
  crop_sizes: Sequence[int] = (64, 128),
  crops_per_case: Sequence[int] = (1, 4),
  batch_size: int = 1,
  iterations: int = 20,
  min_seconds: float = 3.0,
  warmup: int = 2,
  tumour_crop_probability: float = pipeline.DEFAULT_TUMOUR_CROP_PROBABILITY,
  whole_intensities: bool = True,
  seed: int = 0,
  work_dir: str | None = None,
) -> dict[str, Any]:
  """Measures crops per second for every source, crop size and crops/case.

  Returns:
    A JSON-serialisable dict: `config` (machine, threads, shapes, counts)
    and `results`, one entry per (source, crop_size, crops_per_case) with
    the timed `crops`, `seconds` and `crops_per_second`.
  """
  for name, value in (
    ('num_cases', num_cases),
    ('batch_size', batch_size),
    ('iterations', iterations),
  ):
    if value < 1:
      raise ValueError(f'{name} must be a positive integer. Found {value}.')
  if warmup < 0:
    raise ValueError(f'warmup must be non-negative. Found {warmup}.')
  if min_seconds < 0:
    raise ValueError(f'min_seconds must be non-negative. Found {min_seconds}.')
  own_dir = work_dir is None
  work_dir = work_dir or tempfile.mkdtemp(prefix='tff_brats-bench-')
  try:
    started = time.perf_counter()
    cases = [
      _brain_like_case(
        volume_shape, seed=seed + i, whole_intensities=whole_intensities
      )
      for i in range(num_cases)
    ]
    shard_paths = _write_shards(work_dir, cases)
    shard_bytes = sum(os.path.getsize(p) for p in shard_paths)
    machine.progress(
      f'wrote {num_cases} cases ({shard_bytes / 1e6:.0f} MB) in '
      f'{time.perf_counter() - started:.1f} s'
    )
    in_memory = tf.data.Dataset.from_tensor_slices(
      {
        'image': np.stack([image for image, _ in cases]),
        'regions': np.stack([r.astype(np.float32) for _, r in cases]),
      }
    )
    del cases
    results = []
    for crop in crop_sizes:
      for per_case in crops_per_case:
        kwargs = dict(
          crop_size=(crop, crop, crop),
          batch_size=batch_size,
          crops_per_case=per_case,
          tumour_crop_probability=tumour_crop_probability,
          seed=seed,
        )
        sources = {
          'shards': pipeline.make_training_dataset(shard_paths, **kwargs),
          'in_memory': pipeline.make_training_dataset_from_cases(
            in_memory, **kwargs
          ),
        }
        for source, dataset in sources.items():
          batches, seconds = _time(
            dataset.repeat(), warmup, iterations, min_seconds
          )
          crops = batches * batch_size
          results.append(
            {
              'source': source,
              'crop_size': crop,
              'crops_per_case': per_case,
              'crops': crops,
              'seconds': round(seconds, 3),
              'crops_per_second': round(crops / seconds, 3),
            }
          )
          machine.progress(
            f'{source:>9} crop {crop}³ x{per_case}/case: '
            f'{crops / seconds:.2f} crops/s'
          )
  finally:
    if own_dir:
      shutil.rmtree(work_dir, ignore_errors=True)
  return {
    'benchmark': 'input_pipeline',
    'config': {
      'num_cases': num_cases,
      'volume_shape': list(volume_shape),
      'modalities': records.NUM_MODALITIES,
      'whole_intensities': whole_intensities,
      'shard_megabytes': round(shard_bytes / 1e6, 1),
      'num_shards': len(shard_paths),
      'batch_size': batch_size,
      'min_iterations': iterations,
      'min_seconds': min_seconds,
      'warmup': warmup,
      'tumour_crop_probability': tumour_crop_probability,
      'augment': True,
      'num_parallel_calls': 'AUTOTUNE',
      'prefetch': 'AUTOTUNE',
      'seed': seed,
      'cpu_count': os.cpu_count(),
      'usable_cpus': len(os.sched_getaffinity(0)),
      'tf_inter_op_threads': tf.config.threading.get_inter_op_parallelism_threads(),
      'tf_intra_op_threads': tf.config.threading.get_intra_op_parallelism_threads(),
      'tensorflow': tf.__version__,
    },
    'results': results,
  }


def _time(
  dataset: tf.data.Dataset, warmup: int, iterations: int, min_seconds: float
) -> tuple[int, float]:
  """Reads `warmup` batches, then times at least `iterations` batches and
  `min_seconds`; returns (timed batches, seconds)."""
  iterator = iter(dataset)
  for _ in range(warmup):
    next(iterator)
  batches = 0
  started = time.perf_counter()
  while batches < iterations or time.perf_counter() - started < min_seconds:
    next(iterator)
    batches += 1
  return batches, time.perf_counter() - started


def _brain_like_case(
  shape: tuple[int, int, int], *, seed: int, whole_intensities: bool
) -> tuple[np.ndarray, np.ndarray]:
  """Random positive intensities in an ellipsoidal brain, 0 outside."""
  rng = np.random.default_rng(seed)
  axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
  d, h, w = np.meshgrid(*axes, indexing='ij', sparse=True)
  radius = d**2 + h**2 + w**2
  brain = radius <= 0.9
  image = np.empty((*shape, records.NUM_MODALITIES), np.float32)
  for c in range(records.NUM_MODALITIES):
    values = rng.gamma(8.0, 60.0 * (c + 1), size=shape).astype(np.float32)
    if whole_intensities:
      values = np.minimum(np.round(values), 2**15 - 2)
    image[..., c] = np.where(brain, values + 1.0, 0.0)
  centre = rng.uniform(-0.3, 0.3, size=3).astype(np.float32)
  distance = (d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2
  wt = brain & (distance <= 0.06)
  tc = brain & (distance <= 0.025)
  et = tc & (distance >= 0.01)
  return image, np.stack([tc, wt, et], axis=-1)


def _write_shards(
  folder: str, cases: list[tuple[np.ndarray, np.ndarray]]
) -> list[str]:
  """Two shards (or one for a single case), named as `prepare_data` does."""
  count = min(2, len(cases))
  paths = [
    os.path.join(folder, manifest.shard_file_name('bench', i, count))
    for i in range(count)
  ]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  try:
    for k, (image, regions) in enumerate(cases):
      writers[k % count].write(
        records.encode_case(f'bench_{k:03d}', image, regions)
      )
  finally:
    for writer in writers:
      writer.close()
  return paths


if __name__ == '__main__':
  app.run(main)
