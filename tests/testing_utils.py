"""Shared test helpers: tiny prepared data folders (shards + manifest.json).

`write_prepared_folder` writes what `experiments/prepare_data.py` would
write for a few small synthetic cases, so the input pipeline and the TFF
wiring can be tested without NIfTI files.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import os
import time

import numpy as np
import tensorflow as tf

from tff_brats.data import manifest as manifest_lib
from tff_brats.data import records

Shape = tuple[int, int, int]


def make_case(
  shape: Shape = (16, 16, 16), *, seed: int = 0, tumour: bool = True
) -> tuple[np.ndarray, np.ndarray]:
  """A brain-like case: an ellipsoidal 'brain' and a nested tumour.

  Args:
    shape: `(D, H, W)`.
    seed: Seed of the intensities and the tumour position.
    tumour: Whether to draw a tumour (else all regions are empty).

  Returns:
    `(image, regions)`: float32 `[D, H, W, 4]` with positive intensities
    inside the brain (channel c around 100·(c + 1)) and exactly 0 outside,
    and bool `[D, H, W, 3]` (TC, WT, ET) with ET ⊂ TC ⊂ WT ⊂ brain.
  """
  rng = np.random.default_rng(seed)
  grid = np.stack(
    np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing='ij'), -1
  )
  brain = np.sum(grid**2, axis=-1) <= 0.85
  image = np.zeros((*shape, records.NUM_MODALITIES), np.float32)
  for c in range(records.NUM_MODALITIES):
    values = rng.normal(100.0 * (c + 1), 10.0 * (c + 1), size=shape)
    image[..., c] = np.where(brain, np.maximum(values, 1.0), 0.0)
  regions = np.zeros((*shape, records.NUM_REGIONS), bool)
  if tumour:
    centre = rng.uniform(-0.3, 0.3, size=3)
    distance = np.sqrt(np.sum((grid - centre) ** 2, axis=-1))
    wt = (distance <= 0.35) & brain
    tc = (distance <= 0.22) & brain
    et = tc & (distance >= 0.12)
    regions[..., 0], regions[..., 1], regions[..., 2] = tc, wt, et
  return image, regions


def write_shard(
  path: str, cases: Sequence[tuple[str, np.ndarray, np.ndarray]]
) -> None:
  """Writes `(case_id, image, regions)` triples as one TFRecord shard."""
  with tf.io.TFRecordWriter(path) as writer:
    for case_id, image, regions in cases:
      writer.write(records.encode_case(case_id, image, regions))


# The three institutions of the federated tests: 'a' with two cases, 'b'
# and 'c' with one each, of slightly different shapes; two validation cases.
THREE_INSTITUTIONS = {
  'a': [(16, 16, 16)] * 2,
  'b': [(16, 18, 16)],
  'c': [(18, 16, 16)],
}
THREE_INSTITUTIONS_VALIDATION = [(16, 16, 16), (18, 16, 16)]


def write_three_institutions(root: str) -> manifest_lib.Manifest:
  """`write_prepared_folder` of `THREE_INSTITUTIONS`."""
  return write_prepared_folder(
    root,
    THREE_INSTITUTIONS,
    validation_shapes=THREE_INSTITUTIONS_VALIDATION,
  )


def write_prepared_folder(
  root: str,
  client_shapes: Mapping[str, Sequence[Shape]],
  *,
  validation_shapes: Sequence[Shape] = ((16, 16, 16),),
  shards_per_client: int = 1,
  seed: int = 0,
) -> manifest_lib.Manifest:
  """Writes a tiny prepared folder and returns its loaded manifest.

  Args:
    root: The folder (created if missing).
    client_shapes: Client id -> the shapes of its cases, in order.
    validation_shapes: The shapes of the validation cases.
    shards_per_client: Shards per client (cases dealt round-robin; a shard
      may be empty when there are more shards than cases).
    seed: Seed of the case contents (case `k`, counted over all clients,
      uses `seed + k`).

  Returns:
    `manifest.load(root)`.
  """
  shard_dir = os.path.join(root, manifest_lib.SHARD_DIR)
  os.makedirs(shard_dir, exist_ok=True)
  groups = {c: (list(s), shards_per_client) for c, s in client_shapes.items()}
  groups[manifest_lib.VALIDATION] = (list(validation_shapes), 1)
  case_ids, shard_names, cases = {}, {}, {}
  index = 0
  for group, (shapes, num_shards) in groups.items():
    shards = [[] for _ in range(num_shards)]
    for k, shape in enumerate(shapes):
      case_id = f'{group}_case{k:03d}'
      image, regions = make_case(tuple(shape), seed=seed + index)
      index += 1
      shards[k % num_shards].append((case_id, image, regions))
    names = [
      manifest_lib.shard_file_name(group, i, num_shards)
      for i in range(num_shards)
    ]
    for name, shard in zip(names, shards, strict=True):
      write_shard(os.path.join(shard_dir, name), shard)
      for case_id, image, _ in shard:
        cases[case_id] = _case_record(case_id, image.shape[:3], name)
    # Shard order, as the manifest records case ids.
    case_ids[group] = tuple(c for shard in shards for c, _, _ in shard)
    shard_names[group] = tuple(names)
  validation = manifest_lib.VALIDATION
  manifest_lib.Manifest(
    root=os.path.abspath(root),
    clients={c: case_ids[c] for c in client_shapes},
    client_shards={c: shard_names[c] for c in client_shapes},
    validation=case_ids[validation],
    validation_shards=shard_names[validation],
    cases=cases,
    request={'test': True, 'seed': seed},
  ).save()
  return manifest_lib.load(root)


def _case_record(
  case_id: str, shape: Shape, shard: str
) -> manifest_lib.CaseRecord:
  shape = tuple(int(n) for n in shape)
  return manifest_lib.CaseRecord(
    case_id=case_id,
    layout='brats2018',
    grade=None,
    source_files={},
    checksums={},
    shape=shape,
    spacing=(1.0, 1.0, 1.0),
    affine=tuple(tuple(float(i == j) for j in range(4)) for i in range(4)),
    crop_box=tuple((0, n) for n in shape),
    shard=shard,
  )


def process_is_alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie waiting to be reaped counts as gone)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      state = f.read().rsplit(')', 1)[1].split()[0]
  except FileNotFoundError:
    return False
  return state != 'Z'


def wait_path_gone(path: str, timeout: float = 10.0) -> bool:
  """Waits up to `timeout` seconds for `path` to vanish; whether it did."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if not os.path.lexists(path):
      return True
    time.sleep(0.05)
  return False


def wait_process_gone(pid: int, timeout: float = 10.0) -> bool:
  """Waits up to `timeout` seconds for `pid` to end; whether it did."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if not process_is_alive(pid):
      return True
    time.sleep(0.05)
  return False


# Workers of long-lived runtimes the test session itself owns (conftest's
# shared `tff_runtime`): alive on purpose, so not strays.
SESSION_WORKER_PIDS: set[int] = set()


def stray_worker_pids() -> list[int]:
  """TFF workers started by this process that are still alive, other than
  the test session's own shared runtime."""
  return [
    pid
    for pid in descendant_pids('worker_binary')
    if pid not in SESSION_WORKER_PIDS
  ]


def descendant_pids(name: str) -> list[int]:
  """Live processes called `name` started by us, directly or not (a worker
  runs under its isolating launcher)."""
  from tff_brats.runtime import worker

  table = {
    pid: (parent, comm)
    for pid, (parent, comm, state) in worker.process_table().items()
    if state != 'Z'
  }
  me = os.getpid()

  def descends(pid):
    seen = set()
    while pid in table and pid not in seen:
      seen.add(pid)
      pid = table[pid][0]
      if pid == me:
        return True
    return False

  return [
    p for p, (_, comm) in table.items() if comm == name[:15] and descends(p)
  ]


def repeated_sum_function(fn, runs: int, stream: int = 99):
  """A function of tensors `*inputs`: the sum of `fn(seed, *inputs)` over
  `runs` distinct explicit seeds `[i, stream]`, i = 0, …, runs - 1, in one
  graph loop, as a NumPy array (traced once for inputs of the same shapes).

  `fn` (one tensor out) is traced once and called only in the loop's body;
  the sum starts from zeros of its output's shape. Calling it once more
  outside the loop for the first value would double the graph, and with it
  Grappler's optimisation time (5 s for each SVT call site).
  """

  def seed_of(i):
    return tf.stack([tf.cast(i, tf.int64), tf.constant(stream, tf.int64)])

  @tf.function
  def loop(*inputs):
    step = tf.function(fn)
    output = step.get_concrete_function(
      tf.TensorSpec([2], tf.int64),
      *(tf.TensorSpec.from_tensor(x) for x in inputs),
    ).structured_outputs

    def body(i, total):
      return i + 1, total + step(seed_of(i), *inputs)

    return tf.while_loop(
      lambda i, _: i < runs,
      body,
      (tf.constant(0), tf.zeros(output.shape, output.dtype)),
      parallel_iterations=32,
    )[1]

  return lambda *inputs: loop(*inputs).numpy()


def repeated_sum(fn, runs: int, stream: int = 99) -> np.ndarray:
  """Sums `fn(seed)` over `runs` distinct explicit seeds, in one graph loop."""
  return repeated_sum_function(fn, runs, stream)()
