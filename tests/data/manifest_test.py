"""Tests for tff_brats.data.manifest."""

import json
import os

import pytest

from tff_brats.data import manifest as manifest_lib
from tff_brats.data.errors import BratsDataError


def _record(case_id, shard):
  return manifest_lib.CaseRecord(
    case_id=case_id,
    layout='brats2018',
    grade='HGG',
    source_files={'t1': f'/src/{case_id}_t1.nii.gz'},
    checksums={'t1': 'sha256:00'},
    shape=(10, 11, 12),
    spacing=(1.0, 1.0, 2.5),
    affine=((1.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 2.5, 0), (0, 0, 0, 1.0)),
    crop_box=((1, 9), (2, 10), (0, 12)),
    shard=shard,
  )


def _write(root):
  shard_dir = os.path.join(root, manifest_lib.SHARD_DIR)
  os.makedirs(shard_dir)
  names = {
    'A': manifest_lib.shard_file_name('A', 0, 1),
    'validation': manifest_lib.shard_file_name('validation', 0, 1),
  }
  for name in names.values():
    open(os.path.join(shard_dir, name), 'wb').close()
  m = manifest_lib.Manifest(
    root=str(root),
    clients={'A': ('c1', 'c2')},
    client_shards={'A': (names['A'],)},
    validation=('c3',),
    validation_shards=(names['validation'],),
    cases={
      'c1': _record('c1', names['A']),
      'c2': _record('c2', names['A']),
      'c3': _record('c3', names['validation']),
    },
    request={'partition': 'uniform:1', 'seed': 0},
    partition_table='table',
    created='2026-01-01T00:00:00+00:00',
  )
  m.save()
  return m


def test_shard_names_follow_the_pattern():
  assert manifest_lib.shard_file_name('CBICA', 1, 12) == (
    'CBICA-00001-of-00012.tfrecord'
  )
  import fnmatch

  assert fnmatch.fnmatch(
    manifest_lib.shard_file_name('CBICA', 1, 12),
    manifest_lib.shard_pattern('CBICA'),
  )
  # A client id that is a prefix of another does not match its shards.
  assert not fnmatch.fnmatch(
    manifest_lib.shard_file_name('site-10', 0, 1),
    manifest_lib.shard_pattern('site-1'),
  )


def test_round_trip(tmp_path):
  written = _write(tmp_path)
  loaded = manifest_lib.load(str(tmp_path))
  assert loaded == written
  assert loaded.cases['c1'].cropped_shape == (8, 8, 12)
  assert loaded.shard_paths('A') == [
    os.path.join(str(tmp_path), 'shards', 'A-00000-of-00001.tfrecord')
  ]
  assert loaded.all_client_shard_paths() == loaded.shard_paths('A')
  assert loaded.shard_paths('validation')[0].endswith(
    'validation-00000-of-00001.tfrecord'
  )
  # The path of the manifest file itself is accepted too.
  assert manifest_lib.load(os.path.join(tmp_path, 'manifest.json')) == written


def test_unknown_client(tmp_path):
  m = _write(tmp_path)
  with pytest.raises(
    KeyError, match=r"client_id must be one of \['A'\].*Found 'B'"
  ):
    m.shard_paths('B')


def test_missing_manifest(tmp_path):
  with pytest.raises(
    BratsDataError, match='no manifest.json in .*prepare_data'
  ):
    manifest_lib.load(str(tmp_path))


def test_not_json(tmp_path):
  (tmp_path / 'manifest.json').write_text('{not json')
  with pytest.raises(
    BratsDataError, match="file '.*manifest.json': cannot read"
  ):
    manifest_lib.load(str(tmp_path))


def test_wrong_version(tmp_path):
  _write(tmp_path)
  path = tmp_path / 'manifest.json'
  d = json.loads(path.read_text())
  d['format_version'] = 99
  path.write_text(json.dumps(d))
  with pytest.raises(
    BratsDataError, match='format_version must be 1. Found 99.'
  ):
    manifest_lib.load(str(tmp_path))


def test_missing_field(tmp_path):
  _write(tmp_path)
  path = tmp_path / 'manifest.json'
  d = json.loads(path.read_text())
  del d['cases']['c1']['crop_box']
  path.write_text(json.dumps(d))
  with pytest.raises(BratsDataError, match="malformed.*'crop_box'"):
    manifest_lib.load(str(tmp_path))


def test_listed_case_without_record(tmp_path):
  _write(tmp_path)
  path = tmp_path / 'manifest.json'
  d = json.loads(path.read_text())
  del d['cases']['c2']
  path.write_text(json.dumps(d))
  with pytest.raises(
    BratsDataError, match="case 'c2' is listed but has no entry"
  ):
    manifest_lib.load(str(tmp_path))


def test_missing_shard(tmp_path):
  _write(tmp_path)
  os.remove(tmp_path / 'shards' / 'A-00000-of-00001.tfrecord')
  with pytest.raises(BratsDataError, match="shard of client 'A' is missing"):
    manifest_lib.load(str(tmp_path))
