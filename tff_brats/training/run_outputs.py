"""Files every training run writes: hyper-parameters, metrics CSV, TensorBoard.

A run folder holds `hparams.json` (the arguments the run was started with)
next to `metrics.csv` (one row per step), so every number can be traced to
the settings that produced it. On `--resume` the saved hyper-parameters
must match the new ones (a resumed run with other settings would produce
numbers that belong to neither). `MetricsRelease` releases each row through
`tff.program` release managers to the CSV and to TensorBoard; releasing
step k replaces the rows from k on, so a crash between a CSV write and a
checkpoint never duplicates or loses a row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from collections.abc import Sequence
import csv
import json
import math
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_brats.data import layouts
from tff_brats.evaluation import figures
from tff_brats.utils import atomic

HPARAMS_NAME = 'hparams.json'
METRICS_NAME = 'metrics.csv'
TENSORBOARD_NAME = 'tensorboard'


def write_hparams(run_dir: str, hparams: Mapping[str, Any]) -> str:
  """Writes `hparams.json` (atomically); returns its path."""
  path = os.path.join(run_dir, HPARAMS_NAME)
  atomic.write_text(path, json.dumps(_jsonable(hparams), indent=1) + '\n')
  return path


def check_resumable(
  run_dir: str, hparams: Mapping[str, Any], *, ignore: Sequence[str] = ()
) -> None:
  """Raises ValueError unless `run_dir` was started with `hparams`.

  Args:
    run_dir: The run folder.
    hparams: The new run's hyper-parameters.
    ignore: Keys allowed to differ (e.g. the total number of epochs, which
      may be raised to train longer).
  """
  path = os.path.join(run_dir, HPARAMS_NAME)
  if not os.path.exists(path):
    raise ValueError(
      f'resume needs a run folder with {HPARAMS_NAME}. Found none in '
      f'{run_dir!r}.'
    )
  with open(path) as f:
    saved = json.load(f)
  new = _jsonable(hparams)
  differing = sorted(
    k
    for k in set(saved) | set(new)
    if k not in ignore and saved.get(k) != new.get(k)
  )
  if differing:
    details = '; '.join(
      f'{k}: saved {saved.get(k)!r}, now {new.get(k)!r}' for k in differing
    )
    raise ValueError(
      f'hyper-parameters must match the run being resumed ({path}). '
      f'Found differences: {details}.'
    )


def prepare_run_dir(
  run_dir: str,
  hparams: Mapping[str, Any],
  *,
  resume: bool,
  ignore: Sequence[str] = (),
) -> None:
  """Creates a new run folder, or checks a resumed one, and writes hparams.

  Raises:
    ValueError: A new run's folder exists and is not empty, or a resumed
      run's hyper-parameters differ (other than `ignore`).
  """
  if resume:
    check_resumable(run_dir, hparams, ignore=ignore)
    write_hparams(run_dir, hparams)
    return
  if os.path.exists(run_dir) and os.listdir(run_dir):
    raise ValueError(
      f'run_dir must be new or empty (or pass resume). Found files in '
      f'{run_dir!r}.'
    )
  os.makedirs(run_dir, exist_ok=True)
  write_hparams(run_dir, hparams)


def validation_columns(evaluation: Any | None) -> dict[str, Any]:
  """`val_<metric>_<region>` means of an `evaluate.Evaluation` ('' if None).

  The CSV columns both trainers write for an evaluated (or, with None, a
  not evaluated) epoch or round.
  """
  columns = {}
  for region in (*layouts.REGIONS, 'mean'):
    for metric in ('dice', 'hd95'):
      key = f'{metric}_{region}'
      columns[f'val_{key}'] = (
        '' if evaluation is None else evaluation.summary[key]['mean']
      )
  return columns


class MetricsRelease:
  """Releases a run's metrics rows through `tff.program` release managers.

  Each `release(row, step, evaluation)` goes to

  * `metrics.csv` (`tff.program.CSVFileReleaseManager`, keyed by the step
    column): releasing step k first drops every row with a step >= k, so a
    run resumed from an earlier checkpoint rewrites the rows it repeats;
  * `tensorboard/` (`tff.program.TensorBoardReleaseManager`): every finite
    number of the row as a scalar (blank cells, text and NaN/inf stay in the
    CSV only), plus the evaluation's overlay images
    (`figures.case_panels`), which release managers do not handle, through
    a summary writer of our own in the same folder.

  Attributes:
    csv_path: The CSV file.
  """

  def __init__(self, run_dir: str, step_column: str):
    self.csv_path = os.path.join(run_dir, METRICS_NAME)
    self._step_column = step_column
    self._csv = tff.program.CSVFileReleaseManager(
      self.csv_path, key_fieldname=step_column
    )
    log_dir = os.path.join(run_dir, TENSORBOARD_NAME)
    self._tensorboard = _TensorBoardReleaseManager(log_dir)
    self._images = tf.summary.create_file_writer(log_dir)

  def release(
    self, row: Mapping[str, Any], evaluation: Any | None = None
  ) -> None:
    """Releases one row (its step is `row[step_column]`), then flushes.

    Args:
      row: Column -> value; the step column first, as in the CSV.
      evaluation: The step's `evaluate.Evaluation` (None: not evaluated);
        its `examples` become images `validation/<case_id>`.
    """
    step = int(row[self._step_column])
    values = {k: v for k, v in row.items() if k != self._step_column}
    scalars = {
      k: v
      for k, v in values.items()
      if isinstance(v, int | float)
      and not isinstance(v, bool)
      and math.isfinite(v)
    }

    async def release_both():
      await asyncio.gather(
        self._csv.release(values, key=step),
        self._tensorboard.release(scalars, key=step),
      )

    asyncio.run(release_both())
    self._tensorboard.flush()
    examples = () if evaluation is None else evaluation.examples
    with self._images.as_default(step=step):
      for case_id, image, truth, prediction in examples:
        panels = figures.case_panels(image, truth, prediction)
        tf.summary.image(f'validation/{case_id}', panels[np.newaxis])
    self._images.flush()

  def rows(self) -> list[dict[str, str]]:
    """The CSV's rows (strings), in step order."""
    if not os.path.exists(self.csv_path):
      return []
    with open(self.csv_path, newline='') as f:
      return list(csv.DictReader(f))


class _TensorBoardReleaseManager(tff.program.TensorBoardReleaseManager):
  """TFF's TensorBoard release manager, flushed after every release."""

  def flush(self) -> None:
    # TFF keeps its summary writer private and flushes it only every two
    # minutes; readers of a run (and its tests) want every released step.
    self._summary_writer.flush()


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_jsonable(v) for v in value]
  return value
