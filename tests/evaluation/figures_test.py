"""Tests for tff_brats.evaluation.figures."""

import matplotlib.figure
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from tests import figure_checks
from tff_brats.evaluation import figures


def _regions(shape, box):
  regions = np.zeros((*shape, 3), bool)
  regions[box] = True
  return regions


def test_tumour_slice_index_is_the_centre_of_mass():
  regions = np.zeros((4, 5, 10, 3), bool)
  regions[1, 1, 2, 1] = True
  regions[1, 1, 6, 1] = True
  assert figures.tumour_slice_index(regions, axis=2) == 4
  assert figures.tumour_slice_index(regions, axis=0) == 1
  empty = np.zeros((4, 5, 10, 3), bool)
  assert figures.tumour_slice_index(empty, axis=2) == 5


def test_overlay_colours():
  image = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
  regions = np.zeros((4, 4, 3), bool)
  regions[0, 0] = (False, True, False)  # oedema only
  regions[0, 1] = (True, True, False)  # necrotic core
  regions[0, 2] = (True, True, True)  # enhancing
  rgb = figures.overlay(image, regions)
  assert rgb.shape == (4, 4, 3) and rgb.dtype == np.float32
  # Untouched voxels stay grey.
  assert np.allclose(rgb[3, 3], rgb[3, 3, 0])
  dominant = [int(np.argmax(rgb[0, j] - rgb[0, j].min())) for j in range(3)]
  assert dominant[0] == 1  # green
  assert dominant[1] == 0  # red
  # Yellow: red and green both well above blue.
  assert rgb[0, 2, 0] > rgb[0, 2, 2] + 0.2 and rgb[0, 2, 1] > rgb[0, 2, 2] + 0.2


def test_case_panels_shape():
  image = np.random.default_rng(0).normal(size=(6, 7, 8, 4))
  truth = _regions((6, 7, 8), np.s_[2:4, 2:4, 3:5])
  panels = figures.case_panels(image, truth, truth)
  assert panels.shape == (6, 21, 3)
  assert panels.dtype == np.uint8
  # Ground truth and prediction panels are identical here, the image one not.
  np.testing.assert_array_equal(panels[:, 7:14], panels[:, 14:21])
  assert not np.array_equal(panels[:, :7], panels[:, 7:14])


def _one_case():
  image = np.random.default_rng(1).normal(size=(12, 12, 10, 4))
  truth = _regions((12, 12, 10), np.s_[3:7, 3:7, 4:6])
  return [('case-a', image, truth, truth)]


def test_save_case_figure(tmp_path):
  image = np.random.default_rng(1).normal(size=(12, 12, 10, 4))
  truth = _regions((12, 12, 10), np.s_[3:7, 3:7, 4:6])
  prediction = _regions((12, 12, 10), np.s_[4:8, 3:7, 4:6])
  path = str(tmp_path / 'cases.png')
  with figure_checks.checking_figures() as saved:
    out = figures.save_case_figure(
      path,
      [('case-a', image, truth, prediction), ('case-b', image, truth, truth)],
      scores=[{'Dice WT': 0.75}, {'Dice WT': 1.0}],
    )
  assert out == path
  # The colours are explained.
  (figure,) = saved
  assert figure.figure_legends == [
    ['oedema (WT − TC)', 'necrotic core (TC − ET)', 'enhancing tumour (ET)']
  ]
  png = matplotlib.image.imread(path)
  assert png.shape[0] == 2 * 320 and png.shape[1] == 900  # 2 rows at 100 dpi
  assert sorted(p.name for p in tmp_path.iterdir()) == ['cases.png']


def test_save_case_figure_needs_cases(tmp_path):
  with pytest.raises(ValueError, match='cases must not be empty'):
    figures.save_case_figure(str(tmp_path / 'x.png'), [])


def test_save_case_figure_replaces_an_existing_file(tmp_path):
  path = tmp_path / 'cases.png'
  path.write_bytes(b'old figure')
  figures.save_case_figure(str(path), _one_case())
  assert path.read_bytes().startswith(b'\x89PNG\r\n')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['cases.png']


def test_save_case_figure_error_leaves_the_old_file_and_no_temporary(
  tmp_path, monkeypatch
):
  def fail_half_way(self, fname, **kwargs):
    del self, kwargs  # unused
    with open(fname, 'wb') as f:
      f.write(b'\x89PNG half')
    raise OSError('disk full')

  monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', fail_half_way)
  path = tmp_path / 'cases.png'
  path.write_bytes(b'old figure')
  open_figures = plt.get_fignums()
  with pytest.raises(OSError, match='disk full'):
    figures.save_case_figure(str(path), _one_case())
  assert path.read_bytes() == b'old figure'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['cases.png']
  assert plt.get_fignums() == open_figures  # the figure is closed too


def test_save_case_figure_writes_png_whatever_the_name(tmp_path):
  path = tmp_path / 'cases.figure'
  figures.save_case_figure(str(path), _one_case())
  assert path.read_bytes().startswith(b'\x89PNG\r\n')
