"""Tests for tff_brats.data.prepare on tiny NIfTI cases written to disk."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.resources
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from tff_brats.data import layouts
from tff_brats.data import manifest as manifest_lib
from tff_brats.data import prepare
from tff_brats.data import reader
from tff_brats.data import records
from tff_brats.data.errors import BratsDataError

SHAPE = (8, 9, 10)
SPACING = (1.0, 1.5, 2.0)
# The BraTS orientation (LPS), which the reader keeps as stored.
AFFINE = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
# The brain occupies this box; everything outside is exactly 0.
BRAIN = (slice(2, 6), slice(1, 8), slice(3, 9))
NOBODY = 65534


def _volumes(seed: int, layout=layouts.BRATS2018):
  rng = np.random.default_rng(seed)
  image = np.zeros((*SHAPE, 4), np.float32)
  image[BRAIN] = rng.uniform(100, 1000, size=(4, 7, 6, 4)).round()
  labels = np.zeros(SHAPE, np.uint8)
  labels[3, 4, 5] = layout.necrotic_label
  labels[4, 4, 5] = layout.edema_label
  labels[4, 5, 5] = layout.enhancing_label
  return image, labels


def _write_case(parent, case_id, seed=0, layout=layouts.BRATS2018):
  folder = pathlib.Path(parent) / case_id
  folder.mkdir(parents=True)
  image, labels = _volumes(seed, layout)
  for channel, suffix in enumerate(layout.modalities):
    nib.save(
      nib.Nifti1Image(image[..., channel].astype(np.int16), AFFINE),
      str(folder / layout.file_name(case_id, suffix)),
    )
  nib.save(
    nib.Nifti1Image(labels, AFFINE),
    str(folder / layout.file_name(case_id, layout.label_suffix)),
  )
  return folder


def _make_data_dir(root, case_ids):
  for index, case_id in enumerate(case_ids):
    _write_case(pathlib.Path(root) / 'HGG', case_id, seed=index)
  return str(root)


CASE_IDS = [
  f'Brats18_{site}_{n:03d}_1' for site in ('CBICA', 'TCIA01') for n in range(4)
]


@pytest.fixture
def data_dir(tmp_path):
  return _make_data_dir(tmp_path / 'brats', CASE_IDS)


def _no_partial_output(output_dir):
  parent = os.path.dirname(output_dir)
  name = os.path.basename(output_dir)
  leftovers = [n for n in os.listdir(parent) if n.startswith(name)]
  return leftovers == []


def _read_shard(path):
  return [
    records.parse_case(s)
    for s in tf.data.TFRecordDataset(path).as_numpy_iterator()
  ]


def test_end_to_end_manifest_and_shards(data_dir, tmp_path):
  validation = tmp_path / 'validation.txt'
  validation.write_text(
    '# held out\nBrats18_CBICA_000_1\nBrats18_TCIA01_003_1\n'
  )
  out = str(tmp_path / 'prepared')
  result = prepare.prepare_dataset(
    data_dir,
    out,
    partition='brats18_institutions',
    validation_cases=str(validation),
    cases_per_shard=2,
    progress=False,
  )
  assert result.clients == {
    'CBICA': (
      'Brats18_CBICA_001_1',
      'Brats18_CBICA_002_1',
      'Brats18_CBICA_003_1',
    ),
    'TCIA01': (
      'Brats18_TCIA01_000_1',
      'Brats18_TCIA01_001_1',
      'Brats18_TCIA01_002_1',
    ),
  }
  assert result.validation == ('Brats18_CBICA_000_1', 'Brats18_TCIA01_003_1')
  # Three cases with two per shard make two shards, named by the one rule.
  assert result.client_shards['CBICA'] == (
    'CBICA-00000-of-00002.tfrecord',
    'CBICA-00001-of-00002.tfrecord',
  )
  assert result.validation_shards == ('validation-00000-of-00001.tfrecord',)

  record = result.cases['Brats18_CBICA_002_1']
  assert record.shape == SHAPE
  assert record.spacing == SPACING
  np.testing.assert_allclose(record.affine, AFFINE)
  assert record.crop_box == ((2, 6), (1, 8), (3, 9))
  assert record.cropped_shape == (4, 7, 6)
  assert record.grade == 'HGG'
  assert record.layout == 'brats2018'
  seg = record.source_files['seg']
  assert seg.endswith('Brats18_CBICA_002_1_seg.nii.gz')
  with open(seg, 'rb') as f:
    assert (
      record.checksums['seg']
      == 'sha256:' + hashlib.sha256(f.read()).hexdigest()
    )
  assert set(record.checksums) == {'t1', 't1ce', 't2', 'flair', 'seg'}

  # The stored case is the source cropped to the brain, channel by channel.
  parsed = {
    p['case_id'].numpy().decode(): p
    for path in result.shard_paths('CBICA')
    for p in _read_shard(path)
  }
  assert list(parsed) == list(result.clients['CBICA'])
  image, labels = _volumes(seed=2)  # CBICA_002 is the third case written
  np.testing.assert_array_equal(
    parsed['Brats18_CBICA_002_1']['image'], image[BRAIN]
  )
  regions = layouts.labels_to_regions(labels, layouts.BRATS2018)[BRAIN]
  np.testing.assert_array_equal(
    parsed['Brats18_CBICA_002_1']['regions'], regions
  )

  # The manifest on disk is the one returned, and it is valid JSON.
  with open(os.path.join(out, 'manifest.json')) as f:
    on_disk = json.load(f)
  assert on_disk['clients']['TCIA01']['num_cases'] == 3
  assert on_disk['request']['validation_cases'] == str(validation)
  assert 'total (2 clients)' in result.partition_table
  assert prepare.verify_sources(result) == []


def test_brain_bounding_box_hand_computed():
  image = np.zeros((6, 7, 8, 4), np.float32)
  image[1, 2, 3, 0] = 5.0
  image[4, 5, 3, 3] = -2.0  # negative intensities are brain too
  labels = np.zeros((6, 7, 8), np.uint8)
  labels[2, 2, 6] = 2  # a tumour voxel outside the non-zero image
  assert prepare.brain_bounding_box(image) == ((1, 5), (2, 6), (3, 4))
  assert prepare.brain_bounding_box(image, labels) == ((1, 5), (2, 6), (3, 7))
  assert prepare.brain_bounding_box(image, labels, margin=2) == (
    (0, 6),
    (0, 7),
    (1, 8),
  )


def test_brain_bounding_box_of_empty_volume():
  with pytest.raises(ValueError, match='no brain voxel'):
    prepare.brain_bounding_box(np.zeros((3, 3, 3, 4)))


def test_paper_institution_sizes_from_brats18_names(tmp_path):
  """BraTS 2018 case ids of Li et al. 2019 give the paper's 13 clients."""
  csv_file = importlib.resources.files('tff_brats.data').joinpath(
    'partitions', 'brats18_li2019_partition.csv'
  )
  with csv_file.open() as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 285
  root = tmp_path / 'MICCAI_BraTS_2018_Data_Training'
  tiny = np.zeros((2, 2, 2), np.int16)
  tiny[0, 0, 0] = 7
  for row in rows:
    case_id = row['Subject_ID']
    folder = root / row['Grade'] / case_id
    folder.mkdir(parents=True)
    for suffix in ('t1', 't1ce', 't2', 'flair'):
      nib.save(
        nib.Nifti1Image(tiny, np.eye(4)),
        str(folder / f'{case_id}_{suffix}.nii.gz'),
      )
    nib.save(
      nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)),
      str(folder / f'{case_id}_seg.nii.gz'),
    )
  paper_sizes = [18, 77, 20, 30, 11, 7, 3, 6, 13, 9, 32, 5, 11]

  by_token = prepare.prepare_dataset(
    str(root),
    str(tmp_path / 'institutions'),
    partition='brats18_institutions',
    validation_cases='brats18_li2019',
    progress=False,
  )
  assert [len(ids) for ids in by_token.clients.values()] == paper_sizes
  assert list(by_token.clients)[:3] == ['2013', 'CBICA', 'TCIA01']
  assert len(by_token.validation) == 43

  exact = prepare.prepare_dataset(
    str(root),
    str(tmp_path / 'li2019'),
    partition='brats18_li2019',
    progress=False,
  )
  assert [len(ids) for ids in exact.clients.values()] == paper_sizes
  assert list(exact.clients) == [f'site-{k}' for k in range(1, 14)]
  assert exact.validation == by_token.validation
  # Same cases per institution, whichever way the split was named.
  assert list(exact.clients.values()) == list(by_token.clients.values())

  # Only the 242 training cases: the institutions alone give the sizes.
  for row in rows:
    if row['Partition'] == 'validation':
      (root / row['Grade'] / row['Subject_ID']).rename(
        tmp_path / row['Subject_ID']
      )
  training_only = prepare.prepare_dataset(
    str(root), str(tmp_path / 'training_only'), progress=False
  )
  assert [len(ids) for ids in training_only.clients.values()] == paper_sizes
  assert training_only.validation == ()


def test_rerun_with_same_arguments_is_a_no_op(data_dir, tmp_path):
  out = str(tmp_path / 'prepared')
  prepare.prepare_dataset(
    data_dir, out, validation_fraction=0.25, progress=False
  )
  manifest_path = os.path.join(out, 'manifest.json')
  before = os.stat(manifest_path).st_mtime_ns
  again = prepare.prepare_dataset(
    data_dir, out, validation_fraction=0.25, progress=False
  )
  assert os.stat(manifest_path).st_mtime_ns == before
  assert len(again.validation) == 2  # 25% of each institution's 4 cases


def test_rerun_with_other_arguments_is_an_error_naming_them(data_dir, tmp_path):
  out = str(tmp_path / 'prepared')
  prepare.prepare_dataset(data_dir, out, progress=False)
  with open(os.path.join(out, 'manifest.json')) as f:
    before = f.read()
  with pytest.raises(
    BratsDataError,
    match=r'manifest.json.*other arguments \(partition: prepared with '
    r"'brats18_institutions', now 'uniform:3'; seed: prepared with 0, now 5\)"
    r'.*--overwrite',
  ):
    prepare.prepare_dataset(
      data_dir, out, partition='uniform:3', seed=5, progress=False
    )
  with open(os.path.join(out, 'manifest.json')) as f:
    assert f.read() == before
  assert sorted(os.listdir(tmp_path)) == ['brats', 'prepared']


def test_overwrite_replaces_only_when_complete(data_dir, tmp_path):
  out = str(tmp_path / 'prepared')
  prepare.prepare_dataset(data_dir, out, progress=False)
  replaced = prepare.prepare_dataset(
    data_dir, out, partition='uniform:3', overwrite=True, progress=False
  )
  assert list(replaced.clients) == ['client-00', 'client-01', 'client-02']
  assert sorted(os.listdir(out)) == ['manifest.json', 'shards']
  assert sorted(os.listdir(os.path.join(out, 'shards'))) == [
    f'client-0{k}-00000-of-00001.tfrecord' for k in range(3)
  ]
  assert sorted(os.listdir(tmp_path)) == ['brats', 'prepared']


def test_refuses_a_foreign_non_empty_folder(data_dir, tmp_path):
  out = tmp_path / 'precious'
  out.mkdir()
  (out / 'notes.txt').write_text('keep me')
  for overwrite in (False, True):
    with pytest.raises(BratsDataError, match='holds no manifest.json'):
      prepare.prepare_dataset(
        data_dir, str(out), overwrite=overwrite, progress=False
      )
  assert os.listdir(out) == ['notes.txt']


def test_output_dir_that_is_a_file(data_dir, tmp_path):
  out = tmp_path / 'file'
  out.write_text('x')
  with pytest.raises(
    BratsDataError, match="file '.*file': output_dir must be a folder"
  ):
    prepare.prepare_dataset(data_dir, str(out), progress=False)


def test_empty_existing_folder_is_used(data_dir, tmp_path):
  out = tmp_path / 'empty'
  out.mkdir()
  result = prepare.prepare_dataset(data_dir, str(out), progress=False)
  assert len(result.cases) == len(CASE_IDS)


def _truncate(path):
  data = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(data[: len(data) // 2])


def _not_nifti(path):
  with gzip.open(path, 'wb') as f:
    f.write(b'this is a text file, not a NIfTI image\n' * 20)


def _resave(path, transform):
  img = nib.load(path)
  data, affine = transform(np.asanyarray(img.dataobj), img.affine)
  nib.save(nib.Nifti1Image(data, affine), path)


def _with_nan(path):
  def transform(data, affine):
    data = data.astype(np.float32)
    data[3, 4, 5] = np.nan
    return data, affine

  _resave(path, transform)


def _with_label_3(path):
  def transform(data, affine):
    data = data.copy()
    data[4, 4, 5] = 3
    return data, affine

  _resave(path, transform)


def _with_other_shape(path):
  _resave(path, lambda data, affine: (data[:, :, :-1], affine))


def _with_other_affine(path):
  def transform(data, affine):
    affine = affine.copy()
    affine[0, 3] += 0.5
    return data, affine

  _resave(path, transform)


BAD_CASE = 'Brats18_TCIA01_002_1'


@pytest.mark.parametrize(
  'suffix, corrupt, message',
  [
    ('flair', _truncate, 'truncated|corrupt|cannot read'),
    ('t1ce', _not_nifti, 'must be a NIfTI-1 or NIfTI-2 image'),
    ('t2', os.remove, "modality 't2' must be present.*Found no such file"),
    (
      't1',
      _with_other_shape,
      r'shape.*\(8, 9, 9\).*\(8, 9, 10\)|\(8, 9, 10\).*\(8, 9, 9\)',
    ),
    ('flair', _with_other_affine, r'affine.*0\.5'),
    ('t1ce', _with_nan, r'NaN|nan|not finite'),
    ('seg', _with_label_3, r'one of \[0, 1, 2, 4\].*Found 3 in 1 voxel'),
  ],
)
def test_bad_case_is_named_and_leaves_nothing(
  data_dir, tmp_path, suffix, corrupt, message
):
  path = os.path.join(
    data_dir, 'HGG', BAD_CASE, layouts.BRATS2018.file_name(BAD_CASE, suffix)
  )
  corrupt(path)
  out = str(tmp_path / 'prepared')
  with pytest.raises(BratsDataError) as info:
    # One case per shard: the shards of earlier cases are already written
    # when the bad case is reached.
    prepare.prepare_dataset(data_dir, out, cases_per_shard=1, progress=False)
  text = str(info.value)
  assert BAD_CASE in text
  assert layouts.BRATS2018.file_name(BAD_CASE, suffix) in text
  assert re.search(message, text), text
  assert _no_partial_output(out)


def test_empty_data_dir_leaves_nothing(tmp_path):
  (tmp_path / 'brats').mkdir()
  out = str(tmp_path / 'prepared')
  with pytest.raises(BratsDataError, match="Found no case folder in '.*brats'"):
    prepare.prepare_dataset(str(tmp_path / 'brats'), out, progress=False)
  assert _no_partial_output(out)


def test_duplicate_case_ids_leave_nothing(data_dir, tmp_path):
  _write_case(pathlib.Path(data_dir) / 'LGG', CASE_IDS[0])
  out = str(tmp_path / 'prepared')
  with pytest.raises(
    BratsDataError, match=f'{CASE_IDS[0]}.*HGG.*LGG|{CASE_IDS[0]}.*LGG.*HGG'
  ):
    prepare.prepare_dataset(data_dir, out, progress=False)
  assert _no_partial_output(out)


def test_interrupt_mid_way_leaves_nothing(data_dir, tmp_path, monkeypatch):
  calls = []
  real_load = reader.load_case

  def load_then_interrupt(case, **kwargs):
    calls.append(case.case_id)
    if len(calls) == 5:
      raise KeyboardInterrupt
    return real_load(case, **kwargs)

  monkeypatch.setattr(reader, 'load_case', load_then_interrupt)
  out = str(tmp_path / 'prepared')
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare_dataset(data_dir, out, cases_per_shard=1, progress=False)
  assert len(calls) == 5
  assert _no_partial_output(out)


def test_failure_during_overwrite_keeps_the_old_folder(data_dir, tmp_path):
  out = str(tmp_path / 'prepared')
  old = prepare.prepare_dataset(data_dir, out, progress=False)
  _with_label_3(
    os.path.join(data_dir, 'HGG', BAD_CASE, f'{BAD_CASE}_seg.nii.gz')
  )
  with pytest.raises(BratsDataError, match=BAD_CASE):
    prepare.prepare_dataset(
      data_dir, out, partition='uniform:2', overwrite=True, progress=False
    )
  assert manifest_lib.load(out).clients == old.clients
  assert sorted(os.listdir(tmp_path)) == ['brats', 'prepared']


def test_unreadable_file_is_named_and_leaves_nothing():
  """A scan the user may not read: a real PermissionError, not a mock.

  Root reads any file, so when the tests run as root the preparation runs
  in a child process that drops to user nobody before it starts; the files
  live in a fresh folder under /tmp that nobody can traverse (pytest's own
  tmp_path is private to root).
  """
  scratch = tempfile.mkdtemp(prefix='tff_brats-perm-')
  try:
    os.chmod(scratch, 0o777)
    data_dir = _make_data_dir(os.path.join(scratch, 'brats'), CASE_IDS)
    for path in pathlib.Path(scratch).rglob('*'):
      os.chmod(path, 0o777 if path.is_dir() else 0o644)
    bad = os.path.join(data_dir, 'HGG', BAD_CASE, f'{BAD_CASE}_t2.nii.gz')
    os.chmod(bad, 0o000)
    out_parent = os.path.join(scratch, 'out')
    os.mkdir(out_parent)
    os.chmod(out_parent, 0o777)
    out = os.path.join(out_parent, 'prepared')
    child = textwrap.dedent(
      f"""
      import os
      from tff_brats.data import prepare
      from tff_brats.data.errors import BratsDataError
      if os.geteuid() == 0:
        os.setgroups([])
        os.setgid({NOBODY})
        os.setuid({NOBODY})
      assert os.geteuid() != 0
      try:
        prepare.prepare_dataset({data_dir!r}, {out!r}, progress=False)
      except BratsDataError as e:
        print('ERROR', e)
      """
    )
    repo = pathlib.Path(__file__).resolve().parents[2]
    result = subprocess.run(
      [sys.executable, '-c', child],
      capture_output=True,
      text=True,
      cwd=repo,
      env={**os.environ, 'PYTHONPATH': str(repo)},
      timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert 'ERROR' in result.stdout, result.stdout + result.stderr
    assert BAD_CASE in result.stdout
    assert f'{BAD_CASE}_t2.nii.gz' in result.stdout
    assert 'permission denied' in result.stdout.lower()
    assert os.listdir(out_parent) == []
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (
      {'cases_per_shard': 0},
      'cases_per_shard must be a positive integer. Found 0.',
    ),
    (
      {'cases_per_shard': 1.5},
      'cases_per_shard must be a positive integer. Found 1.5.',
    ),
    (
      {'crop_margin': -1},
      'crop_margin must be a non-negative integer. Found -1.',
    ),
  ],
)
def test_bad_arguments(data_dir, tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    prepare.prepare_dataset(data_dir, str(tmp_path / 'out'), **kwargs)


def test_verify_sources_detects_a_changed_file(data_dir, tmp_path):
  result = prepare.prepare_dataset(
    data_dir, str(tmp_path / 'p'), progress=False
  )
  changed = os.path.join(data_dir, 'HGG', BAD_CASE, f'{BAD_CASE}_flair.nii.gz')
  _with_nan(changed)
  problems = prepare.verify_sources(result)
  assert len(problems) == 1
  assert BAD_CASE in problems[0] and 'checksum changed' in problems[0]


def test_brats2023_layout(tmp_path):
  root = tmp_path / 'brats23'
  for index, case_id in enumerate(
    ['BraTS-CBICA-00001-000', 'BraTS-TCIA01-00002-000']
  ):
    _write_case(root, case_id, seed=index, layout=layouts.BRATS2023)
  result = prepare.prepare_dataset(
    str(root), str(tmp_path / 'p'), layout='brats2023', progress=False
  )
  assert result.clients == {
    'CBICA': ('BraTS-CBICA-00001-000',),
    'TCIA01': ('BraTS-TCIA01-00002-000',),
  }
  record = result.cases['BraTS-CBICA-00001-000']
  assert record.layout == 'brats2023'
  assert set(record.source_files) == {'t1n', 't1c', 't2w', 't2f', 'seg'}
  (parsed,) = _read_shard(result.shard_paths('CBICA')[0])
  _, labels = _volumes(0, layouts.BRATS2023)
  np.testing.assert_array_equal(
    parsed['regions'],
    layouts.labels_to_regions(labels, layouts.BRATS2023)[BRAIN],
  )
