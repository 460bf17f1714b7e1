"""Atomic publication of output folders and files: the project's one way.

Outputs are written under a temporary sibling name and renamed into place
only when complete, so a crash, an exception or Ctrl-C never leaves a
half-written folder or file under the final name, and an existing one is
only replaced once its successor is complete:

* `staged_directory(final_dir)`: a folder (model folders, SavedModels,
  prepared data);
* `staged_file(path)`: one file written by any writer that takes a path
  (NIfTI, PNG, CSV); the temporary name keeps the extension, so writers
  that pick a format by the name still work;
* `write_text(path, text)`: a text file.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
import shutil
import uuid


@contextlib.contextmanager
def staged_directory(final_dir: str, *, replace: bool = False) -> Iterator[str]:
  """Yields a temporary folder that becomes `final_dir` on success.

  The temporary folder is a sibling of `final_dir` (same file system, so the
  final rename is atomic) named `<final_dir>.tmp-<random>`. If the `with`
  body raises (also KeyboardInterrupt), the temporary folder is removed and
  `final_dir` is untouched.

  Args:
    final_dir: Where the finished folder must appear.
    replace: Whether an existing `final_dir` may be replaced. An existing
      empty folder is always replaced.

  Raises:
    FileExistsError: `final_dir` exists, is not empty and `replace` is
      False (checked before and again after the body).
  """
  final_dir = os.path.abspath(final_dir)
  _check_replaceable(final_dir, replace)
  parent = os.path.dirname(final_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = f'{final_dir}.tmp-{uuid.uuid4().hex[:8]}'
  os.mkdir(tmp)
  try:
    yield tmp
    _check_replaceable(final_dir, replace)
    publish_directory(tmp, final_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def publish_directory(tmp_dir: str, final_dir: str) -> None:
  """Renames `tmp_dir` to `final_dir`, replacing an existing folder.

  An existing `final_dir` is first renamed aside and only deleted after the
  new folder is in place, so at every moment `final_dir` is either the old
  complete folder or the new complete one.
  """
  old = None
  if os.path.lexists(final_dir):
    old = f'{final_dir}.old-{uuid.uuid4().hex[:8]}'
    os.rename(final_dir, old)
  try:
    os.rename(tmp_dir, final_dir)
  except BaseException:
    if old is not None:
      os.rename(old, final_dir)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path: str, *, replace: bool = True) -> Iterator[str]:
  """Yields a temporary path that becomes the file `path` on success.

  The temporary file is a hidden sibling, `.<stem>.tmp-<random><ext>` (same
  folder, so the rename is atomic; same extension, e.g. '.nii.gz' or
  '.png'). When the `with` body returns, the file is flushed to disk
  (fsync) and renamed over `path`. If the body raises (also
  KeyboardInterrupt), the temporary file is removed and `path` is
  untouched.

  Args:
    path: Where the finished file must appear; its folder must exist.
    replace: Whether an existing `path` may be replaced (checked before and
      again after the body, so a file that appeared meanwhile is kept).

  Raises:
    FileExistsError: `path` exists and `replace` is False.
    IsADirectoryError: `path` is a folder.
  """
  path = os.path.abspath(os.fspath(path))
  _check_file_replaceable(path, replace)
  folder, name = os.path.split(path)
  stem, extension = _split_extension(name)
  tmp = os.path.join(folder, f'.{stem}.tmp-{uuid.uuid4().hex[:8]}{extension}')
  try:
    yield tmp
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    _check_file_replaceable(path, replace)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_text(path: str, text: str, *, replace: bool = True) -> None:
  """Writes a text file atomically (see `staged_file`)."""
  with staged_file(path, replace=replace) as tmp, open(tmp, 'w') as f:
    f.write(text)


def _check_file_replaceable(path: str, replace: bool) -> None:
  if os.path.isdir(path):
    raise IsADirectoryError(f'{path} is a folder, not a file path.')
  if not replace and os.path.lexists(path):
    raise FileExistsError(f'{path} exists; refusing to replace it.')


def _split_extension(name: str) -> tuple[str, str]:
  """('case', '.nii.gz') for 'case.nii.gz'; ('a', '.png') for 'a.png'."""
  for double in ('.nii.gz', '.tar.gz'):
    if name.endswith(double) and len(name) > len(double):
      return name[: -len(double)], double
  stem, extension = os.path.splitext(name)
  return stem, extension


def _check_replaceable(final_dir: str, replace: bool) -> None:
  if replace or not os.path.lexists(final_dir):
    return
  if os.path.isdir(final_dir) and not os.listdir(final_dir):
    return
  raise FileExistsError(
    f'{final_dir} exists and is not empty; refusing to replace it.'
  )
