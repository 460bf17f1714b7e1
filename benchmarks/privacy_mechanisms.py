"""Benchmarks the client-side privacy mechanisms: seconds per `privatize`.

One call privatises a whole model update, as every client does every round:
flatten the deltas, normalise by the step count, clip, select (selective
sharing) or run the sparse vector technique, multiply back, unflatten. The
update has the shapes of SegResNet-16's trainable variables (83 tensors,
4,702,227 values; `--update=flat` uses one vector of that size instead)
with N(0, γ²) values, so about a third of them are clipped. The SVT draws
a fresh seed on every call (`seed=None`, as deployed).

Reference on this machine kind (DESIGN.md): NVFlare 2.9's `SVTPrivacy` on a
4,702,227-value update takes 0.90 s at fraction 0.9 and 0.28 s at 0.1
(`PercentilePrivacy`: 0.098 s). Targets: SVT at least 10 times faster
(<= 0.09 s at 0.9, <= 0.028 s at 0.1), selective sharing <= 0.05 s.

Modes (`--modes`):
  `tf_function`: `privatize` in a `tf.function` (graph mode, no XLA).
  `tff`: one round of the TFF aggregation process
    (`tff_brats.aggregators.private_sharing.PrivateSharingFactory` with the
    default weighted mean) for one client on the project's local C++
    worker: shipping the update to the worker, privatising it there, the
    mean and the result's way back. The same round with `NoPrivacy`
    (reported as mechanism 'none') is the cost of TFF itself; the worker is
    another process, so its CPU shows up as `background_cpu_fraction`.

Example (threads are set before TensorFlow starts):

  TF_CPP_MIN_LOG_LEVEL=2 python -m benchmarks.privacy_mechanisms \
    --fractions=0.1,0.4,0.9 --repetitions=20

Prints one JSON object to stdout (progress goes to stderr). Every result
reports `background_cpu_fraction`, the share of the machine's CPU time used
by other processes while it was measured (the machine is shared).
"""

from __future__ import annotations

from collections.abc import Sequence
import gc
import json
import os
import sys
from typing import Any

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from benchmarks import machine
from tff_brats import mechanisms
from tff_brats.models import segresnet

REFERENCE_SECONDS = {
  'nvflare_svt_q0.9': 0.90,
  'nvflare_svt_q0.1': 0.28,
  'nvflare_percentile': 0.098,
  'target_svt_q0.9': 0.09,
  'target_svt_q0.1': 0.028,
  'target_selective_sharing': 0.05,
}
MECHANISMS = ('selective_sharing', 'sparse_vector')
MODES = ('tf_function', 'tff')
UPDATES = ('segresnet', 'flat')
NUM_VALUES = 4_702_227  # SegResNet-16's trainable parameters

_FRACTIONS = flags.DEFINE_list(
  'fractions', ['0.1', '0.4', '0.9'], 'Shared fractions q to measure.'
)
_MECHANISMS = flags.DEFINE_list(
  'mechanisms', list(MECHANISMS), f'Of {", ".join(MECHANISMS)}.'
)
_MODES = flags.DEFINE_list(
  'modes',
  ['tf_function'],
  f'Of {", ".join(MODES)}.',
)
_UPDATE = flags.DEFINE_enum(
  'update', 'segresnet', UPDATES, 'Update structure: per-variable or flat.'
)
_CLIP_BOUND = flags.DEFINE_float('clip_bound', 1e-5, 'γ.')
_SELECTION_EPSILON = flags.DEFINE_float('selection_epsilon', 0.1, 'SVT ε.')
_RELEASE_EPSILON = flags.DEFINE_float('release_epsilon', 0.1, 'SVT ε3.')
_THRESHOLD = flags.DEFINE_float('threshold', 1e-6, 'SVT τ.')
_LOCAL_STEPS = flags.DEFINE_float('local_steps', 10.0, 'n.')
_WARMUP = flags.DEFINE_integer(
  'warmup', 3, 'Untimed calls per configuration (tracing, allocations).'
)
_REPETITIONS = flags.DEFINE_integer(
  'repetitions', 20, 'Timed calls per configuration.'
)
_INTRA_OP_THREADS = flags.DEFINE_integer(
  'intra_op_threads', 2, 'TensorFlow intra-op threads (0: TF default).'
)
_INTER_OP_THREADS = flags.DEFINE_integer(
  'inter_op_threads', 1, 'TensorFlow inter-op threads (0: TF default).'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the synthetic update.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    fractions = [float(v) for v in _FRACTIONS.value]
  except ValueError:
    raise app.UsageError(
      f'--fractions must be numbers. Found {_FRACTIONS.value}.'
    ) from None
  for name in _MECHANISMS.value:
    if name not in MECHANISMS:
      raise app.UsageError(
        f'--mechanisms must be of {", ".join(MECHANISMS)}. Found {name!r}.'
      )
  for name in _MODES.value:
    if name not in MODES:
      raise app.UsageError(
        f'--modes must be of {", ".join(MODES)}. Found {name!r}.'
      )
  try:
    result = run_benchmark(
      fractions=fractions,
      mechanism_names=_MECHANISMS.value,
      modes=_MODES.value,
      update=_UPDATE.value,
      clip_bound=_CLIP_BOUND.value,
      selection_epsilon=_SELECTION_EPSILON.value,
      release_epsilon=_RELEASE_EPSILON.value,
      threshold=_THRESHOLD.value,
      local_steps=_LOCAL_STEPS.value,
      warmup=_WARMUP.value,
      repetitions=_REPETITIONS.value,
      intra_op_threads=_INTRA_OP_THREADS.value,
      inter_op_threads=_INTER_OP_THREADS.value,
      seed=_SEED.value,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  json.dump(result, sys.stdout, indent=1)
  sys.stdout.write('\n')


def run_benchmark(
  *,
  fractions: Sequence[float] = (0.1, 0.4, 0.9),
  mechanism_names: Sequence[str] = MECHANISMS,
  modes: Sequence[str] = ('tf_function',),
  update: str = 'segresnet',
  clip_bound: float = 1e-5,
  selection_epsilon: float = 0.1,
  release_epsilon: float = 0.1,
  threshold: float = 1e-6,
  local_steps: float = 10.0,
  warmup: int = 3,
  repetitions: int = 20,
  intra_op_threads: int = 2,
  inter_op_threads: int = 1,
  seed: int = 0,
) -> dict[str, Any]:
  """Times `privatize` for every mode, mechanism and shared fraction.

  Threads can only be set before TensorFlow runs its first op; if it
  already has, the current setting must equal the requested one.

  Returns:
    A JSON-serialisable dict: `config` (TensorFlow, threads, CPU, update,
    mechanism parameters), `reference_seconds` and `results`, one entry per
    (mode, mechanism, fraction) with the per-call wall times, their median
    and minimum, the process CPU seconds per call, what the last call
    reported (`released`, `passed`) and the background CPU share.

  Raises:
    ValueError: An argument is invalid.
  """
  if repetitions < 1:
    raise ValueError(
      f'repetitions must be a positive integer. Found {repetitions}.'
    )
  if warmup < 0:
    raise ValueError(f'warmup must be non-negative. Found {warmup}.')
  if update not in UPDATES:
    raise ValueError(
      f'update must be of {", ".join(UPDATES)}. Found {update!r}.'
    )
  for mode in modes:
    if mode not in MODES:
      raise ValueError(f'modes must be of {", ".join(MODES)}. Found {mode!r}.')
  configs = [
    _mechanism(
      name,
      fraction,
      clip_bound=clip_bound,
      selection_epsilon=selection_epsilon,
      release_epsilon=release_epsilon,
      threshold=threshold,
    )
    for name in mechanism_names
    for fraction in fractions
  ]
  machine.set_threads(intra_op_threads, inter_op_threads)
  values, shapes = _update(update, clip_bound * local_steps, seed)
  results = []
  for mode in modes:
    mode_configs = configs
    if mode == 'tff':
      mode_configs = [mechanisms.NoPrivacy(), *configs]
    for mechanism in mode_configs:
      fraction = getattr(mechanism, 'shared_fraction', 1.0)
      label = f'{mode} {mechanism.name} q={fraction}'
      machine.progress(f'{label}: tracing')
      measure = _measure_tff if mode == 'tff' else _measure_tf_function
      measured = measure(mechanism, values, local_steps, warmup, repetitions)
      results.append(
        {
          'mode': mode,
          'mechanism': mechanism.name,
          'shared_fraction': fraction,
          **measured,
        }
      )
      machine.progress(
        f'{label}: median {measured["median_seconds"]:.4f} s, min '
        f'{measured["min_seconds"]:.4f} s (background CPU '
        f'{measured["background_cpu_fraction"]:.0%})'
      )
      gc.collect()
  threading = tf.config.threading
  return {
    'benchmark': 'privacy_mechanisms',
    'config': {
      'tensorflow': tf.__version__,
      'xla_jit_compile': False,
      'intra_op_threads': threading.get_intra_op_parallelism_threads(),
      'inter_op_threads': threading.get_inter_op_parallelism_threads(),
      'cpu_count': os.cpu_count(),
      'cpu': machine.cpu_model(),
      'update': update,
      'update_tensors': len(shapes),
      'num_values': int(sum(int(np.prod(s)) for s in shapes)),
      'update_distribution': 'normal(0, (n·γ)²)',
      'clip_bound': clip_bound,
      'selection_epsilon': selection_epsilon,
      'release_epsilon': release_epsilon,
      'threshold': threshold,
      'local_steps': local_steps,
      'normalize_by_steps': True,
      'seed': 'fresh per call (seed=None)',
      'warmup_calls': warmup,
      'timed_calls': repetitions,
    },
    'reference_seconds': REFERENCE_SECONDS,
    'results': results,
  }


def _mechanism(name: str, fraction: float, **params: float):
  """The mechanism `name` with the benchmark's parameters it has."""
  cls = mechanisms.get(name)
  known = {k: v for k, v in params.items() if k in cls.parameter_names()}
  return cls.from_parameters({'shared_fraction': fraction, **known})


def _update(kind: str, scale: float, seed: int):
  """The synthetic update: SegResNet-16's variable shapes, or one vector."""
  if kind == 'segresnet':
    model = segresnet.SegResNet()
    model(tf.zeros([1, 16, 16, 16, model.in_channels]))
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    del model
  else:
    shapes = [(NUM_VALUES,)]
  rng = np.random.default_rng(seed)
  values = [
    tf.constant(rng.normal(0.0, scale, size=shape), tf.float32)
    for shape in shapes
  ]
  return values, shapes


def _measure_tf_function(mechanism, values, local_steps, warmup, repetitions):
  steps = tf.constant(local_steps, tf.float32)

  @tf.function(jit_compile=False)
  def privatize(update, steps):
    return mechanism.privatize(update, steps)

  def call():
    # Eager execution is synchronous: the call returns once every output
    # tensor has been computed.
    _, report = privatize(values, steps)
    return {key: report[key].numpy() for key in ('released', 'passed')}

  return _timed(call, warmup, repetitions)


def _measure_tff(mechanism, values, local_steps, warmup, repetitions):
  import tensorflow_federated as tff  # only this mode needs TFF

  from tff_brats.runtime import local

  value_type = tff.StructWithPythonType(
    [tff.TensorType(np.float32, v.shape) for v in values], list
  )
  update = [v.numpy() for v in values]
  with local.LocalRuntime():
    process = mechanism.aggregation_factory().create(
      value_type, tff.TensorType(np.float32)
    )
    state = process.initialize()

    def call():
      output = process.next(state, [update], [np.float32(local_steps)])
      released = output.measurements['privatization']['released_mean']
      return {'released': released, 'passed': -1}

    return _timed(call, warmup, repetitions)


def _timed(call, warmup, repetitions):
  timing = machine.time_calls(call, warmup, repetitions)
  report = timing.last_result
  return {
    **timing.summary('call'),
    'released': int(report['released']),
    'passed': int(report['passed']),
  }


if __name__ == '__main__':
  app.run(main)
