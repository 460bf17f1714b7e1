"""Atomic publication of output folders and files.

Outputs are written under a temporary sibling name and renamed into place
only when complete, so a crash, an exception or Ctrl-C never leaves a
half-written folder under the final name, and an existing folder is only
replaced once its successor is complete.
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


def write_text(path: str, text: str) -> None:
  """Writes a text file atomically (temporary file, fsync, rename)."""
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def _check_replaceable(final_dir: str, replace: bool) -> None:
  if replace or not os.path.lexists(final_dir):
    return
  if os.path.isdir(final_dir) and not os.listdir(final_dir):
    return
  raise FileExistsError(
    f'{final_dir} exists and is not empty; refusing to replace it.'
  )
