"""Tests for tff_brats.utils.atomic."""

import os

import pytest

from tff_brats.utils import atomic


def _listing(folder):
  return sorted(os.listdir(folder))


def test_staged_directory_publishes_on_success(tmp_path):
  final = tmp_path / 'out'
  with atomic.staged_directory(str(final)) as tmp:
    assert os.path.basename(tmp).startswith('out.tmp-')
    assert not final.exists()  # nothing under the final name while writing
    with open(os.path.join(tmp, 'a.txt'), 'w') as f:
      f.write('done')
  assert (final / 'a.txt').read_text() == 'done'
  assert _listing(tmp_path) == ['out']


def test_staged_directory_removes_everything_on_error(tmp_path):
  final = tmp_path / 'out'
  with pytest.raises(RuntimeError, match='boom'):
    with atomic.staged_directory(str(final)) as tmp:
      with open(os.path.join(tmp, 'half.txt'), 'w') as f:
        f.write('half')
      raise RuntimeError('boom')
  assert _listing(tmp_path) == []


def test_staged_directory_cleans_up_on_keyboard_interrupt(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with atomic.staged_directory(str(tmp_path / 'out')):
      raise KeyboardInterrupt
  assert _listing(tmp_path) == []


def test_existing_folder_is_refused_without_replace(tmp_path):
  final = tmp_path / 'out'
  final.mkdir()
  (final / 'old.txt').write_text('old')
  with pytest.raises(FileExistsError, match='out exists and is not empty'):
    with atomic.staged_directory(str(final)):
      pass
  assert (final / 'old.txt').read_text() == 'old'
  assert _listing(tmp_path) == ['out']


def test_folder_appearing_while_writing_is_not_clobbered(tmp_path):
  final = tmp_path / 'out'
  with pytest.raises(FileExistsError), atomic.staged_directory(str(final)):
    final.mkdir()
    (final / 'theirs.txt').write_text('theirs')
  assert _listing(final) == ['theirs.txt']
  assert _listing(tmp_path) == ['out']


def test_empty_existing_folder_is_replaced(tmp_path):
  final = tmp_path / 'out'
  final.mkdir()
  with atomic.staged_directory(str(final)) as tmp:
    open(os.path.join(tmp, 'new.txt'), 'w').close()
  assert _listing(final) == ['new.txt']


def test_replace_swaps_in_the_new_folder(tmp_path):
  final = tmp_path / 'out'
  final.mkdir()
  (final / 'old.txt').write_text('old')
  with atomic.staged_directory(str(final), replace=True) as tmp:
    open(os.path.join(tmp, 'new.txt'), 'w').close()
    assert (final / 'old.txt').exists()  # old folder intact until the end
  assert _listing(final) == ['new.txt']
  assert _listing(tmp_path) == ['out']


def test_publish_restores_old_folder_if_rename_fails(tmp_path, monkeypatch):
  final = tmp_path / 'out'
  final.mkdir()
  (final / 'old.txt').write_text('old')
  tmp = tmp_path / 'out.tmp-x'
  tmp.mkdir()
  real_rename = os.rename
  calls = []

  def failing_second_rename(src, dst):
    calls.append((src, dst))
    if len(calls) == 2:
      raise OSError('disk full')
    real_rename(src, dst)

  monkeypatch.setattr(os, 'rename', failing_second_rename)
  with pytest.raises(OSError, match='disk full'):
    atomic.publish_directory(str(tmp), str(final))
  monkeypatch.undo()
  assert (final / 'old.txt').read_text() == 'old'


def test_write_text_replaces_atomically(tmp_path):
  path = tmp_path / 'f.json'
  path.write_text('old')
  atomic.write_text(str(path), 'new')
  assert path.read_text() == 'new'
  assert _listing(tmp_path) == ['f.json']


def test_write_text_failure_keeps_old_and_leaves_no_temp(tmp_path, monkeypatch):
  path = tmp_path / 'f.json'
  path.write_text('old')

  def failing_replace(src, dst):
    raise OSError('no space')

  monkeypatch.setattr(os, 'replace', failing_replace)
  with pytest.raises(OSError, match='no space'):
    atomic.write_text(str(path), 'new')
  monkeypatch.undo()
  assert path.read_text() == 'old'
  assert _listing(tmp_path) == ['f.json']


def test_staged_file_publishes_on_success_keeping_the_extension(tmp_path):
  final = tmp_path / 'case.nii.gz'
  with atomic.staged_file(str(final)) as tmp:
    name = os.path.basename(tmp)
    assert name.startswith('.case.tmp-') and name.endswith('.nii.gz')
    assert os.path.dirname(tmp) == str(tmp_path)
    with open(tmp, 'w') as f:
      f.write('labels')
    assert not final.exists()  # nothing under the final name while writing
  assert final.read_text() == 'labels'
  assert _listing(tmp_path) == ['case.nii.gz']


@pytest.mark.parametrize('error', [RuntimeError, KeyboardInterrupt])
def test_staged_file_keeps_the_old_file_on_error(tmp_path, error):
  final = tmp_path / 'a.png'
  final.write_text('old')
  with pytest.raises(error):
    with atomic.staged_file(str(final)) as tmp:
      with open(tmp, 'w') as f:
        f.write('half')
      raise error
  assert final.read_text() == 'old'
  assert _listing(tmp_path) == ['a.png']


def test_staged_file_without_replace_refuses_an_existing_file(tmp_path):
  final = tmp_path / 'a.csv'
  final.write_text('old')
  with pytest.raises(FileExistsError, match='a.csv exists'):
    with atomic.staged_file(str(final), replace=False):
      pass
  assert final.read_text() == 'old'


def test_staged_file_keeps_a_file_that_appeared_while_writing(tmp_path):
  final = tmp_path / 'a.csv'
  with pytest.raises(FileExistsError):
    with atomic.staged_file(str(final), replace=False) as tmp:
      with open(tmp, 'w') as f:
        f.write('ours')
      final.write_text('theirs')
  assert final.read_text() == 'theirs'
  assert _listing(tmp_path) == ['a.csv']


def test_staged_file_refuses_a_folder(tmp_path):
  with pytest.raises(IsADirectoryError, match='is a folder'):
    with atomic.staged_file(str(tmp_path)):
      pass


def test_write_text_without_replace_keeps_the_file(tmp_path):
  path = tmp_path / 'summary.json'
  atomic.write_text(str(path), 'one\n')
  atomic.write_text(str(path), 'two\n')
  assert path.read_text() == 'two\n'
  assert _listing(tmp_path) == ['summary.json']
  with pytest.raises(FileExistsError):
    atomic.write_text(str(path), 'three\n', replace=False)
  assert path.read_text() == 'two\n'
