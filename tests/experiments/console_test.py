"""What a newcomer's console shows: progress and results, not log noise."""

import os
import subprocess
import sys

from experiments import console

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_verbosity_requests():
  assert not console.verbose_requested(['prog', '--output_dir=x'])
  assert console.verbose_requested(['prog', '--verbosity=0'])
  assert console.verbose_requested(['prog', '--verbosity', '1'])
  assert console.verbose_requested(['prog', '-v'])
  assert not console.verbose_requested(['--verbosity=0'])  # argv[0] only


def test_only_the_harmless_start_up_lines_are_dropped():
  # Lines TensorFlow 2.14 prints when imported on a CPU-only machine.
  text = (
    '2026-12-06 16:43:03.905066: E tensorflow/compiler/xla/stream_executor/'
    'cuda/cuda_blas.cc:1518] Unable to register cuBLAS factory: Attempting '
    'to register factory for plugin cuBLAS when one has already been '
    'registered\n'
    '2026-12-06 16:05:37.051023: W tensorflow/compiler/tf2tensorrt/utils/'
    'py_utils.cc:38] TF-TRT Warning: Could not find TensorRT\n'
    'a real error: libcudart.so.12 has the wrong version\n'
  )
  assert console.without_harmless_lines(text) == (
    'a real error: libcudart.so.12 has the wrong version\n'
  )


def _make_data(tmp_path, *extra):
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  return subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.make_synthetic_brats',
      f'--output_dir={tmp_path / "data"}',
      '--num_cases=2',
      '--num_institutions=1',
      '--shape=32,32,32',
      *extra,
    ],
    cwd=_REPO,
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    check=True,
  )


def test_a_binary_is_quiet_by_default_and_detailed_with_verbosity(tmp_path):
  quiet = _make_data(tmp_path)
  assert 'synthetic cases: 100%' in quiet.stderr  # the progress bar
  assert 'Unable to register' not in quiet.stderr
  assert 'TensorRT' not in quiet.stderr
  # No absl INFO lines ('I1206 17:06:46.016538 ... synthetic.py:420] ...').
  assert not [
    line
    for line in quiet.stderr.splitlines()
    if line[:1] == 'I' and '] ' in line
  ], quiet.stderr
  detailed = _make_data(tmp_path / 'again', '--verbosity=0')
  assert 'Wrote 2 synthetic cases' in detailed.stderr
