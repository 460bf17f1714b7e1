"""The write-ahead privacy journal of a federated run.

Once a client has computed its privatised update the release has happened,
whether or not the round then completes. So before a round runs, the
trainer appends the round's participants and guarantee to
`privacy_journal.jsonl` under a *release number* that only ever grows, and
makes the line durable (flush + fsync) before the clients start. The
ledger's rounds are these release numbers.

After a crash the run resumes from its last checkpoint, whose ledger holds
releases `0 … next_release − 1`; `replay` adds every journal entry from
`next_release` on (the rounds that started after the checkpoint and may
have reached the coordinator), so nothing released is lost, and a completed,
checkpointed round is never counted twice (the ledger ignores an equal
record for a recorded release). A last line cut short by a kill is
ignored (its round never started) and removed by `replay`, so the next
line appended starts on a line of its own.

One line per release:
`{"release": r, "round": k, "clients": [...], "record": PrivacyRecord}`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging

from tff_brats.privacy import accounting
from tff_brats.utils import atomic

JOURNAL_NAME = 'privacy_journal.jsonl'
_KEYS = ('release', 'round', 'clients', 'record')


class PrivacyJournal:
  """Appends and replays the journal at `path` (see the module docstring)."""

  def __init__(self, path: str):
    self.path = path

  def append(
    self,
    release: int,
    round_num: int,
    clients: list[str],
    record: accounting.PrivacyRecord,
  ) -> None:
    """Appends one release and makes it durable before the round runs."""
    entry = {
      'release': int(release),
      'round': int(round_num),
      'clients': list(clients),
      'record': record.to_dict(),
    }
    with open(self.path, 'a') as f:
      f.write(json.dumps(entry, sort_keys=True) + '\n')
      f.flush()
      os.fsync(f.fileno())

  def entries(self) -> list[dict[str, Any]]:
    """The journal's entries in order; a partial last line is ignored.

    Raises:
      ValueError: A line other than the last is not JSON, or an entry lacks
        a key; the message names the file, the line and the key.
    """
    return self._read()[0]

  def _read(self) -> tuple[list[dict[str, Any]], str | None]:
    """The entries, and the text up to a partial last line (None if whole)."""
    if not os.path.exists(self.path):
      return [], None
    with open(self.path) as f:
      text = f.read()
    lines = text.split('\n')
    entries, whole = [], None
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      try:
        entry = json.loads(line)
      except json.JSONDecodeError:
        if number == len(lines):  # a partial last line: never finished
          logging.warning('Ignoring a partial last line in %s.', self.path)
          whole = text[: len(text) - len(line)]
          continue
        raise ValueError(
          f'{self.path}: line {number} must be JSON. Found {line[:80]!r}.'
        ) from None
      missing = [key for key in _KEYS if key not in entry]
      if missing:
        raise ValueError(
          f'{self.path}: line {number} must have {missing[0]!r}. Found keys '
          f'{sorted(entry)}.'
        )
      entries.append(entry)
    return entries, whole

  def replay(self, ledger: accounting.PrivacyLedger, next_release: int) -> int:
    """Records in `ledger` the releases from `next_release` on.

    Args:
      ledger: The ledger restored from the last checkpoint.
      next_release: The first release the checkpoint does not hold.

    Returns:
      The next free release number after the replay.
    """
    entries, whole = self._read()
    if whole is not None:  # drop the partial line before anything appends
      atomic.write_text(self.path, whole)
    replayed = 0
    for entry in entries:
      release = entry['release']
      if release < next_release:
        continue  # in the checkpoint's ledger already
      record = accounting.PrivacyRecord.from_dict(entry['record'])
      ledger.record_round(release, entry['clients'], record)
      next_release = release + 1
      replayed += 1
    if replayed:
      logging.warning(
        'Counted %d release(s) of rounds that started after the last '
        'checkpoint and did not complete into it: their clients may have '
        'sent privatised updates, so they spend privacy.',
        replayed,
      )
    return next_release
