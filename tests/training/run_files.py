"""Readers of a federated run folder's files, for the trainer's tests."""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np

from tff_brats.models import model_io
from tff_brats.privacy import accounting
from tff_brats.training import federated
from tff_brats.training import privacy_journal


def rows(run_dir: str) -> list[dict[str, str]]:
  """metrics.csv's rows."""
  with open(os.path.join(run_dir, 'metrics.csv')) as f:
    return list(csv.DictReader(f))


def ledger(run_dir: str) -> accounting.PrivacyLedger:
  """The ledger the run wrote at its end."""
  with open(os.path.join(run_dir, federated.LEDGER_JSON)) as f:
    return accounting.PrivacyLedger.from_json(f.read())


def journal(run_dir: str) -> list[dict[str, Any]]:
  """The privacy journal's entries."""
  return privacy_journal.PrivacyJournal(
    os.path.join(run_dir, federated.JOURNAL_NAME)
  ).entries()


def weights(run_dir: str, name: str = 'final_model') -> list[np.ndarray]:
  """The trainable weights of a model folder of the run."""
  model = model_io.load_model(os.path.join(run_dir, name))
  return [v.numpy() for v in model.trainable_variables]
