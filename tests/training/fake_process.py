"""A fast stand-in for the federated learning process, for loop tests.

`FakeProcess` has the interface `FederatedLoop` uses of a
`tff.learning.templates.LearningProcess` (`initialize`, `next`,
`get_model_weights`, `set_model_weights`) and runs in plain numpy, so the
loop's budget stop, journal, resume, sampling and best-model keeping are
tested in seconds. Its rounds are deterministic: the new weights are the old
ones plus a step that depends on the round and on the participating
clients' data keys, so a resumed run equals an uninterrupted one exactly
when it feeds the same clients the same keys.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Any

import numpy as np
import tensorflow_federated as tff


@dataclasses.dataclass
class Output:
  state: Any
  metrics: Any


class FakeProcess:
  """Rounds in numpy with the metrics structure of `fed_avg`'s process.

  Attributes:
    calls: The `(round, client_inputs)` of every `next` call, in order.
    privatization: Whether the aggregator reports released counts (the
      client-side mechanisms do; TFF's Gaussian aggregator does not).
    training_statistics: Whether the clients send their loss and Dice
      counts (`report_training_statistics`).
    step_size: Scale of each round's change of the weights.
  """

  def __init__(
    self,
    *,
    privatization: bool = True,
    training_statistics: bool = True,
    step_size: float = 1e-3,
  ):
    self.calls = []
    self.privatization = privatization
    self.training_statistics = training_statistics
    self.step_size = step_size

  def initialize(self):
    return collections.OrderedDict(
      trainable=[], non_trainable=[], round=np.int64(0)
    )

  def set_model_weights(self, state, weights):
    return collections.OrderedDict(
      trainable=[np.array(w, np.float32) for w in weights.trainable],
      non_trainable=[np.array(w, np.float32) for w in weights.non_trainable],
      round=state['round'],
    )

  def get_model_weights(self, state):
    return tff.learning.models.ModelWeights(
      trainable=list(state['trainable']),
      non_trainable=list(state['non_trainable']),
    )

  def next(self, state, client_inputs):
    round_num = int(state['round']) + 1
    self.calls.append((round_num, client_inputs))
    keys = [int(np.asarray(c['data_key'])[0]) % 1000 for c in client_inputs]
    rng = np.random.default_rng([round_num, *keys])
    trainable = [
      w + self.step_size * rng.standard_normal(w.shape).astype(np.float32)
      for w in state['trainable']
    ]
    new_state = collections.OrderedDict(
      trainable=trainable,
      non_trainable=list(state['non_trainable']),
      round=np.int64(round_num),
    )
    clients = len(client_inputs)
    steps = 4.0 * clients
    train = collections.OrderedDict(num_clients=clients, steps=steps)
    if self.training_statistics:
      train.update(
        loss_sum=steps * 0.5 / round_num,
        dice_intersection=[1.0, 2.0, 3.0],
        dice_predicted=[2.0, 4.0, 4.0],
        dice_target=[2.0, 4.0, 8.0],
        non_finite=0,
      )
    aggregator = collections.OrderedDict()
    if self.privatization:
      aggregator['privatization'] = collections.OrderedDict(
        num_clients=clients,
        released_mean=10.0 * round_num,
        released_min=5.0,
        released_max=20.0,
        epsilon_per_client=2.0,
        clipped_fraction_mean=0.25,
        noisy_threshold_mean=0.125,
      )
    metrics = collections.OrderedDict(
      client_work=collections.OrderedDict(train=train), aggregator=aggregator
    )
    return Output(new_state, metrics)


class RecordingContext:
  """A runtime stand-in that records when it is entered and left."""

  def __init__(self):
    self.events = []

  def __enter__(self):
    self.events.append('enter')
    return self

  def __exit__(self, exc_type, exc, tb):
    self.events.append(
      'exit' if exc_type is None else f'exit:{exc_type.__name__}'
    )


def run_loop(
  config,
  run_dir: str,
  *,
  process: FakeProcess | None = None,
  resume: bool = False,
  runtime=None,
  export: bool = False,
  progress: bool = False,
):
  """Runs `federated.FederatedLoop` on a `FakeProcess`.

  Unless `export`, the SavedModel export at the end (seconds of tracing,
  tested in federated_loop_test's fake_run and in tests/inference) only
  returns its path.

  Returns:
    `(summary, process)`.
  """
  from absl.testing import absltest

  from tff_brats.training import federated

  process = process or FakeProcess()
  loop = federated.FederatedLoop(config, run_dir)
  with contextlib.ExitStack() as stack:
    if not export:
      stack.enter_context(
        absltest.mock.patch.object(
          federated.export,
          'export_model_dir',
          lambda model_dir, output_dir, overwrite: output_dir,
        )
      )
    summary = loop.run(
      process, runtime=runtime, resume=resume, progress=progress
    )
  return summary, process


def svt():
  """The SVT every loop test runs with (ε = 2 per round and institution)."""
  from tff_brats import mechanisms

  return mechanisms.SparseVector(
    shared_fraction=0.1,
    clip_bound=1e-3,
    selection_epsilon=1.0,
    release_epsilon=1.0,
    threshold=5e-4,
  )


def loop_config(data_dir: str, **overrides):
  """A small SVT run on the three-institution folder: 2 rounds, SegResNet-8
  with two levels on 16³ crops; by default only the last round is evaluated
  and checkpointed (the loop always does both after its last round)."""
  from tff_brats.training import federated

  kwargs = dict(
    data_dir=data_dir,
    mechanism=svt(),
    total_rounds=2,
    crop_size=(16, 16, 16),
    init_filters=8,
    blocks_down=(1, 1),
    blocks_up=(1,),
    tumour_crop_probability=1.0,
    rounds_per_eval=10,
    rounds_per_checkpoint=10,
    num_overlay_cases=1,
    seed=3,
  )
  kwargs.update(overrides)
  return federated.FederatedConfig(**kwargs)


def four_round_config(data_dir: str):
  """`loop_config` over 4 rounds, evaluated every 2 rounds and checkpointed
  every round: the run the fault tests break (disk_faults_test,
  crash_resume_test and its child process)."""
  return loop_config(
    data_dir, total_rounds=4, rounds_per_eval=2, rounds_per_checkpoint=1
  )
