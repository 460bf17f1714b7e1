r"""Writes a synthetic BraTS-style data set of NIfTI files.

Example:

  python -m experiments.make_synthetic_brats --output_dir=/tmp/synthetic \
    --num_cases=40 --num_institutions=4 --shape=64,64,64

`--layout` is brats2018 (the default) or brats2023. Re-running with the
same flags over a finished folder does nothing; other flags need
`--overwrite`. See `tff_brats.data.synthetic.generate_dataset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags

from experiments import console
from experiments import shared_flags
from tff_brats.data import layouts
from tff_brats.data import synthetic

_NUM_CASES = flags.DEFINE_integer('num_cases', 40, 'Number of cases.')
_NUM_INSTITUTIONS = flags.DEFINE_integer(
  'num_institutions', 4, 'Number of institutions (federated clients).'
)
_SHAPE = flags.DEFINE_list(
  'shape', ['64', '64', '64'], 'Volume shape D,H,W; each at least 16.'
)
_SPACING = flags.DEFINE_list(
  'spacing', ['1', '1', '1'], 'Voxel size in mm along the three axes.'
)
_GRADE_FOLDERS = flags.DEFINE_bool(
  'grade_folders',
  None,
  'Put cases under HGG/ and LGG/ (brats2018 only). Default: yes for '
  'brats2018, no for brats2023.',
)
_INSTITUTION_SIZES = flags.DEFINE_enum(
  'institution_sizes',
  'even',
  list(synthetic.INSTITUTION_SIZES),
  "'even': round robin; 'paper': proportional to the BraTS 2018 "
  'institution sizes of Li et al. 2019.',
)
_LGG_FRACTION = flags.DEFINE_float(
  'lgg_fraction',
  synthetic.BRATS2018_LGG_FRACTION,
  'Probability that a case is low-grade-like.',
)

# Without --layout: the BraTS 2018-2021 layout (HGG/LGG folders, labels
# 0/1/2/4), the one of the paper's data.
_DEFAULT_LAYOUT = layouts.BRATS2018.name


# The shared flags this binary reads; --help lists them with its own.
shared_flags.declare_key_flags(
  'output_dir',
  'layout',
  'seed',
  'overwrite',
  'progress',
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  shared_flags.require('output_dir')
  kwargs = kwargs_from_flags()
  try:
    summary = synthetic.generate_dataset(**kwargs)
  except (ValueError, FileExistsError) as e:
    # The message names the parameter and the value; a traceback would only
    # bury it.
    raise SystemExit(f'make_synthetic_brats: error: {e}') from None
  print(_report(kwargs['output_dir'], summary))


def kwargs_from_flags() -> dict[str, Any]:
  """The keyword arguments of `synthetic.generate_dataset` from the flags.

  Raises:
    app.UsageError: `--shape` or `--spacing` is not a list of numbers.
  """
  return dict(
    output_dir=shared_flags.OUTPUT_DIR.value,
    num_cases=_NUM_CASES.value,
    num_institutions=_NUM_INSTITUTIONS.value,
    shape=_parse_list('shape', _SHAPE.value, int),
    spacing=_parse_list('spacing', _SPACING.value, float),
    layout=shared_flags.LAYOUT.value or _DEFAULT_LAYOUT,
    grade_folders=_GRADE_FOLDERS.value,
    institution_sizes=_INSTITUTION_SIZES.value,
    lgg_fraction=_LGG_FRACTION.value,
    seed=shared_flags.SEED.value,
    overwrite=shared_flags.OVERWRITE.value,
    progress=shared_flags.PROGRESS.value,
  )


def run_main() -> None:
  """Console entry point."""
  console.run(main)


def _parse_list(name: str, values: list[str], kind: type) -> list[Any]:
  try:
    return [kind(v) for v in values]
  except ValueError:
    raise app.UsageError(
      f'--{name} must be 3 comma-separated numbers. Found {",".join(values)!r}.'
    ) from None


def _report(output_dir: str, summary: dict[str, Any]) -> str:
  parameters = summary['parameters']
  lines = [
    f'Synthetic BraTS data in {output_dir}: {parameters["num_cases"]} cases, '
    f'layout {parameters["layout"]}, shape '
    f'{"x".join(str(d) for d in parameters["shape"])}.',
  ]
  for institution in summary['institutions']:
    lines.append(
      f'  {institution["token"]:<8} {institution["num_cases"]:4d} '
      f'{"case" if institution["num_cases"] == 1 else "cases"} '
      f'({institution["num_hgg"]} HGG, {institution["num_lgg"]} LGG)'
    )
  return '\n'.join(lines)


if __name__ == '__main__':
  console.run(main)
