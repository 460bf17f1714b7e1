"""Tests of the export_model binary, run in a child process as a user runs it.

(Binaries share absl flag names, so they are never imported into the pytest
process; see make_synthetic_brats_test.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tff_brats.inference import export
from tff_brats.models import model_io
from tff_brats.models import segresnet
from tff_brats.models import training_metadata

# Each test starts a Python process that imports TensorFlow (~4 s).
pytestmark = pytest.mark.slow

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _run(*flags):
  return subprocess.run(
    [sys.executable, '-m', 'experiments.export_model', *flags],
    capture_output=True,
    text=True,
    cwd=_REPO,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
    check=False,
    timeout=300,
  )


def _check_error(result, *parts):
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('export_model: error: '), result.stderr
  for part in parts:
    assert part in last, (part, last)
  assert 'Traceback' not in result.stderr


def test_exports_a_model_io_folder(tmp_path):
  model = segresnet.SegResNet(
    init_filters=8, blocks_down=(1, 1), blocks_up=(1,)
  )
  model(tf.zeros([1, 4, 4, 4, 4]))
  model_io.save_model(model, str(tmp_path / 'model'))
  out = tmp_path / 'exported'
  result = _run(f'--model_dir={tmp_path / "model"}', f'--output_dir={out}')
  assert result.returncode == 0, result.stderr
  assert f'SavedModel: {out}' in result.stdout
  assert 'Training record: none' in result.stdout
  assert export.read_training_metadata(str(out)) is None
  image = np.random.default_rng(0).normal(size=(2, 8, 4, 6, 4))
  image = image.astype(np.float32)
  serve = tf.saved_model.load(str(out)).signatures['serving_default']
  np.testing.assert_allclose(
    serve(image=tf.constant(image))['probabilities'],
    model(image, training=False),
    atol=1e-5,
  )
  again = _run(f'--model_dir={tmp_path / "model"}', f'--output_dir={out}')
  _check_error(again, 'must not exist unless', '--overwrite', str(out))
  replaced = _run(
    f'--model_dir={tmp_path / "model"}', f'--output_dir={out}', '--overwrite'
  )
  assert replaced.returncode == 0, replaced.stderr


def test_the_training_record_is_copied(tmp_path):
  model = segresnet.SegResNet(
    init_filters=8, blocks_down=(1, 1), blocks_up=(1,)
  )
  model(tf.zeros([1, 4, 4, 4, 4]))
  record = training_metadata.TrainingMetadata((48, 48, 48), crop_margin=2)
  model_io.save_model(model, str(tmp_path / 'model'), training=record)
  out = tmp_path / 'exported'
  result = _run(f'--model_dir={tmp_path / "model"}', f'--output_dir={out}')
  assert result.returncode == 0, result.stderr
  assert 'Training record: crop [48, 48, 48], crop margin 2.' in result.stdout
  assert export.read_training_metadata(str(out)) == record


def test_missing_model_dir(tmp_path):
  result = _run(
    f'--model_dir={tmp_path / "none"}', f'--output_dir={tmp_path / "out"}'
  )
  _check_error(
    result, 'model_dir must be a model folder', f"'{tmp_path / 'none'}'"
  )
  assert not (tmp_path / 'out').exists()


def test_existing_output_is_refused_before_loading(tmp_path):
  (tmp_path / 'model').mkdir()  # not even a model: the output check is first
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('keep')
  result = _run(f'--model_dir={tmp_path / "model"}', f'--output_dir={out}')
  _check_error(result, 'must not exist unless overwrite=True (--overwrite)')
  assert sorted(os.listdir(out)) == ['keep.txt']


def test_stray_arguments_are_rejected(tmp_path):
  result = _run(
    f'--model_dir={tmp_path}', f'--output_dir={tmp_path / "out"}', 'extra'
  )
  assert result.returncode != 0
  assert "Unexpected arguments: ['extra']" in result.stderr
  assert not (tmp_path / 'out').exists()
