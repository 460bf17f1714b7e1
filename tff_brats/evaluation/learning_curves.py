"""The learning-curve figure of a federated run: Dice and ε against rounds."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence

from tff_brats.utils import atomic


def write_learning_curves(
  rows: Sequence[Mapping[str, str]], path: str, delta: float
) -> str:
  """PNG: validation Dice per region and mean, and ε (worst institution).

  Args:
    rows: `metrics.csv` rows (strings), with `round`, `val_dice_*` and
      `epsilon_worst` columns; blank, 'nan' and 'inf' cells are skipped.
    path: The PNG to write (atomically).
    delta: The δ of the ε column (for the axis label).

  Returns:
    `path`.
  """
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  def series(key):
    xs, ys = [], []
    for row in rows:
      value = row.get(key, '')
      if value not in ('', 'nan', 'inf'):
        xs.append(int(row['round']))
        ys.append(float(value))
    return xs, ys

  fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
  try:
    for key, label in (
      ('val_dice_mean', 'mean'),
      ('val_dice_tc', 'TC'),
      ('val_dice_wt', 'WT'),
      ('val_dice_et', 'ET'),
    ):
      xs, ys = series(key)
      top.plot(
        xs, ys, marker='o', label=label, linewidth=2 if label == 'mean' else 1
      )
    top.set_ylabel('validation Dice')
    top.set_ylim(0, 1)
    top.legend(loc='lower right')
    top.grid(alpha=0.3)
    xs, ys = series('epsilon_worst')
    if ys:
      bottom.plot(xs, ys, color='tab:red')
      bottom.set_ylabel(f'ε at δ={delta:g}\n(worst institution)')
    else:
      bottom.text(
        0.5,
        0.5,
        'no DP guarantee (ε = ∞)',
        ha='center',
        transform=bottom.transAxes,
      )
    bottom.set_xlabel('round')
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    with atomic.staged_file(path) as tmp:
      fig.savefig(tmp, dpi=100)
  finally:
    plt.close(fig)
  return path
