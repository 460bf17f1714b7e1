"""Tests of the learning-curve figure: every curve drawn, ε on a log axis."""

import os

import pytest

from tests import figure_checks
from tff_brats.evaluation import learning_curves


def _rows(epsilons=('0.5', '1.2', '2.0'), summed=('0.5', '2.0', '4.0')):
  rows = []
  for index, (tight, total) in enumerate(zip(epsilons, summed, strict=True)):
    evaluated = index != 1  # round 2 is not evaluated: blank cells
    rows.append(
      {
        'round': str(index + 1),
        'val_dice_mean': '0.5' if evaluated else '',
        'val_dice_TC': '0.4' if evaluated else '',
        'val_dice_WT': '0.7' if evaluated else '',
        'val_dice_ET': '0.3' if evaluated else '',
        'epsilon_worst': tight,
        'epsilon_worst_summed': total,
      }
    )
  return rows


def test_four_dice_curves_and_both_epsilons_on_a_log_axis(tmp_path):
  path = str(tmp_path / 'curves.png')
  with figure_checks.checking_figures() as saved:
    learning_curves.write_learning_curves(
      _rows(), path, 1e-5, target_epsilon=8.0, unit='patient'
    )
  (figure,) = saved
  top, bottom = figure.line_labels
  # The metrics.csv spelling of the regions (val_dice_TC, not val_dice_tc).
  assert top == ['mean', 'TC', 'WT', 'ET']
  assert bottom == ['tight (PLD)', 'summed', 'target ε = 8']
  assert figure.yscales == ['linear', 'log']
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_no_guarantee_and_no_evaluation_are_said_not_drawn(tmp_path):
  rows = _rows(epsilons=('inf',) * 3, summed=('inf',) * 3)
  for row in rows:
    for key in list(row):
      if key.startswith('val_'):
        row[key] = ''
  fig = learning_curves.learning_curves_figure(rows, 1e-5)
  try:
    summary = figure_checks.check_figure(fig)
    texts = [t.get_text() for ax in fig.get_axes() for t in ax.texts]
  finally:
    from matplotlib import pyplot as plt

    plt.close(fig)
  assert summary.line_labels == [[], []]
  assert 'no DP guarantee (ε = ∞)' in texts
  assert 'not evaluated yet' in texts


def test_a_legend_entry_without_data_is_caught(tmp_path):
  from matplotlib import pyplot as plt

  fig, ax = plt.subplots()
  try:
    ax.plot([1, 2], [0.1, 0.2], label='mean')
    ax.plot([], [], label='TC')  # what a misspelt column used to draw
    ax.legend()
    with pytest.raises(pytest.fail.Exception, match="'TC' draws no data"):
      figure_checks.check_figure(fig, os.path.join(str(tmp_path), 'x.png'))
  finally:
    plt.close(fig)
