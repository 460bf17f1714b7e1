"""Tests of the federated loop on a fast stand-in process (no TFF runtime).

`FakeProcess` (fake_process.py) replaces the TFF learning process, so the
budget stop, the privacy journal, resume, client sampling and best-model
keeping run in seconds; tests/training/federated_test.py runs the real
process end to end.
"""

import json
import os
import re

from absl.testing import absltest
import numpy as np
import pytest
import tensorflow as tf

from tests import figure_checks
from tests import testing_utils
from tests.training import fake_process
from tests.training import run_files
from tff_brats import mechanisms
from tff_brats.evaluation import evaluate
from tff_brats.inference import export
from tff_brats.models import model_io
from tff_brats.models import training_metadata
from tff_brats.training import federated
from tff_brats.training import privacy_journal

_CLIENTS = ('a', 'b', 'c')
_SVT = fake_process.svt()


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('prepared')
  testing_utils.write_three_institutions(str(root))
  return str(root)


_config = fake_process.loop_config


def _run(
  config, run_dir, *, process=None, resume=False, runtime=None, export=False
):
  return fake_process.run_loop(
    config,
    run_dir,
    process=process,
    resume=resume,
    runtime=runtime,
    export=export,
  )


def _without_seconds(rows):
  return [{k: v for k, v in r.items() if k != 'seconds'} for r in rows]


# ------------------------------------------------------------ outputs ----

# fake_run evaluates and checkpoints every round.
_FAKE_RUN = dict(
  eval_per_institution=True,
  rounds_per_eval=1,
  rounds_per_checkpoint=1,
  report_training_statistics=True,
)


@pytest.fixture(scope='module')
def fake_run(data_dir, tmp_path_factory):
  run_dir = str(tmp_path_factory.mktemp('fake') / 'run')
  runtime = fake_process.RecordingContext()
  with figure_checks.checking_figures() as figures:
    summary, process = _run(
      _config(data_dir, **_FAKE_RUN),
      run_dir,
      runtime=runtime,
      export=True,
    )
  runtime.figures = figures  # every figure the loop saved, checked
  return run_dir, summary, process, runtime


def test_run_writes_every_output(fake_run):
  run_dir, summary, _, runtime = fake_run
  assert runtime.events == ['enter', 'exit']
  assert sorted(os.listdir(run_dir)) == [
    'best_model',
    'checkpoints',
    'exported_model',
    'exported_model.keras',
    'final_model',
    'hparams.json',
    'learning_curves.png',
    'metrics.csv',
    'privacy_journal.jsonl',
    'privacy_ledger.json',
    'privacy_ledger.txt',
    'summary.json',
    'tensorboard',
  ]
  rows = run_files.rows(run_dir)
  assert [r['round'] for r in rows] == ['1', '2']
  assert [r['release'] for r in rows] == ['0', '1']
  for row in rows:
    assert row['clients'] == '3'
    assert row['client_ids'] == 'a b c'
    # FakeProcess: 4 steps per client, loss_sum = steps · 0.5 / round.
    assert row['steps'] == '12'
    assert float(row['epsilon_per_client']) == 2.0
    assert 0.0 <= float(row['val_dice_mean']) <= 1.0
    for client in _CLIENTS:
      assert 0.0 <= float(row[f'inst_{client}_dice_mean']) <= 1.0
  assert [float(r['train_loss']) for r in rows] == [0.5, 0.25]
  # Pooled Dice 2I/(P+T) of FakeProcess' counts: 2/4, 4/8, 6/12.
  assert [float(rows[0][f'train_dice_{r}']) for r in ('tc', 'wt', 'et')] == [
    0.5,
    0.5,
    0.5,
  ]
  assert [float(r['released_mean']) for r in rows] == [10.0, 20.0]
  # One round of pure ε = 2 at δ = 1e-5: log(e^2 − δ(1 + e^2)) (Kairouz et
  # al. 2015, k = 1); two: between the largest round and the sum.
  one = np.log(np.exp(2.0) - 1e-5 * (1 + np.exp(2.0)))
  assert float(rows[0]['epsilon_worst']) == pytest.approx(one, abs=1e-5)
  assert 2.0 < float(rows[1]['epsilon_worst']) <= 4.0
  with open(os.path.join(run_dir, 'hparams.json')) as f:
    hparams = json.load(f)
  assert hparams['privacy_mechanism'] == _SVT.to_dict()
  assert summary['privacy']['mechanism'] == 'sparse_vector'
  assert summary['privacy']['per_round'] == '(ε = 2, δ = 0) per round'
  assert summary['privacy']['epsilon_summed'] == {c: 4.0 for c in _CLIENTS}
  assert summary['privacy']['caveats'] == [
    *_SVT.caveats,
    federated.TRAINING_STATISTICS_CAVEAT,
  ]
  assert summary['rounds_completed'] == 2
  assert summary['releases'] == 2
  assert summary['stopped'] is None
  with open(os.path.join(run_dir, federated.LEDGER_TABLE)) as f:
    table = f.read()
  assert all(
    re.search(rf'^{c}\s+2\s+sparse_vector', table, re.M) for c in _CLIENTS
  )
  assert 'step count n' in table
  assert 'Dice voxel' in table and 'not privatised' in table
  with open(os.path.join(run_dir, 'learning_curves.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # Every legend entry had data (checked as each figure was saved); the
  # learning curves show four Dice curves and ε, tight and summed, on a log
  # axis.
  (curves,) = [
    f for f in runtime.figures if 'learning_curves' in os.path.basename(f.path)
  ]
  assert curves.line_labels == [
    ['mean', 'TC', 'WT', 'ET'],
    ['tight (PLD)', 'summed'],
  ]
  assert curves.yscales == ['linear', 'log']
  # Every model records what inference needs to match training (the test
  # folder's manifest records no crop margin).
  for name in ('best_model', 'final_model'):
    record = model_io.read_training_metadata(os.path.join(run_dir, name))
    assert record == training_metadata.TrainingMetadata((16, 16, 16), None)
  assert export.read_training_metadata(summary['exported_model']) == record
  assert summary['exported_keras'] == os.path.join(
    run_dir, 'exported_model.keras'
  )
  assert (
    model_io.read_keras_training_metadata(summary['exported_keras']) == record
  )
  np.testing.assert_array_equal(
    model_io.load_keras(summary['exported_keras']).get_weights()[0],
    model_io.load_model(os.path.join(run_dir, 'best_model')).get_weights()[0],
  )
  # The exported SavedModel serves the best model's probabilities.
  exported = tf.saved_model.load(summary['exported_model'])
  out = exported.signatures['serving_default'](tf.zeros((1, 16, 16, 16, 4)))
  (probabilities,) = out.values()
  assert probabilities.shape == (1, 16, 16, 16, 3)
  assert tf.io.gfile.glob(os.path.join(run_dir, 'tensorboard', 'events*'))


def test_final_model_is_the_process_state(fake_run):
  run_dir, _, process, _ = fake_run
  assert len(process.calls) == 2
  final = run_files.weights(run_dir, 'final_model')
  # The fake's rounds moved every weight.
  initial = [np.zeros_like(w) for w in final]
  assert any(not np.allclose(a, b) for a, b in zip(final, initial, strict=True))


# ------------------------------------------------------------- budget ----


def test_target_epsilon_stops_before_the_round_that_would_pass_it(
  data_dir, tmp_path
):
  run_dir = str(tmp_path / 'run')
  # ε = 2 per round: after 2 rounds every institution has spent 4 (tight:
  # just below 4); a third round would take it to about 6 > 5.
  summary, process = _run(
    _config(data_dir, total_rounds=5, target_epsilon=5.0, rounds_per_eval=5),
    run_dir,
  )
  assert len(process.calls) == 2
  assert summary['rounds_completed'] == 2
  assert summary['stopped'].startswith('Stopped before round 3:')
  assert 'target_epsilon=5.0' in summary['stopped']
  assert 'sparse_vector (ε = 2, δ = 0) per round' in summary['stopped']
  assert [r['round'] for r in run_files.rows(run_dir)] == ['1', '2']
  # The last completed round was evaluated although it is not a multiple
  # of rounds_per_eval, so the best model exists.
  assert summary['best_round'] == 2
  for value in summary['privacy']['epsilon_tight'].values():
    assert 3.9 < value <= 4.0
  # Nothing was journalled for the round that did not run.
  assert [e['round'] for e in run_files.journal(run_dir)] == [1, 2]


# ---------------------------------------------------- journal and resume ----


def test_a_round_interrupted_after_its_release_counts_once(data_dir, tmp_path):
  run_dir = str(tmp_path / 'run')
  _run(_config(data_dir, total_rounds=1), run_dir)
  # Round 2 started (its release is journalled) and the process died before
  # the round's checkpoint; a kill also cut the next line short.
  journal = privacy_journal.PrivacyJournal(
    os.path.join(run_dir, federated.JOURNAL_NAME)
  )
  journal.append(1, 2, list(_CLIENTS), _SVT.record())
  with open(journal.path, 'a') as f:
    f.write('{"release": 2, "rou')
  with absltest.mock.patch.object(privacy_journal.logging, 'warning') as warn:
    summary, _ = _run(_config(data_dir, total_rounds=3), run_dir, resume=True)
  messages = [call.args[0] % call.args[1:] for call in warn.call_args_list]
  assert any('Counted 1 release(s)' in m for m in messages)
  assert any('partial last line' in m for m in messages)
  rows = run_files.rows(run_dir)
  assert [r['round'] for r in rows] == ['1', '2', '3']
  # Release 1 is the interrupted round 2: it counts, and the rerun is
  # release 2. Every journal entry is in the ledger exactly once.
  assert [r['release'] for r in rows] == ['0', '2', '3']
  assert [(e['release'], e['round']) for e in run_files.journal(run_dir)] == [
    (0, 1),
    (1, 2),
    (2, 2),
    (3, 3),
  ]
  ledger = run_files.ledger(run_dir)
  for client in _CLIENTS:
    assert [r for r, _ in ledger.history(client)] == [0, 1, 2, 3]
  assert summary['rounds_completed'] == 3
  assert summary['releases'] == 4
  assert summary['privacy']['epsilon_summed'] == {c: 8.0 for c in _CLIENTS}


def test_resume_continues_exactly(data_dir, tmp_path):
  straight = str(tmp_path / 'straight')
  _, whole = _run(
    _config(data_dir, total_rounds=4, rounds_per_eval=2), straight
  )
  split = str(tmp_path / 'split')
  _run(_config(data_dir, total_rounds=2, rounds_per_eval=2), split)
  _, resumed = _run(
    _config(data_dir, total_rounds=4, rounds_per_eval=2), split, resume=True
  )
  # The resumed process ran rounds 3 and 4 with the clients' same data keys.
  assert [r for r, _ in resumed.calls] == [3, 4]
  for (_, a), (_, b) in zip(whole.calls[2:], resumed.calls, strict=True):
    for x, y in zip(a, b, strict=True):
      np.testing.assert_array_equal(x['data_key'], y['data_key'])
  for a, b in zip(
    run_files.weights(straight, 'final_model'),
    run_files.weights(split, 'final_model'),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)
  assert (
    run_files.ledger(straight).to_json() == run_files.ledger(split).to_json()
  )
  assert _without_seconds(run_files.rows(straight)) == _without_seconds(
    run_files.rows(split)
  )


def test_resume_refuses_changed_hyper_parameters(fake_run, data_dir, tmp_path):
  import shutil

  run_dir = str(tmp_path / 'run')
  shutil.copytree(fake_run[0], run_dir)
  before = run_files.rows(run_dir)
  with pytest.raises(
    ValueError,
    match=r'Found differences: client_learning_rate: saved 0.001, now 0.01\.$',
  ):
    _run(
      _config(data_dir, total_rounds=3, client_learning_rate=0.01, **_FAKE_RUN),
      run_dir,
      resume=True,
    )
  with pytest.raises(ValueError, match=r'privacy_mechanism: saved'):
    _run(
      _config(
        data_dir,
        mechanism=mechanisms.SelectiveSharing(0.1, 1e-3),
        **_FAKE_RUN,
      ),
      run_dir,
      resume=True,
    )
  with pytest.raises(ValueError, match=r'run_dir must be new or empty'):
    _run(_config(data_dir, **_FAKE_RUN), run_dir)
  # Nothing of the run was touched.
  assert run_files.rows(run_dir) == before
  assert sorted(os.listdir(run_dir)) == sorted(os.listdir(fake_run[0]))


# ------------------------------------------------------------ sampling ----


def test_sampled_clients_train_and_spend(data_dir, tmp_path):
  run_dir = str(tmp_path / 'run')
  summary, process = _run(
    _config(data_dir, total_rounds=3, clients_per_round=2, rounds_per_eval=3),
    run_dir,
  )
  ledger = run_files.ledger(run_dir)
  counts = dict.fromkeys(_CLIENTS, 0)
  for row, (round_num, inputs) in zip(
    run_files.rows(run_dir), process.calls, strict=True
  ):
    picked = federated.sample_clients(list(_CLIENTS), 2, 3, round_num)
    assert row['client_ids'].split() == picked
    assert row['clients'] == '2'
    # The process got the picked clients' shards, in that order.
    shards = [list(i['shard_paths']) for i in inputs]
    assert shards == [
      [os.path.join(data_dir, 'shards', f'{c}-00000-of-00001.tfrecord')]
      for c in picked
    ]
    for client in picked:
      counts[client] += 1
  for client in _CLIENTS:
    assert ledger.num_rounds(client) == counts[client]
    assert (
      summary['privacy']['rounds_per_institution'][client] == counts[client]
    )
    if counts[client] == 0:
      assert summary['privacy']['epsilon_tight'][client] == 0.0


def test_sampling_is_a_function_of_seed_and_round():
  ids = [f'i{k}' for k in range(13)]
  a = [federated.sample_clients(ids, 3, 7, r) for r in range(1, 50)]
  assert a == [federated.sample_clients(ids, 3, 7, r) for r in range(1, 50)]
  assert all(len(set(s)) == 3 and s == sorted(s, key=ids.index) for s in a)
  # 49 rounds of 3 of 13: the chance that one seed repeats the other's
  # whole sequence is (1/286)^49.
  assert a != [federated.sample_clients(ids, 3, 8, r) for r in range(1, 50)]
  assert federated.sample_clients(ids, None, 7, 1) == ids
  assert federated.sample_clients(ids, 13, 7, 1) == ids


# ---------------------------------------------------------- best model ----


def _scripted_evaluations(monkeypatch, mean_dice):
  """evaluate_prepared returns these mean Dice values, one call per round."""
  scores = iter(mean_dice)

  def fake_evaluate(predict_fn, prepared, case_ids, options=None, **kwargs):
    del predict_fn, prepared, kwargs
    dice = next(scores)
    per_case = [
      {
        'case_id': c,
        **{f'dice_{r}': dice for r in ('TC', 'WT', 'ET', 'mean')},
        **{f'hd95_{r}': 1.0 for r in ('TC', 'WT', 'ET', 'mean')},
      }
      for c in case_ids
    ]
    summary = {
      k: {'mean': v, 'median': v, 'std': 0.0}
      for k, v in per_case[0].items()
      if k != 'case_id'
    }
    return evaluate.Evaluation(per_case, summary, [], options)

  monkeypatch.setattr(evaluate, 'evaluate_prepared', fake_evaluate)


def test_best_model_is_the_best_evaluated_round(
  data_dir, tmp_path, monkeypatch
):
  _scripted_evaluations(monkeypatch, [0.2, 0.6, 0.4])
  run_dir = str(tmp_path / 'run')
  states = []
  process = fake_process.FakeProcess()
  original_next = process.next

  def recording_next(state, inputs):
    output = original_next(state, inputs)
    states.append([np.array(w) for w in output.state['trainable']])
    return output

  process.next = recording_next
  summary, _ = _run(
    _config(data_dir, total_rounds=3, rounds_per_eval=1),
    run_dir,
    process=process,
  )
  assert summary['best_round'] == 2
  assert summary['best_val_dice_mean'] == pytest.approx(0.6)
  for a, b in zip(
    run_files.weights(run_dir, 'best_model'), states[1], strict=True
  ):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(
    run_files.weights(run_dir, 'final_model'), states[2], strict=True
  ):
    np.testing.assert_array_equal(a, b)
  assert summary['exported_model'] == os.path.join(run_dir, 'exported_model')


def test_best_model_survives_resume(data_dir, tmp_path, monkeypatch):
  _scripted_evaluations(monkeypatch, [0.2, 0.6, 0.4])
  run_dir = str(tmp_path / 'run')
  _run(_config(data_dir, total_rounds=2, rounds_per_eval=1), run_dir)
  best = run_files.weights(run_dir, 'best_model')
  summary, _ = _run(
    _config(data_dir, total_rounds=3, rounds_per_eval=1), run_dir, resume=True
  )
  assert summary['best_round'] == 2
  assert summary['best_val_dice_mean'] == pytest.approx(0.6)
  for a, b in zip(run_files.weights(run_dir, 'best_model'), best, strict=True):
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------- runtime ----


def test_an_error_in_a_round_leaves_the_runtime(
  data_dir, tmp_path, monkeypatch
):
  def broken_evaluate(*args, **kwargs):
    raise RuntimeError('evaluation failed on purpose')

  monkeypatch.setattr(evaluate, 'evaluate_prepared', broken_evaluate)
  runtime = fake_process.RecordingContext()
  with pytest.raises(RuntimeError, match='on purpose'):
    _run(
      _config(data_dir, total_rounds=1), str(tmp_path / 'r'), runtime=runtime
    )
  assert runtime.events == ['enter', 'exit:RuntimeError']


# ------------------------------------------------- aggregator metrics ----


def test_aggregators_without_release_counts_and_diagnostics(data_dir, tmp_path):
  gaussian = str(tmp_path / 'gaussian')
  _run(
    _config(data_dir, total_rounds=1, mechanism=mechanisms.Gaussian(1.0, 0.1)),
    gaussian,
    process=fake_process.FakeProcess(privatization=False),
  )
  (row,) = run_files.rows(gaussian)
  assert row['released_mean'] == 'nan'
  assert row['epsilon_per_client'] == ''
  with open(os.path.join(gaussian, federated.LEDGER_TABLE)) as f:
    assert 'secure aggregation' in f.read()
  diagnostics = str(tmp_path / 'diagnostics')
  _run(_config(data_dir, total_rounds=1, diagnostics=True), diagnostics)
  (row,) = run_files.rows(diagnostics)
  assert float(row['clipped_fraction_mean']) == 0.25
  assert float(row['noisy_threshold_mean']) == 0.125
  assert 'clipped_fraction_mean' not in run_files.rows(gaussian)[0]


# ---------------------------------------------------------- validation ----


def test_inputs_are_checked_before_anything_is_written(data_dir, tmp_path):
  run_dir = str(tmp_path / 'r')
  with pytest.raises(
    ValueError, match=r'clients_per_round must be at most the 3'
  ):
    federated.FederatedLoop(_config(data_dir, clients_per_round=4), run_dir)
  empty = str(tmp_path / 'empty')
  testing_utils.write_prepared_folder(
    empty, {'a': [(16, 16, 16)]}, validation_shapes=[]
  )
  with pytest.raises(ValueError, match='data_dir must have validation cases'):
    federated.FederatedLoop(_config(empty), run_dir)
  assert not os.path.exists(run_dir)


def test_train_federated_checks_mechanism_options_before_writing(
  data_dir, tmp_path
):
  run_dir = str(tmp_path / 'r')
  config = _config(
    data_dir, mechanism=mechanisms.Gaussian(1.0, 0.1), noise_seed=3
  )
  with pytest.raises(
    ValueError, match='noise_seed must be None for the gaussian'
  ):
    federated.train_federated(config, run_dir, progress=False)
  assert not os.path.exists(run_dir)


def test_a_fixed_noise_seed_spends_no_finite_epsilon(data_dir, tmp_path):
  run_dir = str(tmp_path / 'r')
  summary, _ = _run(_config(data_dir, noise_seed=7), run_dir)
  assert summary['privacy']['per_round'] == 'no guarantee (fixed noise seed)'
  assert summary['privacy']['epsilon_tight'] == {c: None for c in _CLIENTS}
  assert [r['epsilon_worst'] for r in run_files.rows(run_dir)] == ['inf'] * 2
  with open(os.path.join(run_dir, federated.LEDGER_TABLE)) as f:
    table = f.read()
  assert 'sparse_vector (no guarantee (fixed noise seed))' in table
  assert 'fixed noise seed (noise_seed)' in table.replace('\n', ' ')


def test_without_training_statistics_no_column_or_caveat(data_dir, tmp_path):
  run_dir = str(tmp_path / 'r')
  process = fake_process.FakeProcess(training_statistics=False)
  summary, _ = _run(_config(data_dir), run_dir, process=process)
  (first, _) = run_files.rows(run_dir)
  assert first['steps'] == '12'
  assert not any(key.startswith('train_') for key in first)
  assert 'non_finite_updates' not in first
  assert summary['privacy']['caveats'] == list(_SVT.caveats)
  with open(os.path.join(run_dir, federated.LEDGER_TABLE)) as f:
    assert 'Dice voxel' not in f.read()


# ------------------------------------------------- levers of issue 13 ----


class _RecordingProcess(fake_process.FakeProcess):
  """FakeProcess that keeps the first weights the loop sets."""

  first_weights = None

  def set_model_weights(self, state, weights):
    if self.first_weights is None:
      self.first_weights = weights
    return super().set_model_weights(state, weights)


@pytest.mark.parametrize('kind', ['model_io', 'keras', 'saved_model'])
def test_starts_from_the_initial_model_with_frozen_parts(
  data_dir, tmp_path, kind
):
  # A model of the same architecture (another seed), saved as a model
  # folder, a .keras file or an exported SavedModel: the loop's first state
  # holds its weights, split by the frozen parts: the named parts are
  # trainable, the others (with the dropout key) not.
  source = _config(data_dir, seed=11).client_config().build_model()
  source_weights = {v.name: v.numpy() for v in source.weights}
  if kind == 'model_io':
    pretrained = str(tmp_path / 'pretrained')
    model_io.save_model(source, pretrained)
  elif kind == 'keras':
    pretrained = model_io.save_keras(source, str(tmp_path / 'pretrained.keras'))
  else:
    pretrained = export.export_saved_model(source, str(tmp_path / 'exported'))
  config = _config(
    data_dir,
    initial_model=pretrained,
    trainable_layers=('up0', 'head'),
    total_rounds=1,
  )
  process = _RecordingProcess()
  _run(config, str(tmp_path / 'run'), process=process)
  model = config.client_config().build_model()
  trainable = [v.name for v in model.trainable_variables]
  frozen = [v.name for v in model.non_trainable_variables]
  assert trainable and all(
    n.startswith(('up0/', 'head/')) for n in trainable
  ), trainable
  assert any(n.startswith('down1/') for n in frozen)
  weights = process.first_weights
  for names, values in (
    (trainable, weights.trainable),
    (frozen, weights.non_trainable),
  ):
    assert len(names) == len(values)
    for name, value in zip(names, values, strict=True):
      np.testing.assert_array_equal(value, source_weights[name])
  # The run's own seed gives other weights: these came from the folder.
  own = _config(data_dir).client_config().build_model()
  kernel = own.weights[0]
  assert not np.allclose(kernel.numpy(), source_weights[kernel.name])


def test_initial_model_of_another_architecture_is_refused(data_dir, tmp_path):
  other = (
    federated.FederatedConfig(
      data_dir=data_dir,
      mechanism=_SVT,
      init_filters=8,
      blocks_down=(1, 2),
      blocks_up=(1,),
    )
    .client_config()
    .build_model()
  )
  model_io.save_model(other, str(tmp_path / 'deeper'))
  config = _config(data_dir, initial_model=str(tmp_path / 'deeper'))
  with pytest.raises(
    ValueError,
    match=r'deeper/config.json: field "config.blocks_down" is \(1, 2\), but '
    r'the model to start from it has \(1, 1\)',
  ):
    federated.FederatedLoop(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    federated.FederatedLoop(
      _config(data_dir, initial_model=str(tmp_path / 'missing')),
      str(tmp_path / 'run'),
    )


def test_unknown_trainable_layer_is_named(data_dir):
  with pytest.raises(
    ValueError,
    match=r'trainable_layers must name parts of the SegResNet \(init_conv, '
    r"down0, down1, up0, head\). Found \['up0', 'down7'\]",
  ):
    _config(data_dir, trainable_layers=('up0', 'down7'))


def test_the_console_has_a_line_per_validation_and_the_rest_on_the_bar(
  data_dir, tmp_path, capsys, monkeypatch
):
  # Four rounds, validated after rounds 2 and 4: a newcomer's console gets
  # those two lines above the progress bar; the other rounds' lines go to
  # the INFO log (shown with --verbosity=0), and the bar carries the latest
  # ε.
  logged = []
  monkeypatch.setattr(
    federated.logging, 'info', lambda fmt, *args: logged.append(fmt % args)
  )
  config = fake_process.four_round_config(data_dir)
  fake_process.run_loop(config, str(tmp_path / 'run'), progress=True)
  console = capsys.readouterr().err.replace('\r', '\n').splitlines()
  shown = [line for line in console if line.startswith('round ')]
  assert [line.split(':')[0] for line in shown] == ['round 2/4', 'round 4/4']
  assert all('validation mean Dice 0.' in line for line in shown), shown
  rounds = [m.split(':')[0] for m in logged if m.startswith('round ')]
  assert rounds == ['round 1/4', 'round 3/4']
  assert any('rounds:' in line and 'ε=2' in line for line in console), console
