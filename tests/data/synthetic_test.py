"""Tests of tff_brats.data.synthetic."""

import json
import logging
import math
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tff_brats.data import layouts
from tff_brats.data import synthetic

SHAPE = (24, 24, 24)
# The partition code's token regexes (tff_brats.data partitions).
BRATS2018_ID = re.compile(r'^Brats\d\d_([A-Za-z0-9]+)_[A-Za-z0-9]+_\d+$')
BRATS2023_ID = re.compile(r'^BraTS-([A-Za-z0-9]+)-\d+-\d+$')


def _generate(output_dir, **kwargs):
  defaults = dict(num_cases=2, num_institutions=2, shape=SHAPE, progress=False)
  defaults.update(kwargs)
  return synthetic.generate_dataset(output_dir, **defaults)


def _files(root):
  return sorted(
    os.path.relpath(os.path.join(folder, name), root)
    for folder, _, names in os.walk(root)
    for name in names
  )


def _read(path):
  image = nib.load(path)
  return image, np.asanyarray(image.dataobj)


def _siblings(output_dir):
  parent, name = os.path.split(output_dir)
  return sorted(n for n in os.listdir(parent) if n.startswith(name))


class TestNaming:
  def test_tokens_are_the_paper_institutions_then_sites(self):
    assert synthetic.institution_tokens(15) == (
      '2013',
      'CBICA',
      'TCIA01',
      'TCIA02',
      'TCIA03',
      'TCIA04',
      'TCIA05',
      'TCIA06',
      'TCIA08',
      'TCIA09',
      'TCIA10',
      'TCIA12',
      'TCIA13',
      'SITE14',
      'SITE15',
    )
    assert synthetic.institution_tokens(2) == ('2013', 'CBICA')

  @pytest.mark.parametrize('token', ['2013', 'TCIA01', 'SITE14'])
  def test_case_ids_parse_with_the_partition_regexes(self, token):
    old = synthetic.case_id('brats2018', token, 7)
    new = synthetic.case_id('brats2023', token, 7)
    assert old == f'Brats18_{token}_007_1'
    assert new == f'BraTS-{token}-00007-000'
    assert BRATS2018_ID.match(old).group(1) == token
    assert BRATS2023_ID.match(new).group(1) == token
    assert not BRATS2018_ID.match(new)
    assert not BRATS2023_ID.match(old)


class TestInstitutionSizes:
  def test_paper_sizes_for_242_cases_are_the_paper_table(self):
    counts = synthetic.institution_case_counts(242, 13, 'paper')
    assert counts == [18, 77, 20, 30, 11, 7, 3, 6, 13, 9, 32, 5, 11]

  def test_paper_sizes_largest_remainder_by_hand(self):
    # Quotas 40 * (18, 77, 20, 30) / 145 = 4.97, 21.24, 5.52, 8.28; floors
    # (4, 21, 5, 8) leave 2 cases, given to the largest remainders 0.97, 0.52.
    assert synthetic.institution_case_counts(40, 4, 'paper') == [5, 21, 6, 8]

  def test_paper_sizes_give_every_institution_a_case(self):
    assert synthetic.institution_case_counts(13, 13, 'paper') == [1] * 13
    counts = synthetic.institution_case_counts(20, 13, 'paper')
    assert min(counts) == 1 and sum(counts) == 20
    assert counts[1] == max(counts)  # CBICA is the largest institution.

  def test_even_is_round_robin(self):
    assert synthetic.institution_case_counts(10, 4) == [3, 3, 2, 2]
    assert synthetic.assign_institutions(6, 4) == [0, 1, 2, 3, 0, 1]

  def test_paper_assignment_is_contiguous_blocks(self):
    assert synthetic.assign_institutions(6, 2, 'paper') == [0, 1, 1, 1, 1, 1]

  def test_dataset_uses_paper_sizes(self, tmp_path):
    summary = _generate(
      str(tmp_path / 'out'),
      num_cases=6,
      num_institutions=2,
      institution_sizes='paper',
    )
    # 6 * (18, 77) / 95 = 1.14, 4.86 -> (1, 5).
    assert [i['num_cases'] for i in summary['institutions']] == [1, 5]
    assert [c['institution'] for c in summary['cases']] == ['2013'] + [
      'CBICA'
    ] * 5


class TestFiles:
  def test_brats2018_names_and_grade_folders(self, tmp_path):
    out = str(tmp_path / 'out')
    # Golden grades for seed 0 and lgg_fraction 0.5 (case_grade stream):
    # cases 0 and 1 LGG, 2 and 3 HGG.
    summary = _generate(out, num_cases=4, lgg_fraction=0.5)
    expected = ['synthetic.json']
    for folder in (
      'LGG/Brats18_2013_000_1',
      'LGG/Brats18_CBICA_001_1',
      'HGG/Brats18_2013_002_1',
      'HGG/Brats18_CBICA_003_1',
    ):
      case = folder.split('/')[1]
      for suffix in ('t1', 't1ce', 't2', 'flair', 'seg'):
        expected.append(f'{folder}/{case}_{suffix}.nii.gz')
    assert _files(out) == sorted(expected)
    assert [c['path'] for c in summary['cases']] == [
      'LGG/Brats18_2013_000_1',
      'LGG/Brats18_CBICA_001_1',
      'HGG/Brats18_2013_002_1',
      'HGG/Brats18_CBICA_003_1',
    ]

  def test_brats2018_flat(self, tmp_path):
    out = str(tmp_path / 'out')
    _generate(out, num_cases=1, num_institutions=1, grade_folders=False)
    assert _files(out) == [
      'Brats18_2013_000_1/Brats18_2013_000_1_flair.nii.gz',
      'Brats18_2013_000_1/Brats18_2013_000_1_seg.nii.gz',
      'Brats18_2013_000_1/Brats18_2013_000_1_t1.nii.gz',
      'Brats18_2013_000_1/Brats18_2013_000_1_t1ce.nii.gz',
      'Brats18_2013_000_1/Brats18_2013_000_1_t2.nii.gz',
      'synthetic.json',
    ]

  def test_brats2023_names_and_labels(self, tmp_path):
    out = str(tmp_path / 'out')
    summary = _generate(out, layout='brats2023', lgg_fraction=0.0)
    assert _files(out) == sorted(
      [
        f'{case}/{case}-{suffix}.nii.gz'
        for case in ('BraTS-2013-00000-000', 'BraTS-CBICA-00001-000')
        for suffix in ('t1n', 't1c', 't2w', 't2f', 'seg')
      ]
      + ['synthetic.json']
    )
    for case in summary['cases']:
      _, seg = _read(
        os.path.join(out, case['path'], f'{case["case_id"]}-seg.nii.gz')
      )
      assert np.unique(seg).tolist() == [0, 1, 2, 3]
      assert set(case['tumour_voxels']) == {'1', '2', '3'}
      assert case['tumour_voxels']['3'] == np.count_nonzero(seg == 3)

  def test_nifti_read_back(self, tmp_path):
    out = str(tmp_path / 'out')
    shape, spacing = (24, 20, 16), (1.0, 1.2, 2.5)
    summary = _generate(
      out, num_cases=1, num_institutions=1, shape=shape, spacing=spacing
    )
    case = summary['cases'][0]
    expected = synthetic.generate_case(
      0, grade=case['grade'], shape=shape, spacing=spacing
    )
    folder = os.path.join(out, case['path'])
    for channel, suffix in enumerate(('t1', 't1ce', 't2', 'flair')):
      image, data = _read(
        os.path.join(folder, f'{case["case_id"]}_{suffix}.nii.gz')
      )
      assert data.shape == shape
      assert data.dtype == np.int16
      assert image.get_data_dtype() == np.int16
      assert image.header.get_zooms() == pytest.approx(spacing)
      assert image.header['qform_code'] == 1
      assert image.header['sform_code'] == 1
      # The header stores the affine in float32.
      np.testing.assert_allclose(image.affine, expected.affine, rtol=1e-6)
      np.testing.assert_array_equal(data, expected.image[..., channel])
      assert 100 < data.max() < 10000
    image, seg = _read(os.path.join(folder, f'{case["case_id"]}_seg.nii.gz'))
    assert seg.dtype == np.uint8
    assert image.header.get_zooms() == pytest.approx(spacing)
    np.testing.assert_array_equal(seg, expected.labels)

  def test_affine_matches_brats_orientation(self):
    np.testing.assert_array_equal(
      synthetic.nifti_affine((24, 20, 16), (1.0, 1.5, 2.0)),
      [[-1, 0, 0, 0], [0, -1.5, 0, 28.5], [0, 0, 2, 0], [0, 0, 0, 1]],
    )

  def test_manifest(self, tmp_path):
    out = str(tmp_path / 'out')
    summary = _generate(out, num_cases=3, seed=5)
    with open(os.path.join(out, 'synthetic.json')) as f:
      assert json.load(f) == summary
    assert summary['parameters'] == {
      'num_cases': 3,
      'num_institutions': 2,
      'shape': [24, 24, 24],
      'spacing': [1.0, 1.0, 1.0],
      'layout': 'brats2018',
      'grade_folders': True,
      'institution_sizes': 'even',
      'lgg_fraction': synthetic.BRATS2018_LGG_FRACTION,
      'seed': 5,
    }
    assert summary['tff_brats_version'] == '0.1.0'
    assert [i['num_cases'] for i in summary['institutions']] == [2, 1]
    assert summary['institutions'][1]['scanner']['noise_level'] == (
      synthetic.scanner_profile(1, seed=5).noise_level
    )
    for case in summary['cases']:
      _, seg = _read(
        os.path.join(out, case['path'], f'{case["case_id"]}_seg.nii.gz')
      )
      assert case['tumour_voxels'] == {
        str(label): int(np.count_nonzero(seg == label)) for label in (1, 2, 4)
      }
      assert case['grade'] == case['path'].split('/')[0]

  def test_progress_bar_on_stderr(self, tmp_path, capsys):
    _generate(str(tmp_path / 'a'), progress=True)
    captured = capsys.readouterr()
    assert 'synthetic cases' in captured.err
    assert '2/2' in captured.err
    assert captured.out == ''
    _generate(str(tmp_path / 'b'), progress=False)
    assert 'synthetic cases' not in capsys.readouterr().err


class TestContent:
  @pytest.mark.parametrize('layout', ['brats2018', 'brats2023'])
  @pytest.mark.parametrize('index', [0, 1, 2])
  def test_hgg_labels_and_nested_regions(self, layout, index):
    case = synthetic.generate_case(
      index, institution=index, shape=SHAPE, layout=layout
    )
    layout_ = layouts.get_layout(layout)
    assert case.image.dtype == np.int16
    assert case.labels.dtype == np.uint8
    assert np.unique(case.labels).tolist() == sorted(layout_.labels)
    regions = layouts.labels_to_regions(case.labels, layout_)
    tc, wt, et = (regions[..., i] for i in range(3))
    assert et.any() and (tc & ~et).any() and (wt & ~tc).any()
    assert not (et & ~tc).any() and not (tc & ~wt).any()
    assert not (wt & ~case.brain_mask).any()

  def test_lgg_has_little_or_no_enhancement(self):
    ratios = []
    for index in range(8):
      case = synthetic.generate_case(index, grade='LGG', shape=SHAPE)
      labels = case.labels
      assert set(np.unique(labels)) <= {0, 1, 2, 4}
      assert (labels == 1).any() and (labels == 2).any()
      enhancing = np.sum(labels == 4)
      ratios.append(enhancing / np.sum((labels == 1) | (labels == 4)))
    assert max(ratios) <= 0.1
    assert sum(r == 0 for r in ratios) >= 4

  @pytest.mark.parametrize('index', [0, 1, 2, 3])
  def test_relative_contrasts(self, index):
    case = synthetic.generate_case(index, institution=index, shape=SHAPE)
    t1, t1ce, t2, flair = (case.image[..., i].astype(float) for i in range(4))
    tissue, labels = case.tissue, case.labels
    csf = tissue == synthetic.CSF
    gm = tissue == synthetic.GREY_MATTER
    wm = tissue == synthetic.WHITE_MATTER
    normal = csf | gm | wm
    edema, necrosis, enhancing = labels == 2, labels == 1, labels == 4
    assert t1[wm].mean() > t1[gm].mean() > t1[csf].mean()
    assert t1ce[enhancing].mean() > t1ce[necrosis].mean()
    assert t1ce[enhancing].mean() > t1ce[wm].mean()
    assert t1[necrosis].mean() < t1[wm].mean()
    assert t2[csf].mean() > t2[gm].mean() > t2[wm].mean()
    assert t2[edema].mean() > t2[wm].mean()
    assert flair[edema].mean() > flair[normal].mean()
    assert flair[csf].mean() < flair[wm].mean()

  def test_skull_stripped_brain_fills_the_grid(self):
    case = synthetic.generate_case(0, shape=(32, 32, 32))
    brain = case.brain_mask
    np.testing.assert_array_equal(case.image[~brain], 0)
    assert case.image[brain].min() >= 1
    np.testing.assert_array_equal(case.tissue[~brain], synthetic.BACKGROUND)
    np.testing.assert_array_equal(case.labels[~brain], 0)
    for axis in range(3):
      other = tuple(a for a in range(3) if a != axis)
      extent = np.count_nonzero(brain.any(axis=other))
      assert 0.7 * 32 <= extent < 32
    assert 0.2 < brain.mean() < 0.5

  def test_tumours_vary_in_size_and_place(self):
    cases = [synthetic.generate_case(k, shape=SHAPE) for k in range(6)]
    sizes = [np.count_nonzero(c.labels) for c in cases]
    centres = [np.argwhere(c.labels > 0).mean(axis=0) for c in cases]
    assert max(sizes) > 2 * min(sizes)
    distances = [
      np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[:i]
    ]
    assert min(distances) > 1.0

  def test_anatomy_is_independent_of_the_scanner(self):
    a = synthetic.generate_case(3, institution=0, shape=SHAPE)
    b = synthetic.generate_case(3, institution=1, shape=SHAPE)
    np.testing.assert_array_equal(a.tissue, b.tissue)
    assert a.case_id == 'Brats18_2013_003_1'
    assert b.case_id == 'Brats18_CBICA_003_1'
    assert not np.array_equal(a.image, b.image)


class TestInstitutions:
  def test_profiles_are_fixed_per_institution(self):
    assert synthetic.scanner_profile(1, seed=0) == synthetic.scanner_profile(
      1, seed=0
    )
    profiles = [synthetic.scanner_profile(i, seed=0) for i in range(4)]
    assert len(set(profiles)) == 4
    assert synthetic.scanner_profile(0, seed=1) != profiles[0]
    for p in profiles:
      assert all(100 < s < 5000 for s in p.intensity_scale)
      assert 0.01 <= p.noise_level <= 0.06
      assert 0.05 <= p.bias_strength <= 0.35

  def test_mean_brain_intensity_separates_institutions(self):
    # Check: the same four anatomies (cases 0-3) scanned at institutions 0
    # and 1; the ranges of the per-case median brain FLAIR intensity of the
    # two institutions must not overlap, i.e. the between-institution
    # difference exceeds the within-institution spread.
    medians = {}
    for institution in (0, 1):
      medians[institution] = [
        np.median(case.image[..., 3][case.brain_mask])
        for case in (
          synthetic.generate_case(k, institution=institution, shape=SHAPE)
          for k in range(4)
        )
      ]
    low, high = sorted(medians.values(), key=max)
    assert max(low) < min(high), medians
    spread = max(np.ptp(v) for v in medians.values())
    assert min(high) - max(low) > spread, medians

  def test_noise_level_follows_the_profile(self):
    # Residual of a 2x2x2 box mean inside white matter is dominated by
    # noise; its spread relative to the WM level orders institutions 1
    # (noise 0.052) and 0 (noise 0.032) of seed 0 for every case.
    def relative_noise(case):
      t1 = case.image[..., 0].astype(float)
      wm = case.tissue == synthetic.WHITE_MATTER
      diff = (t1[1:, :, :] - t1[:-1, :, :])[wm[1:] & wm[:-1]]
      return np.std(diff) / np.median(t1[wm])

    noise = {
      i: [
        relative_noise(synthetic.generate_case(k, institution=i, shape=SHAPE))
        for k in range(3)
      ]
      for i in (0, 1)
    }
    p0 = synthetic.scanner_profile(0, seed=0).noise_level
    p1 = synthetic.scanner_profile(1, seed=0).noise_level
    assert p1 > 1.4 * p0
    assert max(noise[0]) < min(noise[1]), noise


class TestDeterminism:
  def test_same_seed_identical_other_seed_differs(self):
    a = synthetic.generate_case(2, institution=1, shape=SHAPE, seed=3)
    b = synthetic.generate_case(2, institution=1, shape=SHAPE, seed=3)
    c = synthetic.generate_case(2, institution=1, shape=SHAPE, seed=4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.image.tobytes() == b.image.tobytes()
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.labels, c.labels)

  def test_cases_differ_from_each_other(self):
    a = synthetic.generate_case(0, shape=SHAPE)
    b = synthetic.generate_case(1, shape=SHAPE)
    assert not np.array_equal(a.labels, b.labels)

  def test_case_independent_of_num_cases(self, tmp_path):
    small = _generate(str(tmp_path / 'small'), num_cases=2)
    large = _generate(str(tmp_path / 'large'), num_cases=5)
    assert small['cases'] == large['cases'][:2]
    for case in small['cases']:
      for suffix in ('t1', 't1ce', 't2', 'flair', 'seg'):
        name = os.path.join(case['path'], f'{case["case_id"]}_{suffix}.nii.gz')
        _, a = _read(str(tmp_path / 'small' / name))
        _, b = _read(str(tmp_path / 'large' / name))
        assert a.tobytes() == b.tobytes()
    index = 1
    case = synthetic.generate_case(
      index, institution=1, grade=small['cases'][index]['grade'], shape=SHAPE
    )
    path = os.path.join(
      str(tmp_path / 'large'),
      small['cases'][index]['path'],
      f'{case.case_id}_seg.nii.gz',
    )
    np.testing.assert_array_equal(_read(path)[1], case.labels)

  def test_grade_draw(self):
    grades = [
      synthetic.case_grade(k, lgg_fraction=0.5, seed=0) for k in range(4)
    ]
    assert grades == ['LGG', 'LGG', 'HGG', 'HGG']
    assert {
      synthetic.case_grade(k, lgg_fraction=0.0, seed=0) for k in range(20)
    } == {'HGG'}
    assert {
      synthetic.case_grade(k, lgg_fraction=1.0, seed=0) for k in range(20)
    } == {'LGG'}


class TestAtomicWrites:
  def test_rerun_is_a_no_op(self, tmp_path, caplog):
    out = str(tmp_path / 'out')
    first = _generate(out, seed=2)
    manifest = os.path.join(out, 'synthetic.json')
    before = {
      path: os.stat(os.path.join(out, path)).st_mtime_ns for path in _files(out)
    }
    inode = os.stat(out).st_ino
    with caplog.at_level(logging.INFO, logger=synthetic.__name__):
      second = _generate(out, seed=2)
    assert second == first
    assert 'nothing to do' in caplog.text
    assert os.stat(out).st_ino == inode
    assert {
      path: os.stat(os.path.join(out, path)).st_mtime_ns for path in _files(out)
    } == before
    assert os.path.exists(manifest)
    assert _siblings(out) == ['out']

  def test_different_parameters_name_the_difference(self, tmp_path):
    out = str(tmp_path / 'out')
    _generate(out, seed=2)
    with pytest.raises(FileExistsError) as error:
      _generate(out, seed=3, num_cases=3)
    message = str(error.value)
    assert 'num_cases=3 (on disk: 2)' in message
    assert 'seed=3 (on disk: 2)' in message
    assert 'shape' not in message
    assert 'overwrite=True' in message
    with pytest.raises(FileExistsError, match=r"layout='brats2023'"):
      _generate(out, seed=2, layout='brats2023')
    with open(os.path.join(out, 'synthetic.json')) as f:
      assert json.load(f)['parameters']['seed'] == 2

  def test_overwrite_replaces_the_data(self, tmp_path):
    out = str(tmp_path / 'out')

    def first_seg(summary):
      case = summary['cases'][0]
      name = f'{case["case_id"]}_seg.nii.gz'
      return _read(os.path.join(out, case['path'], name))[1]

    old = _generate(out, seed=2)
    old_seg = first_seg(old)
    summary = _generate(out, seed=3, overwrite=True)
    assert summary['parameters']['seed'] == 3
    with open(os.path.join(out, 'synthetic.json')) as f:
      assert json.load(f) == summary
    assert not np.array_equal(old_seg, first_seg(summary))
    assert _siblings(out) == ['out']

  def test_foreign_folder_is_never_touched(self, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    for overwrite in (False, True):
      with pytest.raises(
        FileExistsError, match=re.escape('has no synthetic.json')
      ):
        _generate(str(out), overwrite=overwrite)
    assert os.listdir(out) == ['notes.txt']
    assert _siblings(str(out)) == ['out']

  def test_empty_folder_is_used(self, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    _generate(str(out))
    assert (out / 'synthetic.json').exists()

  def test_file_in_the_way_is_an_error(self, tmp_path):
    out = tmp_path / 'out'
    out.write_text('x')
    with pytest.raises(FileExistsError, match='must be a folder'):
      _generate(str(out))

  def test_missing_files_are_reported(self, tmp_path):
    out = str(tmp_path / 'out')
    summary = _generate(out)
    case = summary['cases'][0]
    os.remove(os.path.join(out, case['path'], f'{case["case_id"]}_t2.nii.gz'))
    with pytest.raises(FileExistsError, match='1 files are missing'):
      _generate(out)

  def test_failure_leaves_nothing_behind(self, tmp_path, monkeypatch):
    out = str(tmp_path / 'nested' / 'out')
    written = []
    real_write = synthetic._write_nifti

    def failing_write(array, affine, path):
      if len(written) == 7:  # In the middle of the second case.
        raise RuntimeError('disk full')
      written.append(path)
      real_write(array, affine, path)

    monkeypatch.setattr(synthetic, '_write_nifti', failing_write)
    with pytest.raises(RuntimeError, match='disk full'):
      _generate(out)
    assert len(written) == 7
    assert all('.tmp-' in p for p in written)
    assert not os.path.exists(out)
    assert _siblings(out) == []

  def test_failed_overwrite_keeps_the_old_data(self, tmp_path, monkeypatch):
    out = str(tmp_path / 'out')
    first = _generate(out, seed=2)

    def failing_write(array, affine, path):
      raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, '_write_nifti', failing_write)
    with pytest.raises(KeyboardInterrupt):
      _generate(out, seed=3, overwrite=True)
    with open(os.path.join(out, 'synthetic.json')) as f:
      assert json.load(f) == first
    assert _siblings(out) == ['out']


class TestValidation:
  @pytest.mark.parametrize(
    'kwargs, message',
    [
      ({'num_cases': 0}, 'num_cases must be a positive integer. Found 0.'),
      ({'num_cases': 2.5}, 'num_cases must be a positive integer. Found 2.5.'),
      (
        {'num_institutions': 0},
        'num_institutions must be an integer between 1 and num_cases (2). '
        'Found 0.',
      ),
      (
        {'num_institutions': 3},
        'num_institutions must be an integer between 1 and num_cases (2). '
        'Found 3.',
      ),
      (
        {'shape': (8, 24, 24)},
        'shape must be 3 integers, each at least 16. Found (8, 24, 24).',
      ),
      (
        {'shape': (24, 24)},
        'shape must be 3 integers, each at least 16. Found (24, 24).',
      ),
      (
        {'spacing': (1.0, 0.0, 1.0)},
        'spacing must be 3 positive finite numbers (mm). Found (1.0, 0.0, 1.0).',
      ),
      (
        {'spacing': (1.0, math.nan, 1.0)},
        'spacing must be 3 positive finite numbers (mm). Found (1.0, nan, 1.0).',
      ),
      (
        {'layout': 'brats2019'},
        "layout must be one of brats2018, brats2023. Found 'brats2019'.",
      ),
      (
        {'institution_sizes': 'uneven'},
        "institution_sizes must be one of even, paper. Found 'uneven'.",
      ),
      (
        {
          'num_cases': 20,
          'num_institutions': 14,
          'institution_sizes': 'paper',
        },
        "num_institutions must be at most 13 with institution_sizes='paper'. "
        'Found 14.',
      ),
      (
        {'lgg_fraction': 1.5},
        'lgg_fraction must be in [0, 1]. Found 1.5.',
      ),
      ({'seed': -1}, 'seed must be a non-negative integer. Found -1.'),
      (
        {'layout': 'brats2023', 'grade_folders': True},
        "grade_folders must be False or None with layout 'brats2023' (only "
        'the 2018 layout has HGG/LGG folders). Found True.',
      ),
    ],
  )
  def test_bad_arguments(self, tmp_path, kwargs, message):
    out = str(tmp_path / 'out')
    with pytest.raises(ValueError) as error:
      _generate(out, **kwargs)
    assert str(error.value) == message
    assert os.listdir(tmp_path) == []

  def test_bad_case_arguments(self):
    with pytest.raises(
      ValueError,
      match=re.escape("grade must be one of HGG, LGG. Found 'GBM'."),
    ):
      synthetic.generate_case(0, grade='GBM', shape=SHAPE)
    with pytest.raises(
      ValueError,
      match=re.escape('case_index must be a non-negative integer. Found -1.'),
    ):
      synthetic.generate_case(-1, shape=SHAPE)


def test_library_does_not_import_tensorflow_or_flags():
  code = (
    'import sys; import tff_brats.data.synthetic; '
    "print(sorted(m for m in ('tensorflow', 'tensorflow_federated', "
    "'absl.flags') if m in sys.modules))"
  )
  result = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    check=True,
    cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
  )
  assert result.stdout.strip() == '[]'
