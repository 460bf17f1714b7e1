"""The error raised for bad input data.

Every data error names what a user needs to find and fix the problem: the
case, the file, the field and the offending value. The message always starts
with the case and the file when they are known, e.g.

  case 'Brats18_CBICA_AAB_1', file '/data/HGG/Brats18_CBICA_AAB_1/
  Brats18_CBICA_AAB_1_seg.nii.gz': label must be one of [0, 1, 2, 4]
  (BraTS 2018-2021 convention). Found 3 in 1520 voxels.
"""

from __future__ import annotations

import os


class BratsDataError(ValueError):
  """Bad or inconsistent BraTS input (files, partitions, manifests)."""

  def __init__(
    self,
    message: str,
    *,
    case_id: str | None = None,
    path: str | os.PathLike[str] | None = None,
  ):
    where = []
    if case_id is not None:
      where.append(f'case {case_id!r}')
    if path is not None:
      where.append(f'file {os.fspath(path)!r}')
    text = f'{", ".join(where)}: {message}' if where else message
    super().__init__(text)
    self.case_id = case_id
    self.path = None if path is None else os.fspath(path)
