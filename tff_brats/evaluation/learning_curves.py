"""The learning-curve figure of a federated run: Dice and ε against rounds.

Top: validation Dice of the mean and of each region (TC, WT, ET), from
`metrics.csv`'s `val_dice_mean` and `val_dice_<REGION>` columns (the
regions as `layouts.REGIONS` spells them). Bottom: ε of the worst
institution at δ on a log axis (ε runs from below 1 for a private run to
10⁹ for a run whose noise means nothing, which no linear axis shows), tight
(`epsilon_worst`, PLD) and summed (`epsilon_worst_summed`, basic
composition), and `--target_epsilon` as a horizontal line when one is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import math
from typing import Any

from tff_brats.data import layouts
from tff_brats.utils import atomic

DICE_COLUMNS = (
  ('val_dice_mean', 'mean'),
  *((f'val_dice_{region}', region) for region in layouts.REGIONS),
)
EPSILON_COLUMNS = (
  ('epsilon_worst', 'tight (PLD)'),
  ('epsilon_worst_summed', 'summed'),
)


def series(
  rows: Sequence[Mapping[str, Any]], key: str, *, positive: bool = False
) -> tuple[list[int], list[float]]:
  """`(rounds, values)` of a column; blank, NaN and infinite cells skipped.

  Args:
    rows: `metrics.csv` rows.
    key: The column.
    positive: Also skip values <= 0 (for a log axis).
  """
  xs, ys = [], []
  for row in rows:
    value = row.get(key, '')
    if value in ('', None):
      continue
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0):
      continue
    xs.append(int(row['round']))
    ys.append(number)
  return xs, ys


def learning_curves_figure(
  rows: Sequence[Mapping[str, Any]],
  delta: float,
  *,
  target_epsilon: float | None = None,
  unit: str = 'institution',
):
  """The figure (a `matplotlib.figure.Figure`; the caller closes it).

  Args:
    rows: `metrics.csv` rows (strings or numbers).
    delta: The δ of the ε columns (for the axis label).
    target_epsilon: Drawn as a line when given.
    unit: The unit of privacy, for the axis label ('institution' or
      'patient').
  """
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
  for key, label in DICE_COLUMNS:
    xs, ys = series(rows, key)
    if xs:
      top.plot(
        xs, ys, marker='o', label=label, linewidth=2 if label == 'mean' else 1
      )
  top.set_ylabel('validation Dice')
  top.set_ylim(0, 1)
  if top.get_lines():
    top.legend(loc='lower right')
  else:
    top.text(
      0.5, 0.5, 'not evaluated yet', ha='center', transform=top.transAxes
    )
  top.grid(alpha=0.3)
  drawn = False
  for (key, label), style in zip(EPSILON_COLUMNS, ('-', '--'), strict=True):
    xs, ys = series(rows, key, positive=True)
    if xs:
      bottom.plot(xs, ys, color='tab:red', linestyle=style, label=label)
      drawn = True
  if drawn:
    bottom.set_yscale('log')
    if target_epsilon is not None:
      bottom.axhline(
        target_epsilon,
        color='black',
        linestyle=':',
        label=f'target ε = {target_epsilon:g}',
      )
    bottom.set_ylabel(f'ε per {unit} at δ={delta:g}\n(worst, log scale)')
    bottom.legend(loc='lower right', fontsize='small')
  else:
    bottom.text(
      0.5,
      0.5,
      'no DP guarantee (ε = ∞)',
      ha='center',
      transform=bottom.transAxes,
    )
  bottom.set_xlabel('round')
  bottom.grid(alpha=0.3, which='both')
  fig.tight_layout()
  return fig


def write_learning_curves(
  rows: Sequence[Mapping[str, Any]],
  path: str,
  delta: float,
  *,
  target_epsilon: float | None = None,
  unit: str = 'institution',
) -> str:
  """Writes `learning_curves_figure` as a PNG (atomically); returns `path`."""
  from matplotlib import pyplot as plt

  fig = learning_curves_figure(
    rows, delta, target_epsilon=target_epsilon, unit=unit
  )
  try:
    with atomic.staged_file(path) as tmp:
      fig.savefig(tmp, dpi=100)
  finally:
    plt.close(fig)
  return path
