"""What inference must match of how a model was trained.

A network trained on crops of the brain box sees new cases best the way it
saw its training data:

* through windows of the training crop size: SegResNet's group
  normalisation takes the statistics of the whole input, so windows larger
  than the training crops score lower (on the demo data, a model trained on
  48³ crops reaches mean Dice 0.710 with 48³ windows and 0.542 with 64³);
* on the brain box widened by the `crop_margin` the training data were
  prepared with (`tff_brats.data.prepare.prepare_dataset`), the crop the
  stored training cases have.

The trainers record both with the model (`model_io.save_model(...,
training=...)` writes them into the model folder's `config.json`;
`tff_brats.inference.export` copies them into a SavedModel's
`assets.extra/export.json`), and inference uses them as its defaults.

Everything else inference must match is shared code, not a setting: the
intensity normalisation (`pipeline.normalize_intensity`, also the exported
`normalize` signature), the modality order (the same T1, T1ce, T2, FLAIR
order in every layout), the centred zero padding of volumes smaller than a
window, and the network's `size_multiple` (from the architecture).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
from typing import Any

from tff_brats.data import manifest as manifest_lib
from tff_brats.utils import checks

# The key under which model folders and exports store the record.
JSON_KEY = 'training'


@dataclasses.dataclass(frozen=True)
class TrainingMetadata:
  """The training settings inference must match.

  Attributes:
    crop_size: `(d, h, w)`, the training crop; inference's default sliding
      window.
    crop_margin: The `crop_margin` the training data were prepared with
      (voxels around the brain's bounding box), or None when the prepared
      folder does not record it.
  """

  crop_size: tuple[int, int, int]
  crop_margin: int | None = None

  def __post_init__(self):
    size = self.crop_size
    if (
      not isinstance(size, Sequence)
      or isinstance(size, str)
      or len(size) != 3
      or not all(checks.is_int(s) and s >= 1 for s in size)
    ):
      raise ValueError(
        f'crop_size must be 3 positive integers (d, h, w). Found {size!r}.'
      )
    object.__setattr__(self, 'crop_size', tuple(int(s) for s in size))
    if self.crop_margin is not None:
      checks.check_non_negative_int('crop_margin', self.crop_margin)
      object.__setattr__(self, 'crop_margin', int(self.crop_margin))

  @classmethod
  def for_prepared(
    cls, prepared: manifest_lib.Manifest, crop_size: Sequence[int]
  ) -> TrainingMetadata:
    """The record of a model trained on `crop_size` crops of `prepared`.

    Args:
      prepared: The prepared folder the model was trained on; its
        manifest's `request` holds the `crop_margin` it was prepared with.
      crop_size: The training crop `(d, h, w)`.
    """
    return cls(
      crop_size=tuple(crop_size),
      crop_margin=prepared.request.get('crop_margin'),
    )

  def to_json(self) -> dict[str, Any]:
    return {'crop_size': list(self.crop_size), 'crop_margin': self.crop_margin}

  @classmethod
  def from_json(cls, value: Any, *, where: str) -> TrainingMetadata:
    """Reads the record written by `to_json`.

    Keys other than `crop_size` and `crop_margin` are ignored (a newer
    writer may record more).

    Args:
      value: The parsed JSON value.
      where: The file it was read from, named in errors.

    Raises:
      ValueError: Naming `where`, the field and the bad value.
    """
    if not isinstance(value, Mapping) or 'crop_size' not in value:
      raise ValueError(
        f'{where}: field "{JSON_KEY}" must be an object with "crop_size". '
        f'Found {value!r}.'
      )
    try:
      return cls(
        crop_size=value['crop_size'], crop_margin=value.get('crop_margin')
      )
    except ValueError as e:
      raise ValueError(f'{where}: field "{JSON_KEY}" is invalid: {e}') from e
