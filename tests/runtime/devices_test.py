"""Tests of tff_brats.runtime.devices: the runtime choice and the devices."""

import pytest
import tensorflow as tf

from tff_brats.runtime import devices

_GPU = tf.config.PhysicalDevice('/physical_device:GPU:0', 'GPU')


def test_auto_is_the_worker_without_a_gpu(monkeypatch):
  monkeypatch.setattr(
    tf.config,
    'list_physical_devices',
    lambda device_type=None: [] if device_type == 'GPU' else ['cpu'],
  )
  assert devices.resolve_runtime('auto') == 'worker'


def test_auto_is_in_process_with_a_gpu(monkeypatch):
  real = tf.config.list_physical_devices
  monkeypatch.setattr(
    tf.config,
    'list_physical_devices',
    lambda device_type=None: [_GPU] if device_type == 'GPU' else real(),
  )
  assert devices.resolve_runtime('auto') == 'in_process'


@pytest.mark.parametrize('name', ['worker', 'in_process'])
def test_explicit_runtimes_are_kept(name):
  assert devices.resolve_runtime(name) == name


def test_unknown_runtime():
  with pytest.raises(ValueError, match=r"runtime must be one of .* 'gpu'"):
    devices.resolve_runtime('gpu')


def test_without_a_gpu_clients_train_on_the_cpu():
  # This machine has no GPU (the `gpu`-marked tests cover one).
  if tf.config.list_logical_devices('GPU'):
    pytest.skip('a GPU is visible')
  assert devices.training_devices() == ['/device:CPU:0']
  assert devices.configure_gpus() == []


def test_memory_growth_is_set_on_every_gpu(monkeypatch):
  calls = []
  monkeypatch.setattr(
    tf.config, 'list_physical_devices', lambda device_type=None: [_GPU]
  )
  monkeypatch.setattr(
    tf.config.experimental,
    'set_memory_growth',
    lambda device, enable: calls.append((device.name, enable)),
  )
  assert devices.configure_gpus() == [_GPU.name]
  assert calls == [(_GPU.name, True)]


def test_memory_growth_too_late_is_a_warning(monkeypatch):
  warnings = []
  monkeypatch.setattr(
    devices.logging, 'warning', lambda msg, *args: warnings.append(msg % args)
  )
  monkeypatch.setattr(
    tf.config, 'list_physical_devices', lambda device_type=None: [_GPU]
  )

  def too_late(device, enable):
    raise RuntimeError(
      'Physical devices cannot be modified after being initialized'
    )

  monkeypatch.setattr(tf.config.experimental, 'set_memory_growth', too_late)
  assert devices.configure_gpus() == [_GPU.name]
  (warning,) = warnings
  assert 'GPU:0' in warning and 'cannot be modified' in warning
