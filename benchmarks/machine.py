"""What the benchmarks share: thread settings, CPU facts, timed calls.

Timing reports the wall time of each call, the process's own CPU time per
call, and `background_cpu_fraction`: the share of the machine's CPU time
used by other processes (including TFF workers the benchmark started)
while it was measured, since the machines we measure on are shared.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import os
import sys
import time
from typing import Any

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Timing:
  """Wall and CPU seconds of each timed call, and the last call's result."""

  wall: list[float]
  cpu: list[float]
  background_cpu_fraction: float
  last_result: Any

  def summary(self, name: str = 'call') -> dict[str, Any]:
    """Median/min/max wall seconds, per-call lists, CPU and background."""
    return {
      'median_seconds': round(float(np.median(self.wall)), 4),
      'min_seconds': round(min(self.wall), 4),
      'max_seconds': round(max(self.wall), 4),
      f'{name}_seconds': [round(t, 4) for t in self.wall],
      f'cpu_seconds_per_{name}': round(float(np.median(self.cpu)), 4),
      'background_cpu_fraction': round(self.background_cpu_fraction, 3),
    }


def time_calls(
  call: Callable[[], Any], warmup: int, repetitions: int
) -> Timing:
  """Runs `call` `warmup` times untimed, then `repetitions` times timed."""
  if repetitions < 1:
    raise ValueError(f'repetitions must be at least 1. Found {repetitions}.')
  for _ in range(warmup):
    call()
  wall, cpu = [], []
  machine_before = machine_cpu_ticks()
  process_before = process_cpu_seconds()
  result = None
  for _ in range(repetitions):
    cpu_start = process_cpu_seconds()
    start = time.perf_counter()
    result = call()
    wall.append(time.perf_counter() - start)
    cpu.append(process_cpu_seconds() - cpu_start)
  busy, total = (
    a - b for a, b in zip(machine_cpu_ticks(), machine_before, strict=True)
  )
  own = (process_cpu_seconds() - process_before) * os.sysconf('SC_CLK_TCK')
  background = max(busy - own, 0.0) / total if total else 0.0
  return Timing(wall, cpu, background, result)


def set_threads(intra: int, inter: int) -> None:
  """Sets TensorFlow's thread pools, or checks they already match."""
  try:
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
  except RuntimeError:
    current = (
      tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads(),
    )
    if current != (intra, inter):
      raise RuntimeError(
        f'TensorFlow already runs with (intra, inter) = {current} threads; '
        f'cannot switch to {(intra, inter)}. Run the benchmark in a fresh '
        'process.'
      ) from None


def onednn_enabled() -> bool | None:
  """Whether TensorFlow's oneDNN (MKL) kernels are on; None if unknown."""
  try:
    from tensorflow.python.util import _pywrap_util_port
  except ImportError:
    return None
  return bool(_pywrap_util_port.IsMklEnabled())


def machine_cpu_ticks() -> tuple[float, float]:
  """(busy, total) CPU ticks of the whole machine since boot (Linux)."""
  try:
    with open('/proc/stat') as f:
      fields = [float(v) for v in f.readline().split()[1:9]]
  except OSError:
    return 0.0, 0.0
  idle = fields[3] + fields[4]
  return sum(fields) - idle, sum(fields)


def process_cpu_seconds() -> float:
  """User + system CPU seconds of this process."""
  times = os.times()
  return times.user + times.system


def cpu_model() -> str | None:
  """The CPU's model name from /proc/cpuinfo."""
  return cpuinfo_field('model name')


def cpu_flags() -> set[str]:
  """The CPU's feature flags from /proc/cpuinfo."""
  return set((cpuinfo_field('flags') or '').split())


def cpuinfo_field(name: str) -> str | None:
  """The first value of field `name` in /proc/cpuinfo."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == name:
          return value.strip()
  except OSError:
    pass
  return None


def progress(message: str) -> None:
  """A progress line on stderr (stdout is kept for the benchmark's JSON)."""
  print(message, file=sys.stderr, flush=True)
