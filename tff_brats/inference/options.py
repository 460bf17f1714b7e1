"""The options of inference, checked once where they are built.

`InferenceOptions` holds how a case is segmented: the sliding window
(`window`, `overlap`, `blending`, `sigma_scale`, `batch_size`), the
`threshold` on the region probabilities, the label convention of the
output (`output_layout`) and the brain-box `crop_margin`. Prediction on
NIfTI files (`case_prediction`, `predict`) and scoring of prepared cases
(`tff_brats.evaluation.evaluate`) take one such object.

`window` and `crop_margin` should be those the model was trained with (see
`tff_brats.models.training_metadata`). Left None, `resolve` takes them
from the model's record; an explicit value that differs from the record is
used, with a warning naming both. A model that records nothing gets the
caller's default window (`DEFAULT_WINDOW` for prediction) and crop margin
0, with a warning that the model records no training crop.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

from absl import logging

from tff_brats.data import layouts
from tff_brats.inference import sliding_window
from tff_brats.models import training_metadata
from tff_brats.utils import checks

# A common training crop, a multiple of SegResNet's 8: the window of models
# that record no training crop.
DEFAULT_WINDOW = (128, 128, 128)
# The `prepare_data` default: the crop of models that record no margin.
DEFAULT_CROP_MARGIN = 0


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
  """How cases are segmented (see the module doc).

  Attributes:
    window: Sliding-window size `(d, h, w)` (one int: a cube), a multiple
      of the model's `size_multiple`; None: the model's training crop.
    overlap: Fraction of a window shared with its neighbour, in [0, 1).
    blending: 'gaussian' or 'constant' (see `sliding_window`).
    sigma_scale: The Gaussian's sigma as a fraction of the window (one
      number or one per axis).
    threshold: Probability at or above which a voxel is in a region, in
      (0, 1).
    batch_size: Windows per network call.
    output_layout: 'brats2018' or 'brats2023' to write labels of that
      convention; None uses each case's own.
    crop_margin: Voxels kept around the brain's bounding box, as
      `prepare_data --crop_margin`; None: the margin of the model's
      training data.
  """

  window: tuple[int, int, int] | None = None
  overlap: float = sliding_window.DEFAULT_OVERLAP
  blending: str = 'gaussian'
  sigma_scale: float | tuple[float, float, float] = (
    sliding_window.DEFAULT_SIGMA_SCALE
  )
  threshold: float = sliding_window.DEFAULT_THRESHOLD
  batch_size: int = 1
  output_layout: str | None = None
  crop_margin: int | None = None
  # Set by `resolve`: the options have met a model (see `resolved`).
  _resolved: bool = dataclasses.field(
    default=False, init=False, repr=False, compare=False
  )

  def __post_init__(self):
    if self.window is not None:
      object.__setattr__(
        self, 'window', sliding_window.check_window(self.window)
      )
    sliding_window.check_overlap(self.overlap)
    checks.check_one_of(
      'blending', self.blending, sliding_window.BLENDING_MODES
    )
    sliding_window.check_sigma_scale(self.sigma_scale)
    if isinstance(self.sigma_scale, Sequence):
      object.__setattr__(self, 'sigma_scale', tuple(self.sigma_scale))
    sliding_window.check_threshold(self.threshold)
    checks.check_positive_int('batch_size', self.batch_size)
    if self.output_layout is not None:
      checks.check_one_of(
        'output_layout', self.output_layout, sorted(layouts.LAYOUTS)
      )
    if self.crop_margin is not None:
      checks.check_non_negative_int('crop_margin', self.crop_margin)

  @property
  def resolved(self) -> bool:
    """Whether these options came from `resolve` (window and margin set)."""
    return self._resolved

  def sliding_window_kwargs(self) -> dict[str, Any]:
    """The keyword arguments of `sliding_window.sliding_window_inference`.

    Raises:
      ValueError: `window` is None (call `resolve` first).
    """
    if self.window is None:
      raise ValueError(
        'window must be set to run the sliding window (resolve the options '
        'against the model first). Found None.'
      )
    return dict(
      window=self.window,
      overlap=self.overlap,
      blending=self.blending,
      sigma_scale=self.sigma_scale,
      batch_size=self.batch_size,
    )

  def resolve(
    self,
    training: training_metadata.TrainingMetadata | None,
    *,
    size_multiple: int = 1,
    default_window: Sequence[int] = DEFAULT_WINDOW,
  ) -> InferenceOptions:
    """These options for a model trained as `training` records.

    Unset `window` and `crop_margin` are taken from `training`; explicit
    ones that differ from it are kept, with an absl warning naming both
    values. Without a record, an unset window becomes `default_window` and
    an unset margin `DEFAULT_CROP_MARGIN`, with a warning that the model
    records no training crop. Options that are already `resolved` are
    returned unchanged (so a run warns once, not once per case).

    Args:
      training: The model's record (e.g. `Predictor.training`), or None.
      size_multiple: The model's size multiple; every window size must be
        a multiple of it.
      default_window: The window of a model without a record.

    Returns:
      Options with `window` and `crop_margin` set, `resolved` True.

    Raises:
      ValueError: The window is not a multiple of `size_multiple`.
    """
    checks.check_positive_int('size_multiple', size_multiple)
    if self._resolved:
      self.check_window_fits(size_multiple)
      return self
    window, crop_margin = self.window, self.crop_margin
    if training is None:
      if window is None:
        window = sliding_window.check_window(tuple(default_window))
        logging.warning(
          'The model records no training crop; using the default window '
          '%s. Pass the crop size the model was trained with (--window): '
          'other windows usually score lower.',
          window,
        )
      if crop_margin is None:
        crop_margin = DEFAULT_CROP_MARGIN
    else:
      window = _recorded_or_given(
        'window', window, training.crop_size, "the model's training crop"
      )
      crop_margin = _recorded_or_given(
        'crop_margin',
        crop_margin,
        training.crop_margin,
        "the crop_margin of the model's training data",
        unrecorded=DEFAULT_CROP_MARGIN,
      )
    resolved = dataclasses.replace(self, window=window, crop_margin=crop_margin)
    object.__setattr__(resolved, '_resolved', True)
    resolved.check_window_fits(size_multiple)
    return resolved

  def check_window_fits(self, size_multiple: int) -> None:
    """Raises ValueError unless every window size is a multiple."""
    if self.window is not None and any(w % size_multiple for w in self.window):
      raise ValueError(
        f'window must be a multiple of {size_multiple} along every axis for '
        f'this model. Found {self.window}.'
      )

  def to_json(self) -> dict[str, Any]:
    """The options as JSON values (for summaries next to the scores)."""
    return {
      'window': None if self.window is None else list(self.window),
      'overlap': self.overlap,
      'blending': self.blending,
      'sigma_scale': (
        list(self.sigma_scale)
        if isinstance(self.sigma_scale, tuple)
        else self.sigma_scale
      ),
      'threshold': self.threshold,
      'batch_size': self.batch_size,
      'output_layout': self.output_layout,
      'crop_margin': self.crop_margin,
    }


def _recorded_or_given(
  name: str, given: Any, recorded: Any, what: str, unrecorded: Any = None
) -> Any:
  """`given` (warning if it differs from `recorded`), else `recorded`."""
  if given is None:
    return unrecorded if recorded is None else recorded
  if recorded is not None and given != recorded:
    logging.warning(
      '%s %s differs from %s, %s; using %s. Inference that does not match '
      'training usually scores lower.',
      name,
      given,
      what,
      recorded,
      given,
    )
  return given


def resolve_for(
  options: InferenceOptions | None,
  predictor: Any,
  *,
  default_window: Sequence[int] = DEFAULT_WINDOW,
) -> InferenceOptions:
  """`options` resolved for `predictor` (see `InferenceOptions.resolve`).

  Args:
    options: The options; None means `InferenceOptions()`.
    predictor: A `predictors.Predictor`, or any function of window batches
      (which records nothing and accepts any window size).
    default_window: The window when neither `options` nor the predictor's
      record gives one.

  Raises:
    ValueError: `options` is not an `InferenceOptions`, or the window does
      not fit the predictor.
  """
  if options is None:
    options = InferenceOptions()
  if not isinstance(options, InferenceOptions):
    raise ValueError(
      f'options must be an InferenceOptions. Found {type(options).__name__}.'
    )
  return options.resolve(
    getattr(predictor, 'training', None),
    size_multiple=getattr(predictor, 'size_multiple', 1),
    default_window=default_window,
  )
