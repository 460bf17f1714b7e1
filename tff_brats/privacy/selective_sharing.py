"""Selective parameter sharing: release the largest values, zero the rest.

Shokri & Shmatikov 2015, "Privacy-preserving deep learning" (CCS): each
participant uploads only a fraction of its update, the values of largest
magnitude; Li et al. 2019, "Privacy-preserving Federated Brain Tumour
Segmentation", use it with clipped values as their partial-sharing
baseline. It limits what is sent but makes no differential-privacy claim:
the released values are exact.

`largest_mask` finds the c largest of N magnitudes exactly in linear time
(a two-level radix select over the float bits), instead of sorting: the
bits of a non-negative float32 ordered as int32 are ordered like the
floats, so two 2**15/2**16-bin histograms locate the c-th largest value.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

_HIGH_BINS = 1 << 15  # bits 30..16 (the sign bit of a magnitude is 0)
_LOW_BINS = 1 << 16  # bits 15..0
_BLOCK = 4096  # values per block when counting ties


def select(
  flat: tf.Tensor, steps: tf.Tensor | None, bound: Any, count: int
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """The selective-sharing release (see `client_release.privatize`).

  Clips every value to [-bound, bound] (NaN as 0, ±inf to ±bound) and keeps
  the c largest magnitudes exactly. With normalisation, bound = n·γ:
  n·clip(ΔW / n, -γ, γ) = clip(ΔW, -n·γ, n·γ), so released values that were
  not clipped are exactly the client's.

  Args:
    flat: float32 `[N]`, the update.
    steps: Unused (the bound already carries n).
    bound: The clip bound (a number or a float32 scalar tensor).
    count: c, a Python int in [1, N].

  Returns:
    `(release, stats)`: float32 `[N]` with the c selected values (a selected
    value may be 0), and `released` = c, `noisy_threshold` NaN (no
    threshold), `passed` 0.
  """
  del steps  # in the bound
  finite = tf.where(tf.math.is_nan(flat), tf.zeros_like(flat), flat)
  clipped = tf.clip_by_value(finite, -bound, bound)
  stats = {
    'released': tf.constant(count, tf.int32),
    'noisy_threshold': tf.constant(math.nan, tf.float32),
    'passed': tf.constant(0, tf.int32),
  }
  return share_largest(clipped, count), stats


def share_largest(clipped: tf.Tensor, count: int) -> tf.Tensor:
  """Keeps the `count` values of largest magnitude and zeroes the others.

  Ties go to the lowest flat index (see `largest_mask`).

  Args:
    clipped: float32 `[N]`, finite (already clipped and without NaN).
    count: c, a Python int in [1, N].

  Returns:
    float32 `[N]`: `clipped` where selected, exactly 0 elsewhere.
  """
  if count >= clipped.shape[0]:
    return clipped
  bits, pivot, cut = _select(tf.abs(clipped), count)
  zeros = tf.zeros_like(clipped)
  # Before `cut` the values equal to the pivot are kept, after it dropped.
  return tf.concat(
    [
      tf.where(bits[:cut] >= pivot, clipped[:cut], zeros[:cut]),
      tf.where(bits[cut:] > pivot, clipped[cut:], zeros[cut:]),
    ],
    axis=0,
  )


def largest_mask(magnitudes: tf.Tensor, count: int) -> tf.Tensor:
  """A mask of the `count` largest magnitudes, ties to the lowest index.

  Exactly `count` entries are selected: every value strictly greater than
  the c-th largest, then, among the values equal to it, those with the
  lowest flat indices (the rule of `tf.math.top_k`). Deterministic.

  Args:
    magnitudes: float32 `[N]`, non-negative and finite (+0.0, not -0.0).
    count: c, a Python int in [1, N].

  Returns:
    A bool `[N]` tensor with exactly `count` True entries.
  """
  size = magnitudes.shape[0]
  if count >= size:
    return tf.ones([size], tf.bool)
  bits, pivot, cut = _select(magnitudes, count)
  return tf.concat([bits[:cut] >= pivot, bits[cut:] > pivot], axis=0)


def _select(magnitudes: tf.Tensor, count: int):
  """Finds the c-th largest magnitude and where its kept ties end.

  Returns:
    `(bits, pivot, cut)`: the magnitudes' bits as int32, the bits of the
    c-th largest (the pivot), and the index after the last tie of the pivot
    that is kept: values equal to the pivot are kept before `cut` and
    dropped from `cut` on.
  """
  size = magnitudes.shape[0]
  bits = tf.bitcast(magnitudes, tf.int32)
  high = tf.bitwise.right_shift(bits, 16)
  high_hist = tf.math.bincount(high, minlength=_HIGH_BINS, maxlength=_HIGH_BINS)
  high_bin, above = _bin_of_kth_largest(high_hist, count)
  # Second level: the low 16 bits of the values in that bin (the others go
  # to a bin that bincount ignores).
  low = tf.where(
    tf.equal(high, high_bin),
    tf.bitwise.bitwise_and(bits, _LOW_BINS - 1),
    _LOW_BINS,
  )
  low_hist = tf.math.bincount(low, minlength=_LOW_BINS, maxlength=_LOW_BINS)
  low_bin, above_in_bin = _bin_of_kth_largest(low_hist, count - above)
  pivot = high_bin * _LOW_BINS + low_bin
  ties = low_hist[low_bin]
  ties_taken = count - above - above_in_bin
  cut = tf.cond(
    tf.equal(ties, ties_taken),
    lambda: tf.constant(size, tf.int32),
    lambda: _after_nth(tf.equal(bits, pivot), ties_taken),
  )
  return bits, pivot, cut


def _after_nth(flags: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
  """1 + the index of the n-th True of `flags` (n >= 1, int32).

  Counts per block of `_BLOCK` values, then within the one block that
  holds the n-th True, instead of a cumulative sum over all N.
  """
  size = flags.shape[0]
  blocks = -(-size // _BLOCK)
  padded = tf.pad(tf.cast(flags, tf.int32), [[0, blocks * _BLOCK - size]])
  padded = tf.reshape(padded, [blocks, _BLOCK])
  before = tf.cumsum(tf.reduce_sum(padded, axis=1))
  block = tf.searchsorted(before, tf.reshape(n, [1]), side='left')[0]
  previous = tf.where(block > 0, before[tf.maximum(block - 1, 0)], 0)
  within = tf.cumsum(padded[block])
  offset = tf.searchsorted(within, tf.reshape(n - previous, [1]), side='left')
  return block * _BLOCK + offset[0] + 1


def _bin_of_kth_largest(
  hist: tf.Tensor, k: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
  """The bin of the k-th largest value, and how many lie in higher bins."""
  at_least = tf.cumsum(hist, reverse=True)  # values in bins >= b
  # at_least is non-increasing: the highest bin with at_least >= k.
  kth_bin = tf.reduce_sum(tf.cast(at_least >= k, tf.int32)) - 1
  return kth_bin, at_least[kth_bin] - hist[kth_bin]
