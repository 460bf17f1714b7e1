"""Tests for tff_brats.training.privacy_journal."""

import json
import os

import dp_accounting
import pytest

from tff_brats.privacy import accounting
from tff_brats.privacy import events
from tff_brats.training import privacy_journal

_SVT = accounting.PrivacyRecord(
  'sparse_vector', events.EpsilonDeltaDpEvent(2.0)
)


def _journal(tmp_path):
  return privacy_journal.PrivacyJournal(str(tmp_path / 'journal.jsonl'))


def test_append_and_read_back(tmp_path):
  journal = _journal(tmp_path)
  assert journal.entries() == []
  journal.append(0, 1, ['a', 'b'], _SVT)
  journal.append(1, 2, ['b'], _SVT)
  entries = journal.entries()
  assert [(e['release'], e['round'], e['clients']) for e in entries] == [
    (0, 1, ['a', 'b']),
    (1, 2, ['b']),
  ]
  assert accounting.PrivacyRecord.from_dict(entries[0]['record']) == _SVT
  with open(journal.path) as f:
    assert f.read().count('\n') == 2  # one line per release


def test_replay_adds_what_the_checkpoint_lacks(tmp_path):
  journal = _journal(tmp_path)
  none = accounting.PrivacyRecord('none', dp_accounting.NonPrivateDpEvent())
  journal.append(0, 1, ['a', 'b'], _SVT)
  journal.append(1, 2, ['a', 'b'], _SVT)
  journal.append(2, 2, ['b'], none)
  ledger = accounting.PrivacyLedger(client_ids=['a', 'b'])
  ledger.record_round(0, ['a', 'b'], _SVT)  # the checkpoint holds release 0
  assert journal.replay(ledger, next_release=1) == 3
  assert [r for r, _ in ledger.history('a')] == [0, 1]
  assert [r for r, _ in ledger.history('b')] == [0, 1, 2]
  assert ledger.history('b')[2][1] == none
  # Replaying again changes nothing (the ledger ignores equal records).
  before = ledger.to_json()
  assert journal.replay(ledger, next_release=1) == 3
  assert ledger.to_json() == before


def test_a_partial_last_line_is_dropped_before_the_next_append(tmp_path):
  journal = _journal(tmp_path)
  journal.append(0, 1, ['a'], _SVT)
  with open(journal.path, 'a') as f:
    f.write('{"release": 1, "ro')  # killed while writing
  assert len(journal.entries()) == 1
  ledger = accounting.PrivacyLedger()
  assert journal.replay(ledger, next_release=0) == 1
  journal.append(1, 2, ['a'], _SVT)
  assert [e['release'] for e in journal.entries()] == [0, 1]
  with open(journal.path) as f:
    assert all(json.loads(line) for line in f.read().splitlines())


@pytest.mark.parametrize(
  'lines, message',
  [
    (['not json', '{}'], 'line 1 must be JSON. Found'),
    (
      ['{"release": 0, "round": 1, "clients": []}'],
      "line 1 must have 'record'. Found keys",
    ),
  ],
)
def test_bad_lines_are_named(tmp_path, lines, message):
  journal = _journal(tmp_path)
  with open(journal.path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with pytest.raises(ValueError, match=message) as error:
    journal.entries()
  assert os.path.basename(journal.path) in str(error.value)
