"""From a folder of BraTS scans to per-client TFRecord shards and a manifest.

`prepare_dataset` reads every case once (`reader.load_case`, with all its
checks), crops it to the brain's bounding box, and writes it into the shards
of the client the partition gives it (or of the shared validation set), see
`manifest.py` for the folder layout and `records.py` for the record format.

Writing is atomic: everything goes into `<output_dir>.tmp-<random>` and is
renamed to `output_dir` only when complete; any error, also Ctrl-C, removes
the temporary folder and leaves `output_dir` as it was. Re-running with the
same arguments over a finished folder is a no-op; with other arguments it is
an error that names the differing arguments, unless `overwrite=True`, which
replaces the folder only once its successor is complete. Whether the *input
files* changed since is not checked on a no-op (that would mean reading them
all); the manifest's checksums let `verify_sources` check it on request.
"""

from __future__ import annotations

from collections.abc import Sequence
import datetime
import os
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf
import tqdm

from tff_brats.data import errors
from tff_brats.data import manifest as manifest_lib
from tff_brats.data import partitions
from tff_brats.data import reader
from tff_brats.data import records
from tff_brats.utils import atomic
from tff_brats.utils import checks

DEFAULT_CASES_PER_SHARD = 16


def prepare_dataset(
  data_dir: str,
  output_dir: str,
  *,
  partition: str = 'brats18_institutions',
  validation_cases: str | None = None,
  validation_fraction: float | None = None,
  seed: int = 0,
  layout: str | None = None,
  cases_per_shard: int = DEFAULT_CASES_PER_SHARD,
  crop_margin: int = 0,
  overwrite: bool = False,
  progress: bool = True,
) -> manifest_lib.Manifest:
  """Prepares a BraTS folder for federated training.

  Args:
    data_dir: Folder of BraTS cases (any layout `reader.discover_cases`
      accepts).
    output_dir: Folder to create (see the module docstring for re-runs).
    partition: Partition spec, one of `partitions.SPEC_FORMS`.
    validation_cases: File of validation case ids, or a built-in name.
    validation_fraction: Fraction of each institution held out instead.
    seed: Seed of every random choice of the partition.
    layout: 'brats2018' or 'brats2023' to require a layout; None detects it
      per case.
    cases_per_shard: Largest number of cases in one shard file.
    crop_margin: Voxels kept around the brain's bounding box on each side.
    overwrite: Whether a finished `output_dir` prepared with other arguments
      may be replaced.
    progress: Whether to show a progress bar over cases (stderr).

  Returns:
    The manifest of the finished folder.

  Raises:
    BratsDataError: Bad input data (see `reader` and `partitions`), or an
      `output_dir` that exists and is not this preparation's output.
    ValueError: Bad arguments.
  """
  checks.check_positive_int('cases_per_shard', cases_per_shard)
  checks.check_non_negative_int('crop_margin', crop_margin)
  data_dir = os.path.abspath(data_dir)
  output_dir = os.path.abspath(output_dir)
  request = {
    'data_dir': data_dir,
    'partition': partition,
    'validation_cases': _resolve_case_list(validation_cases),
    'validation_fraction': validation_fraction,
    'seed': seed,
    'layout': layout,
    'cases_per_shard': cases_per_shard,
    'crop_margin': crop_margin,
  }
  existing = _existing_output(output_dir, request, overwrite)
  if existing is not None:
    logging.info(
      '%s is already prepared with these arguments; nothing to do.',
      output_dir,
    )
    return existing

  cases = reader.discover_cases(data_dir, layout=layout, require_label=True)
  by_id = {case.case_id: case for case in cases}
  split = partitions.make_partition(
    list(by_id),
    partition,
    seed=seed,
    validation_cases=validation_cases,
    validation_fraction=validation_fraction,
  )
  logging.info(
    'Partition %r: %d clients, %d validation cases (of %d found).',
    partition,
    len(split.clients),
    len(split.validation),
    len(cases),
  )
  groups = dict(split.clients)
  if split.validation:
    groups[manifest_lib.VALIDATION] = split.validation
  total = sum(len(ids) for ids in groups.values())

  with atomic.staged_directory(output_dir, replace=overwrite) as tmp:
    shard_dir = os.path.join(tmp, manifest_lib.SHARD_DIR)
    os.mkdir(shard_dir)
    case_records = {}
    shards = {}
    with tqdm.tqdm(
      total=total, desc='preparing cases', unit='case', disable=not progress
    ) as bar:
      for group, case_ids in groups.items():
        shards[group] = []
        for index, chunk in enumerate(_chunks(case_ids, cases_per_shard)):
          name = manifest_lib.shard_file_name(
            group, index, _num_chunks(len(case_ids), cases_per_shard)
          )
          shards[group].append(name)
          with tf.io.TFRecordWriter(os.path.join(shard_dir, name)) as writer:
            for case_id in chunk:
              bar.set_postfix_str(case_id)
              serialized, record = _prepare_case(
                by_id[case_id], name, crop_margin
              )
              writer.write(serialized)
              case_records[case_id] = record
              bar.update()
    result = manifest_lib.Manifest(
      root=output_dir,
      clients={c: tuple(ids) for c, ids in split.clients.items()},
      client_shards={c: tuple(shards[c]) for c in split.clients},
      validation=tuple(split.validation),
      validation_shards=tuple(shards.get(manifest_lib.VALIDATION, ())),
      cases=case_records,
      request=request,
      partition_table=split.table(),
      created=datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    )
    result.save(os.path.join(tmp, manifest_lib.MANIFEST_NAME))
  logging.info('Prepared %d cases in %s.', total, output_dir)
  return manifest_lib.load(output_dir)


def brain_bounding_box(
  image: np.ndarray, labels: np.ndarray | None = None, margin: int = 0
) -> tuple[tuple[int, int], ...]:
  """The bounding box of the non-zero voxels (brain plus any tumour label).

  BraTS images are skull-stripped: every voxel outside the brain is exactly
  zero in all four modalities.

  Args:
    image: `[D, H, W, C]` intensities.
    labels: Optional `[D, H, W]` label map; its tumour voxels are kept too.
    margin: Voxels added on each side (clipped to the volume).

  Returns:
    `((start, stop),) * 3` with Python slice semantics.

  Raises:
    ValueError: If no voxel is non-zero.
  """
  mask = np.any(image != 0, axis=-1)
  if labels is not None:
    mask |= labels > 0
  if not mask.any():
    raise ValueError('all four modalities are zero: no brain voxel found.')
  box = []
  for axis in range(3):
    other = tuple(a for a in range(3) if a != axis)
    nonzero = np.flatnonzero(mask.any(axis=other))
    start = max(0, int(nonzero[0]) - margin)
    stop = min(mask.shape[axis], int(nonzero[-1]) + 1 + margin)
    box.append((start, stop))
  return tuple(box)


def verify_sources(prepared: manifest_lib.Manifest) -> list[str]:
  """Returns messages for every source file whose checksum changed."""
  problems = []
  for record in prepared.cases.values():
    for key, path in record.source_files.items():
      want = record.checksums[key]
      got = f'sha256:{reader.file_sha256(path)}'
      if got != want:
        problems.append(
          f'case {record.case_id!r}, file {path!r}: checksum changed '
          f'(manifest {want}, now {got}).'
        )
  return problems


def _prepare_case(
  case: reader.Case, shard: str, margin: int
) -> tuple[bytes, manifest_lib.CaseRecord]:
  loaded = reader.load_case(case, require_label=True)
  try:
    box = brain_bounding_box(loaded.image, loaded.labels, margin)
  except ValueError as e:
    raise errors.BratsDataError(
      str(e), case_id=case.case_id, path=case.image_paths[0]
    ) from e
  crop = tuple(slice(start, stop) for start, stop in box)
  serialized = records.encode_case(
    case.case_id, loaded.image[crop], loaded.regions[crop]
  )
  source_files = dict(
    zip(case.layout.modalities, case.image_paths, strict=True)
  )
  source_files[case.layout.label_suffix] = case.label_path
  record = manifest_lib.CaseRecord(
    case_id=case.case_id,
    layout=case.layout.name,
    grade=case.grade,
    source_files=source_files,
    checksums={
      key: f'sha256:{reader.file_sha256(path)}'
      for key, path in source_files.items()
    },
    shape=loaded.shape,
    spacing=tuple(float(s) for s in loaded.spacing),
    affine=tuple(tuple(float(v) for v in row) for row in loaded.affine),
    crop_box=box,
    shard=shard,
  )
  return serialized, record


def _existing_output(
  output_dir: str, request: dict[str, Any], overwrite: bool
) -> manifest_lib.Manifest | None:
  """The finished output to reuse, None to (re)write, or an error."""
  if not os.path.lexists(output_dir):
    return None
  if not os.path.isdir(output_dir):
    raise errors.BratsDataError(
      'output_dir must be a folder (or not exist). Found a file.',
      path=output_dir,
    )
  manifest_path = os.path.join(output_dir, manifest_lib.MANIFEST_NAME)
  if not os.path.exists(manifest_path):
    if not os.listdir(output_dir):
      return None
    if overwrite:
      raise errors.BratsDataError(
        'output_dir is not empty and holds no manifest.json, so it is not '
        'a prepared folder; refusing to replace it even with overwrite. '
        'Choose another output_dir or remove it.',
        path=output_dir,
      )
    raise errors.BratsDataError(
      'output_dir is not empty and holds no manifest.json (not a prepared '
      'folder). Choose another output_dir or remove it.',
      path=output_dir,
    )
  existing = manifest_lib.load(output_dir)
  differing = sorted(
    key
    for key in set(request) | set(existing.request)
    if existing.request.get(key) != request.get(key)
  )
  if not differing:
    return existing
  if overwrite:
    return None
  details = '; '.join(
    f'{key}: prepared with {existing.request.get(key)!r}, now '
    f'{request.get(key)!r}'
    for key in differing
  )
  raise errors.BratsDataError(
    f'output_dir was prepared with other arguments ({details}). Pass '
    'overwrite=True (--overwrite) to replace it, or choose another '
    'output_dir.',
    path=manifest_path,
  )


def _resolve_case_list(value: str | None) -> str | None:
  if value is None or value in partitions.BUILTIN_PARTITIONS:
    return value
  return os.path.abspath(value)


def _chunks(items: Sequence[str], size: int):
  for start in range(0, len(items), size):
    yield items[start : start + size]


def _num_chunks(n: int, size: int) -> int:
  return max(1, -(-n // size))
