"""BraTS file layouts, label conventions and tumour regions.

Two naming layouts exist in the BraTS challenges:

* 2018-2021: `<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`; labels 0
  background, 1 necrotic / non-enhancing tumour core, 2 peritumoural oedema,
  4 enhancing tumour. BraTS 2018 keeps cases under `HGG/` and `LGG/`.
* 2023 and later: `<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`; the same
  labels except that enhancing tumour is 3.

Training and scoring use three nested regions (Menze et al. 2015, the BraTS
benchmark paper): WT (whole tumour) = every tumour label, TC (tumour core) =
necrotic + enhancing, ET = enhancing. Channel order everywhere in this
package is (TC, WT, ET), the order of the network's sigmoid outputs, and the
image channel order is the layout's `modalities` order (T1, T1ce, T2, FLAIR
and their 2023 equivalents).

A label value outside a layout's convention is always an error; it is never
mapped silently (a 3 in a 2018-style case may be a 2023 file or a corrupt
one, and guessing would train on wrong targets).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tff_brats.utils import checks

REGIONS = ('TC', 'WT', 'ET')
NIFTI_EXTENSIONS = ('.nii.gz', '.nii')

# Bits of the packed region mask stored in the TFRecord shards.
REGION_BITS = (1, 2, 4)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Naming and label convention of one BraTS generation.

  Attributes:
    name: 'brats2018' (2018-2021 names) or 'brats2023' (2023 and later).
    separator: Between case id and suffix in file names.
    modalities: File suffixes of the four MR sequences, in channel order
      (T1, T1 contrast-enhanced, T2, FLAIR).
    label_suffix: File suffix of the segmentation.
    necrotic_label: Necrotic / non-enhancing tumour core label.
    edema_label: Peritumoural oedema label.
    enhancing_label: Enhancing tumour label.
  """

  name: str
  separator: str
  modalities: tuple[str, str, str, str]
  label_suffix: str
  necrotic_label: int
  edema_label: int
  enhancing_label: int

  @property
  def labels(self) -> tuple[int, ...]:
    """All valid label values, background first."""
    return (
      0,
      self.necrotic_label,
      self.edema_label,
      self.enhancing_label,
    )

  @property
  def description(self) -> str:
    return {
      'brats2018': 'BraTS 2018-2021 convention',
      'brats2023': 'BraTS 2023+ convention',
    }[self.name]

  def file_name(self, case_id: str, suffix: str, ext: str = '.nii.gz') -> str:
    """File name of one modality or the segmentation of a case."""
    return f'{case_id}{self.separator}{suffix}{ext}'


BRATS2018 = Layout(
  name='brats2018',
  separator='_',
  modalities=('t1', 't1ce', 't2', 'flair'),
  label_suffix='seg',
  necrotic_label=1,
  edema_label=2,
  enhancing_label=4,
)

BRATS2023 = Layout(
  name='brats2023',
  separator='-',
  modalities=('t1n', 't1c', 't2w', 't2f'),
  label_suffix='seg',
  necrotic_label=1,
  edema_label=2,
  enhancing_label=3,
)

LAYOUTS = {layout.name: layout for layout in (BRATS2018, BRATS2023)}


def get_layout(name: str) -> Layout:
  """Returns the layout called `name` ('brats2018' or 'brats2023')."""
  checks.check_one_of('layout', name, sorted(LAYOUTS))
  return LAYOUTS[name]


def labels_to_regions(labels: np.ndarray, layout: Layout) -> np.ndarray:
  """Converts a label map to (TC, WT, ET) region channels.

  Args:
    labels: Integer label map of any shape, already checked against the
      layout's convention.
    layout: The label convention of `labels`.

  Returns:
    A bool array of shape `labels.shape + (3,)`.
  """
  et = labels == layout.enhancing_label
  tc = (labels == layout.necrotic_label) | et
  wt = tc | (labels == layout.edema_label)
  return np.stack([tc, wt, et], axis=-1)


def regions_to_labels(regions: np.ndarray, layout: Layout) -> np.ndarray:
  """Converts (TC, WT, ET) region channels back to a label map.

  The regions are nested (ET inside TC inside WT), so a voxel predicted as ET
  is enhancing whatever the other channels say, a voxel in TC but not ET is
  necrotic, and a voxel in WT only is oedema; this is the rule the region
  definitions imply and the one BraTS submissions use.

  Args:
    regions: Bool (or 0/1) array of shape `[..., 3]` in (TC, WT, ET) order.
    layout: The label convention to write.

  Returns:
    A uint8 label map of shape `regions.shape[:-1]`.
  """
  regions = np.asarray(regions).astype(bool)
  if regions.shape[-1:] != (3,):
    raise ValueError(
      f'regions must have 3 channels (TC, WT, ET) in the last axis. '
      f'Found shape {regions.shape}.'
    )
  et = regions[..., 2]
  tc = regions[..., 0] | et
  wt = regions[..., 1] | tc
  labels = np.zeros(regions.shape[:-1], np.uint8)
  labels[wt] = layout.edema_label
  labels[tc] = layout.necrotic_label
  labels[et] = layout.enhancing_label
  return labels


def pack_regions(regions: np.ndarray) -> np.ndarray:
  """Packs bool (TC, WT, ET) channels into one uint8 bit mask per voxel."""
  regions = np.asarray(regions).astype(np.uint8)
  packed = np.zeros(regions.shape[:-1], np.uint8)
  for channel, bit in enumerate(REGION_BITS):
    packed |= regions[..., channel] * np.uint8(bit)
  return packed


def unpack_regions(packed: np.ndarray) -> np.ndarray:
  """Inverse of `pack_regions`: uint8 bit mask to bool `[..., 3]`."""
  packed = np.asarray(packed, np.uint8)
  return np.stack([(packed & bit) > 0 for bit in REGION_BITS], axis=-1)
