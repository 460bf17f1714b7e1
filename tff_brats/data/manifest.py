"""The manifest of a prepared data set (`manifest.json`).

`experiments/prepare_data.py` writes a folder

    <output_dir>/
      manifest.json
      shards/<client_id>-00000-of-00002.tfrecord
      shards/<client_id>-00001-of-00002.tfrecord
      shards/validation-00000-of-00001.tfrecord
      ...

and the manifest records, for every client, its case ids and shard files;
the shared validation cases and their shards; and per case where it came
from (source paths, checksums), its original grid (shape, voxel spacing,
affine) and the crop box that maps the stored volume back into that grid,
so predictions can be written in the original space.

Shard names follow one rule (`shard_file_name`), so a TF graph can find a
client's shards from its id alone (`shard_pattern`), e.g. inside a TFF
computation that receives only a client id or a folder path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from tff_brats.data import errors
from tff_brats.utils import atomic

MANIFEST_NAME = 'manifest.json'
SHARD_DIR = 'shards'
VALIDATION = 'validation'
FORMAT_VERSION = 1


def shard_file_name(client_id: str, index: int, count: int) -> str:
  """File name of shard `index` of `count` of a client (or 'validation')."""
  return f'{client_id}-{index:05d}-of-{count:05d}.tfrecord'


def shard_pattern(client_id: str) -> str:
  """Glob pattern (relative to the shard folder) of a client's shards."""
  return f'{client_id}-?????-of-?????.tfrecord'


@dataclasses.dataclass(frozen=True)
class CaseRecord:
  """Where one prepared case came from and how to map it back.

  Attributes:
    case_id: The BraTS case id.
    layout: 'brats2018' or 'brats2023'.
    grade: 'HGG' / 'LGG' when the source folder said so, else None.
    source_files: Modality suffix (and 'seg') -> absolute source path.
    checksums: The same keys -> 'sha256:<hex>' of the source file.
    shape: Original volume shape (D, H, W).
    spacing: Voxel size in mm.
    affine: The 4x4 affine of the original volume (row-major lists).
    crop_box: `[[start, stop], ...]` per axis of the stored crop, in the
      original voxel grid (Python slice semantics).
    shard: Shard file name (relative to the shard folder) holding the case.
  """

  case_id: str
  layout: str
  grade: str | None
  source_files: dict[str, str]
  checksums: dict[str, str]
  shape: tuple[int, int, int]
  spacing: tuple[float, float, float]
  affine: tuple[tuple[float, ...], ...]
  crop_box: tuple[tuple[int, int], ...]
  shard: str

  @property
  def cropped_shape(self) -> tuple[int, ...]:
    return tuple(stop - start for start, stop in self.crop_box)

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['shape'] = list(self.shape)
    d['spacing'] = list(self.spacing)
    d['affine'] = [list(row) for row in self.affine]
    d['crop_box'] = [list(pair) for pair in self.crop_box]
    d['cropped_shape'] = list(self.cropped_shape)
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> CaseRecord:
    return cls(
      case_id=d['case_id'],
      layout=d['layout'],
      grade=d.get('grade'),
      source_files=dict(d['source_files']),
      checksums=dict(d['checksums']),
      shape=tuple(int(v) for v in d['shape']),
      spacing=tuple(float(v) for v in d['spacing']),
      affine=tuple(tuple(float(v) for v in row) for row in d['affine']),
      crop_box=tuple((int(a), int(b)) for a, b in d['crop_box']),
      shard=d['shard'],
    )


@dataclasses.dataclass(frozen=True)
class Manifest:
  """A loaded `manifest.json` and the folder it describes.

  Attributes:
    root: Absolute path of the prepared folder.
    clients: Client id -> tuple of case ids (in shard order).
    client_shards: Client id -> shard file names (relative to `shards/`).
    validation: Validation case ids.
    validation_shards: Their shard file names.
    cases: Case id -> `CaseRecord`, for clients and validation alike.
    request: The arguments the folder was prepared with (data_dir,
      partition, seed, ...), used to decide whether a re-run is a no-op.
    partition_table: The human-readable per-client table.
    created: ISO time the folder was written.
  """

  root: str
  clients: dict[str, tuple[str, ...]]
  client_shards: dict[str, tuple[str, ...]]
  validation: tuple[str, ...]
  validation_shards: tuple[str, ...]
  cases: dict[str, CaseRecord]
  request: dict[str, Any]
  partition_table: str = ''
  created: str = ''

  @property
  def client_ids(self) -> list[str]:
    return list(self.clients)

  @property
  def shard_dir(self) -> str:
    return os.path.join(self.root, SHARD_DIR)

  def shard_paths(self, client_id: str) -> list[str]:
    """Absolute shard paths of a client, or of 'validation'."""
    if client_id == VALIDATION:
      names = self.validation_shards
    elif client_id in self.client_shards:
      names = self.client_shards[client_id]
    else:
      raise KeyError(
        f'client_id must be one of {self.client_ids} or {VALIDATION!r}. '
        f'Found {client_id!r}.'
      )
    return [os.path.join(self.shard_dir, name) for name in names]

  def all_client_shard_paths(self) -> list[str]:
    """Shard paths of every client (not validation): the pooled data set."""
    return [p for c in self.clients for p in self.shard_paths(c)]

  def to_json(self) -> dict[str, Any]:
    return {
      'format_version': FORMAT_VERSION,
      'created': self.created,
      'request': self.request,
      'partition_table': self.partition_table,
      'clients': {
        c: {
          'case_ids': list(self.clients[c]),
          'num_cases': len(self.clients[c]),
          'shards': list(self.client_shards[c]),
        }
        for c in self.clients
      },
      'validation': {
        'case_ids': list(self.validation),
        'num_cases': len(self.validation),
        'shards': list(self.validation_shards),
      },
      'cases': {cid: rec.to_json() for cid, rec in self.cases.items()},
    }

  def save(self, path: str | None = None) -> str:
    """Writes the manifest (atomically) to `path` or `<root>/manifest.json`."""
    path = path or os.path.join(self.root, MANIFEST_NAME)
    atomic.write_text(path, json.dumps(self.to_json(), indent=1) + '\n')
    return path


def load(root: str) -> Manifest:
  """Loads `<root>/manifest.json` and checks it against the shard folder.

  Args:
    root: A folder written by `experiments/prepare_data.py` (or the path of
      its manifest.json).

  Returns:
    The `Manifest`.

  Raises:
    BratsDataError: The manifest is missing, not JSON, of another format
      version, inconsistent, or names shards that do not exist.
  """
  if os.path.basename(root) == MANIFEST_NAME:
    root = os.path.dirname(root)
  root = os.path.abspath(root)
  path = os.path.join(root, MANIFEST_NAME)
  if not os.path.isfile(path):
    raise errors.BratsDataError(
      f'no {MANIFEST_NAME} in {root!r}: is it an output folder of '
      'experiments/prepare_data.py?',
      path=path,
    )
  try:
    with open(path) as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise errors.BratsDataError(f'cannot read manifest: {e}', path=path) from e
  version = d.get('format_version') if isinstance(d, dict) else None
  if version != FORMAT_VERSION:
    raise errors.BratsDataError(
      f'format_version must be {FORMAT_VERSION}. Found {version!r}.',
      path=path,
    )
  try:
    clients = {c: tuple(v['case_ids']) for c, v in d['clients'].items()}
    manifest = Manifest(
      root=root,
      clients=clients,
      client_shards={c: tuple(v['shards']) for c, v in d['clients'].items()},
      validation=tuple(d['validation']['case_ids']),
      validation_shards=tuple(d['validation']['shards']),
      cases={cid: CaseRecord.from_json(rec) for cid, rec in d['cases'].items()},
      request=dict(d['request']),
      partition_table=d.get('partition_table', ''),
      created=d.get('created', ''),
    )
  except (KeyError, TypeError, ValueError) as e:
    raise errors.BratsDataError(
      f'manifest is malformed: missing or bad field {e}', path=path
    ) from e
  _check_consistent(manifest, path)
  return manifest


def _check_consistent(manifest: Manifest, path: str) -> None:
  listed = [c for ids in manifest.clients.values() for c in ids]
  listed += list(manifest.validation)
  for case_id in listed:
    if case_id not in manifest.cases:
      raise errors.BratsDataError(
        f'case {case_id!r} is listed but has no entry in "cases".', path=path
      )
  for client_id in [*manifest.clients, VALIDATION]:
    for shard in manifest.shard_paths(client_id):
      if not os.path.isfile(shard):
        raise errors.BratsDataError(
          f'shard of client {client_id!r} is missing: {shard}', path=path
        )
