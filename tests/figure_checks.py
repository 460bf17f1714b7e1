"""Checks every figure a piece of code saves: each legend entry has data.

`checking_figures()` wraps `matplotlib.figure.Figure.savefig` while it is
active: before a figure is saved, every legend of every axes must name
only artists that draw something (a line with at least one finite point,
a collection with at least one element), and list exactly the labels of
the artists that carry one. A label whose data column was misspelt
(`val_dice_tc` for `val_dice_TC`) leaves an empty line behind and fails
here. The saved figures' summaries are collected for further checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

from matplotlib import collections as mpl_collections
from matplotlib import figure as mpl_figure
from matplotlib import lines as mpl_lines
import pytest


@dataclasses.dataclass
class SavedFigure:
  """What one saved figure showed: per axes, its legend labels and scale."""

  path: str
  legends: list[list[str]]
  yscales: list[str]
  line_labels: list[list[str]]
  figure_legends: list[list[str]] = dataclasses.field(default_factory=list)


def _has_data(artist) -> bool:
  if isinstance(artist, mpl_lines.Line2D):
    xs, ys = artist.get_xdata(), artist.get_ydata()
    return any(
      math.isfinite(float(x)) and math.isfinite(float(y))
      for x, y in zip(xs, ys, strict=False)
    )
  if isinstance(artist, mpl_collections.Collection):
    return len(artist.get_offsets()) > 0 or len(artist.get_paths()) > 0
  return True  # patches and other artists: drawn by construction


def check_figure(fig, path: str = '?') -> SavedFigure:
  """Fails the test if a legend entry of `fig` has no data; summarises it."""
  legends, yscales, line_labels = [], [], []
  for ax in fig.get_axes():
    handles, labels = ax.get_legend_handles_labels()
    legend = ax.get_legend()
    shown = [] if legend is None else [t.get_text() for t in legend.get_texts()]
    if legend is not None and sorted(shown) != sorted(labels):
      pytest.fail(
        f'{path}: the legend lists {shown}, but the labelled artists are '
        f'{labels}.'
      )
    for handle, label in zip(handles, labels, strict=True):
      if not _has_data(handle):
        pytest.fail(f'{path}: legend entry {label!r} draws no data.')
    legends.append(shown)
    yscales.append(ax.get_yscale())
    line_labels.append(
      [line.get_label() for line in ax.get_lines() if _has_data(line)]
    )
  figure_legends = []
  for legend in fig.legends:  # figure-level legends (their own handles)
    texts = [t.get_text() for t in legend.get_texts()]
    handles = legend.legend_handles
    if len(handles) != len(texts):
      pytest.fail(f'{path}: a figure legend lists {texts} for {handles}.')
    figure_legends.append(texts)
  return SavedFigure(path, legends, yscales, line_labels, figure_legends)


@contextlib.contextmanager
def checking_figures():
  """Checks every figure saved inside the block; yields the summaries."""
  saved: list[SavedFigure] = []
  original = mpl_figure.Figure.savefig

  def savefig(self, fname, *args, **kwargs):
    saved.append(check_figure(self, str(fname)))
    return original(self, fname, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(mpl_figure.Figure, 'savefig', savefig)
    yield saved
