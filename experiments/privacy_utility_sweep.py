r"""The privacy-utility study in one command.

Example (the default grid; at most 2 hours on 2 CPU cores):

  python -m experiments.privacy_utility_sweep --output_dir=sweep_output

builds the 13-institution synthetic benchmark (institution sizes of Li et
al. 2019), pre-trains a model on a public synthetic cohort (another seed,
other scanners), runs every configuration of the grid (no privacy;
selective sharing at several fractions; SVT over budgets; Gaussian
DP-FedAvg and patient-level DP-SGD over noise multipliers; both with the
levers: pre-training, a trainable decoder only, fewer longer rounds) and
writes `results.csv`, `results.md` and the plots into `--output_dir` (see
`tff_brats.training.sweep`). Interrupted, it resumes where it stopped when
run again. `--grid=FILE.json` runs another grid (e.g. larger models and
crops on GPUs; `--print_default_grid` shows the default's JSON to start
from), `--only=NAME,...` a part of it, and `--readme=README.md` puts the
table into the README between its sweep markers.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os

from absl import app
from absl import flags

from experiments import console
from experiments import shared_flags
from tff_brats.training import sweep
from tff_brats.utils import atomic

_GRID = flags.DEFINE_string(
  'grid', None, 'JSON file of the grid (default: the built-in grid).'
)
_ONLY = flags.DEFINE_list(
  'only', None, 'Run only these configurations of the grid.'
)
_README = flags.DEFINE_string(
  'readme',
  None,
  'Replace the text between "<!-- sweep results -->" and "<!-- end of '
  'sweep results -->" in this file with the results table.',
)
_PRINT_DEFAULT_GRID = flags.DEFINE_bool(
  'print_default_grid', False, 'Print the default grid as JSON and exit.'
)

BEGIN_MARKER = '<!-- sweep results -->'
END_MARKER = '<!-- end of sweep results -->'

shared_flags.declare_key_flags('output_dir', 'progress')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}.')
  if _PRINT_DEFAULT_GRID.value:
    print(json.dumps(sweep.DEFAULT_GRID, indent=1))
    return
  shared_flags.require('output_dir')
  output_dir = os.path.abspath(shared_flags.OUTPUT_DIR.value)
  try:
    grid = sweep.load_grid(_GRID.value)
    sweep.run_sweep(
      output_dir,
      grid,
      only=_ONLY.value,
      progress=shared_flags.PROGRESS.value,
    )
    with open(os.path.join(output_dir, sweep.RESULTS_MD)) as f:
      table = f.read()
    if _README.value:
      update_readme(_README.value, table)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f'privacy_utility_sweep: error: {e}') from None
  print(table)
  print(f'Results: {output_dir}')


def update_readme(path: str, table: str) -> None:
  """Puts `table` between the README's sweep markers (atomically).

  Raises:
    ValueError: The file lacks the markers (naming the file).
  """
  with open(path) as f:
    text = f.read()
  begin, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
  if begin < 0 or end < begin:
    raise ValueError(
      f'{path} must hold {BEGIN_MARKER!r} and then {END_MARKER!r}. '
      'Found neither in that order.'
    )
  text = text[: begin + len(BEGIN_MARKER)] + '\n' + table + text[end:]
  atomic.write_text(path, text)


def run_main() -> None:
  """Console entry point."""
  console.run(main)


if __name__ == '__main__':
  console.run(main)
