"""Federated partitions of BraTS cases: clients plus a shared validation set.

A `Partition` maps client ids to disjoint sets of case ids and holds a
validation set shared by every client and disjoint from all of them.
`make_partition` builds one from a list of case ids and a spec string:

* `brats18_institutions`: one client per institution, the institution token
  of the case id (`Brats18_CBICA_AAB_1` -> 'CBICA'). This is the split of
  Li et al. 2019, "Privacy-preserving Federated Brain Tumour Segmentation"
  (MICCAI MLMI): BraTS 2018's 242 training cases give 13 clients of 18, 77,
  20, 30, 11, 7, 3, 6, 13, 9, 32, 5 and 11 cases.
* `brats18_li2019`: the paper's exact split (clients `site-1` ... `site-13`
  and its 43 validation cases), shipped in `partitions/` with its provenance.
* `fets_csv:PATH`: a FeTS partition CSV (`Partition_ID,Subject_ID`; Pati et
  al. 2022, "The Federated Tumor Segmentation (FeTS) Challenge"), which is
  how institutions are known for BraTS 2020/2021 ids.
* `uniform:K`: a seeded shuffle cut into K clients whose sizes differ by at
  most one.
* `skewed:K` or `skewed:K:ALPHA`: a seeded size-skewed split; client
  proportions are drawn from a symmetric Dirichlet(ALPHA) (default
  `DEFAULT_SKEW_ALPHA`) and every client keeps at least one case.

The validation set comes from `validation_cases` (a file of case ids or the
built-in name 'brats18_li2019') or `validation_fraction` (a seeded fraction
of every institution) and is removed before the clients are formed, so
random specs split only the training pool.

Order: case ids are sorted (plain string order) everywhere; clients are in
natural order of their ids, where runs of digits compare by value
(`site-2` before `site-10`, '2013' before 'CBICA', `client-09` before
`client-10`). Every result is a function of the set of case ids, the spec,
the validation arguments and `seed` only, never of the order of `case_ids`.

Errors: bad argument values (a spec, K, ALPHA, a fraction, a seed) raise
`ValueError`; problems with the cases or files (an id without institution, a
CSV row, a validation file) raise `errors.BratsDataError`, which names the
case, the file and the line.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from collections.abc import Mapping
import csv
import dataclasses
import functools
import importlib.resources
import io
import math
import numbers
import os
import re
from typing import Any

from absl import logging
import numpy as np

from tff_brats.data import errors
from tff_brats.utils import checks

BUILTIN_PARTITIONS = ('brats18_li2019',)

# Default concentration of `skewed:K`: at 0.5 a draw of 10 clients typically
# spans more than an order of magnitude in size, the heterogeneity studied in
# Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution
# for Federated Visual Classification".
DEFAULT_SKEW_ALPHA = 0.5

VALIDATION = 'validation'
SPEC_FORMS = (
  'brats18_institutions',
  'brats18_li2019',
  'fets_csv:PATH',
  'uniform:K',
  'skewed:K',
  'skewed:K:ALPHA',
)

_CLIENT_ID = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')
# BraTS 2018/2019: Brats18_2013_10_1, Brats18_CBICA_AAB_1, BraTS19_TCIA01_131_1.
_BRATS18_ID = re.compile(r'^(?i:brats)\d\d_([A-Za-z0-9]+)_[A-Za-z0-9]+_\d+$')
# 2023-style ids whose middle token is an institution: BraTS-CBICA-00001-000.
_BRATS23_ID = re.compile(r'^(?i:brats)-([A-Za-z0-9]+)-\d+-\d+$')
# Tokens in those positions that are not institutions: data-set splits, and
# the BraTS 2023 sub-challenges (BraTS-GLI-00000-000 is glioma, not a site).
_NOT_INSTITUTIONS = frozenset(
  ('training', 'validation', 'testing', 'gli', 'men', 'met', 'ped', 'ssa')
)
_BUILTIN_LI2019_FILE = 'brats18_li2019_partition.csv'
_SHOW = 5  # How many ids an error or warning lists.


@dataclasses.dataclass(frozen=True)
class Partition:
  """Federated clients plus a validation set shared by all of them.

  Construction normalises the fields: every case list becomes a sorted
  tuple and clients are put in natural order of their ids (see the module
  docstring), so two partitions of the same cases compare equal.

  Attributes:
    clients: Client id -> sorted case ids. Clients are disjoint and none is
      empty; ids match `[A-Za-z0-9][A-Za-z0-9_.-]*` and are not
      'validation'.
    validation: Sorted case ids shared by all clients for validation,
      disjoint from every client (may be empty).
    spec: The spec string the partition was made from.
    seed: The seed it was made with.
  """

  clients: dict[str, tuple[str, ...]]
  validation: tuple[str, ...]
  spec: str
  seed: int

  def __post_init__(self):
    if not isinstance(self.spec, str):
      raise ValueError(f'spec must be a string. Found {self.spec!r}.')
    checks.check_non_negative_int('seed', self.seed)
    if not isinstance(self.clients, Mapping) or not self.clients:
      raise errors.BratsDataError(
        f'clients must be a non-empty mapping of client id to case ids. '
        f'Found {self.clients!r}.'
      )
    owner = {}
    clients = {}
    for client_id, cases in self.clients.items():
      _check_client_id(client_id)
      cases = _case_tuple(cases, f'client {client_id!r}')
      if not cases:
        raise errors.BratsDataError(
          f'client {client_id!r} must hold at least one case. Found none.'
        )
      for case in cases:
        if case in owner:
          raise errors.BratsDataError(
            f'clients must be disjoint. Found the case in clients '
            f'{owner[case]!r} and {client_id!r}.',
            case_id=case,
          )
        owner[case] = client_id
      clients[client_id] = cases
    validation = _case_tuple(self.validation, 'validation')
    for case in validation:
      if case in owner:
        raise errors.BratsDataError(
          f'validation must be disjoint from every client. Found the case '
          f'in validation and in client {owner[case]!r}.',
          case_id=case,
        )
    ordered = {k: clients[k] for k in sorted(clients, key=_natural_key)}
    object.__setattr__(self, 'clients', ordered)
    object.__setattr__(self, 'validation', validation)
    object.__setattr__(self, 'seed', int(self.seed))

  def client_sizes(self) -> dict[str, int]:
    """Client id -> number of cases, in client order."""
    return {client: len(cases) for client, cases in self.clients.items()}

  def to_json(self) -> dict[str, Any]:
    """Returns a JSON-serialisable dict; `from_json` inverts it."""
    return {
      'spec': self.spec,
      'seed': self.seed,
      'clients': {
        client: list(cases) for client, cases in self.clients.items()
      },
      'validation': list(self.validation),
    }

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> Partition:
    """Rebuilds a partition from `to_json` output, checking its invariants.

    Args:
      d: A mapping with exactly the keys 'spec', 'seed', 'clients' and
        'validation'. Client order in `d` does not matter.

    Returns:
      The partition.

    Raises:
      errors.BratsDataError: `d` is not a valid partition.
    """
    keys = ('spec', 'seed', 'clients', 'validation')
    if not isinstance(d, Mapping) or set(d) != set(keys):
      found = sorted(d) if isinstance(d, Mapping) else d
      raise errors.BratsDataError(
        f'partition JSON must have exactly the keys {list(keys)}. '
        f'Found {found!r}.'
      )
    if not isinstance(d['clients'], Mapping):
      raise errors.BratsDataError(
        f'partition JSON clients must be an object of client id to case '
        f'ids. Found {d["clients"]!r}.'
      )
    return cls(
      clients=dict(d['clients']),
      validation=d['validation'],
      spec=d['spec'],
      seed=d['seed'],
    )

  def table(self) -> str:
    """A readable table: one row per client, a total and the validation."""
    sizes = self.client_sizes()
    rows = [(client, str(size)) for client, size in sizes.items()]
    footer = [
      (f'total ({len(sizes)} clients)', str(sum(sizes.values()))),
      (VALIDATION, str(len(self.validation))),
    ]
    name_width = max(len(name) for name, _ in [('client', ''), *rows, *footer])
    size_width = max(len(size) for _, size in [('', 'cases'), *rows, *footer])
    rule = f'{"-" * name_width}  {"-" * size_width}'
    lines = [f'partition {self.spec!r}, seed {self.seed}']
    lines.append(f'{"client":<{name_width}}  {"cases":>{size_width}}')
    lines.append(rule)
    lines += [f'{n:<{name_width}}  {s:>{size_width}}' for n, s in rows]
    lines.append(rule)
    lines += [f'{n:<{name_width}}  {s:>{size_width}}' for n, s in footer]
    return '\n'.join(lines)


def institution_token(case_id: str) -> str:
  """Returns the institution token of a BraTS case id.

  'Brats18_2013_10_1' -> '2013', 'Brats18_CBICA_AAB_1' -> 'CBICA',
  'BraTS19_TCIA01_131_1' -> 'TCIA01', 'BraTS-CBICA-00001-000' -> 'CBICA'.

  Args:
    case_id: A BraTS 2018/2019 case id or a 2023-style id whose middle token
      is an institution.

  Returns:
    The token, spelled as in the id.

  Raises:
    errors.BratsDataError: The id carries no institution, e.g. BraTS
      2020/2021 ids ('BraTS20_Training_001', 'BraTS2021_00000') or real
      BraTS 2023 ids, whose token is the sub-challenge ('GLI').
  """
  token = _match_token(case_id)
  if token is None:
    raise errors.BratsDataError(_no_token_message(case_id), case_id=case_id)
  return token


def make_partition(
  case_ids: Iterable[str],
  spec: str,
  *,
  seed: int = 0,
  validation_cases: str | os.PathLike[str] | None = None,
  validation_fraction: float | None = None,
) -> Partition:
  """Splits cases into federated clients and a shared validation set.

  Args:
    case_ids: The available case ids (any order, no duplicates).
    spec: How to form clients; one of `SPEC_FORMS` (see the module
      docstring).
    seed: Seed of `numpy.random.default_rng` for every random choice.
    validation_cases: A file of validation case ids (see `read_case_list`)
      or a built-in name from `BUILTIN_PARTITIONS`.
    validation_fraction: In (0, 1): the fraction of each institution (of the
      whole pool when some id has no institution token) held out for
      validation, round(fraction * n) rounded half up, leaving at least one
      case of each group for training.

  Returns:
    The partition.

  Raises:
    ValueError: A bad spec, seed or validation argument.
    errors.BratsDataError: The cases do not fit the spec or the validation
      source (missing or extra cases, ids without institution, bad CSV
      rows).
  """
  cases = _check_case_ids(case_ids)
  checks.check_non_negative_int('seed', seed)
  kind, args = _parse_spec(spec)
  if validation_cases is not None and validation_fraction is not None:
    raise ValueError(
      f'validation_cases and validation_fraction must not both be given. '
      f'Found validation_cases={validation_cases!r} and '
      f'validation_fraction={validation_fraction!r}.'
    )
  if kind == 'brats18_li2019':
    if validation_cases is not None or validation_fraction is not None:
      raise ValueError(
        "spec 'brats18_li2019' must be used without validation_cases or "
        'validation_fraction (it defines its own 43 validation cases). '
        f'Found validation_cases={validation_cases!r}, '
        f'validation_fraction={validation_fraction!r}.'
      )
    clients, validation = _li2019_split(cases)
    return Partition(clients, validation, spec, seed)

  rng = np.random.default_rng(seed)
  validation = _validation(cases, validation_cases, validation_fraction, rng)
  held_out = set(validation)
  pool = tuple(case for case in cases if case not in held_out)
  if not pool:
    raise errors.BratsDataError(
      f'validation must leave at least one training case. Found all '
      f'{len(cases)} cases in validation.'
    )
  clients = _clients(kind, args, spec, pool, cases, held_out, rng)
  return Partition(clients, validation, spec, seed)


def read_case_list(path_or_builtin: str | os.PathLike[str]) -> tuple[str, ...]:
  """Reads a list of case ids, e.g. a validation set.

  Accepted sources:

  * a built-in name from `BUILTIN_PARTITIONS`: its validation cases;
  * a CSV (a `.csv` name, or a first line holding a comma) with a
    `Subject_ID` column; when it also has a `Partition` column only the rows
    whose Partition is 'validation' count (so the built-in CSV, or any file
    in its format, can be passed as is);
  * any other file: one case id per line; `#` starts a comment, blank lines
    are ignored.

  Args:
    path_or_builtin: A built-in name or a file path.

  Returns:
    The case ids in file order.

  Raises:
    errors.BratsDataError: The file is missing, malformed, empty or lists a
      case twice.
  """
  return tuple(case for case, _ in _read_case_lines(path_or_builtin)[1])


# ----------------------------------------------------------------------------
# Specs.


def _parse_spec(spec: str) -> tuple[str, tuple[Any, ...]]:
  """Splits a spec into its kind and checked arguments."""
  if not isinstance(spec, str):
    raise ValueError(f'spec must be a string. Found {spec!r}.')
  kind, _, rest = spec.partition(':')
  if spec in ('brats18_institutions', 'brats18_li2019'):
    return spec, ()
  if kind == 'fets_csv' and rest:
    return kind, (os.path.expanduser(rest),)
  elif kind == 'uniform' and rest:
    return kind, (_parse_num_clients(rest, spec),)
  elif kind == 'skewed' and rest:
    k_text, _, alpha_text = rest.partition(':')
    alpha = DEFAULT_SKEW_ALPHA
    if alpha_text or rest.endswith(':'):
      alpha = _parse_alpha(alpha_text, spec)
    return kind, (_parse_num_clients(k_text, spec), alpha)
  forms = ', '.join(repr(form) for form in SPEC_FORMS)
  raise ValueError(f'spec must be one of {forms}. Found {spec!r}.')


def _parse_num_clients(text: str, spec: str) -> int:
  if not re.fullmatch(r'[0-9]+', text) or int(text) < 1:
    raise ValueError(
      f'K must be an integer >= 1 in spec {spec!r}. Found {text!r}.'
    )
  return int(text)


def _parse_alpha(text: str, spec: str) -> float:
  try:
    alpha = float(text)
  except ValueError:
    alpha = math.nan
  if not math.isfinite(alpha) or alpha <= 0:
    raise ValueError(
      f'ALPHA must be a finite number > 0 in spec {spec!r}. Found {text!r}.'
    )
  return alpha


# ----------------------------------------------------------------------------
# Client splits.


def _clients(
  kind: str,
  args: tuple[Any, ...],
  spec: str,
  pool: tuple[str, ...],
  cases: tuple[str, ...],
  held_out: set[str],
  rng: np.random.Generator,
) -> dict[str, list[str]]:
  """Splits the training pool into clients (all specs but brats18_li2019)."""
  if kind == 'brats18_institutions':
    return _institution_clients(pool)
  if kind == 'fets_csv':
    return _fets_clients(args[0], cases, held_out)
  num_clients = args[0]
  if num_clients > len(pool):
    raise ValueError(
      f'K must be at most the number of training cases ({len(pool)}) in '
      f'spec {spec!r}. Found {num_clients}.'
    )
  if kind == 'uniform':
    sizes = _uniform_sizes(len(pool), num_clients)
  else:
    sizes = _skewed_sizes(len(pool), num_clients, args[1], rng)
  return _cut(pool, sizes, rng)


def _institution_clients(pool: tuple[str, ...]) -> dict[str, list[str]]:
  """Groups cases by institution token."""
  missing = [case for case in pool if _match_token(case) is None]
  if missing:
    raise errors.BratsDataError(
      f'{_no_token_message(missing[0])} {len(missing)} of {len(pool)} '
      f'training case ids have no institution token '
      f'(first: {_first(missing)}).',
      case_id=missing[0],
    )
  return _group_by_token(pool)


def _li2019_split(
  cases: tuple[str, ...],
) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
  """The paper's split; `cases` must be exactly its 285 cases."""
  path, rows = _builtin_li2019()
  expected = {case for case, _, _ in rows}
  given = set(cases)
  missing = sorted(expected - given)
  extra = sorted(given - expected)
  if missing or extra:
    raise errors.BratsDataError(
      f'case_ids must be exactly the {len(expected)} BraTS 2018 training '
      f"cases of spec 'brats18_li2019'. Found {len(cases)} case ids: "
      f'{_count_first(missing)} of its cases missing, '
      f'{_count_first(extra)} not in it.',
      path=path,
    )
  clients = {}
  for case, partition, _ in rows:
    if partition != VALIDATION:
      clients.setdefault(partition, []).append(case)
  validation = tuple(case for case, p, _ in rows if p == VALIDATION)
  return clients, validation


def _fets_clients(
  path: str, cases: tuple[str, ...], held_out: set[str]
) -> dict[str, list[str]]:
  """Clients of a FeTS partition CSV, minus the validation cases."""
  header, rows = _read_csv(path)
  columns = _column_indices(header, ('Partition_ID', 'Subject_ID'), path)
  known = set(cases)
  clients = {}
  first_line = {}
  for line, row in rows:
    client = _field(row, columns['Partition_ID'], 'Partition_ID', line, path)
    case = _field(row, columns['Subject_ID'], 'Subject_ID', line, path)
    if not _CLIENT_ID.match(client) or client.lower() == VALIDATION:
      raise errors.BratsDataError(
        f'line {line}: Partition_ID {_client_id_rule()} Found {client!r}.',
        path=path,
      )
    if case in first_line:
      raise errors.BratsDataError(
        f'line {line}: Subject_ID must be listed once. Found it again '
        f'(first on line {first_line[case]}).',
        case_id=case,
        path=path,
      )
    first_line[case] = line
    if case not in known:
      raise errors.BratsDataError(
        f'line {line}: Subject_ID must be one of the {len(known)} case_ids. '
        f'Found {case!r}.',
        case_id=case,
        path=path,
      )
    if case not in held_out:
      clients.setdefault(client, []).append(case)
  if not first_line:
    raise errors.BratsDataError(
      'FeTS partition CSV must list at least one subject. Found none.',
      path=path,
    )
  left_out = [c for c in cases if c not in first_line and c not in held_out]
  if left_out:
    logging.warning(
      'FeTS partition CSV %r does not list %d of the %d case ids; they are '
      'left out of the clients (first: %s).',
      path,
      len(left_out),
      len(cases),
      _first(left_out),
    )
  if not clients:
    raise errors.BratsDataError(
      'FeTS partition CSV must leave at least one training case outside '
      'validation. Found none.',
      path=path,
    )
  return clients


def _uniform_sizes(n: int, num_clients: int) -> np.ndarray:
  sizes = np.full(num_clients, n // num_clients)
  sizes[: n % num_clients] += 1
  return sizes


def _skewed_sizes(
  n: int, num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
  """One case each, the rest by Dirichlet proportions (largest remainder)."""
  proportions = rng.dirichlet(np.full(num_clients, alpha))
  if not np.all(np.isfinite(proportions)):
    raise ValueError(
      f'ALPHA must be large enough for a finite Dirichlet draw. Found '
      f'{alpha!r}.'
    )
  shares = proportions * (n - num_clients)
  sizes = np.floor(shares).astype(int)
  remainder = n - num_clients - int(sizes.sum())
  order = np.argsort(-(shares - sizes), kind='stable')
  sizes[order[:remainder]] += 1
  return sizes + 1


def _cut(
  pool: tuple[str, ...], sizes: np.ndarray, rng: np.random.Generator
) -> dict[str, list[str]]:
  """Shuffles the (sorted) pool and cuts it into clients of `sizes`."""
  shuffled = [pool[i] for i in rng.permutation(len(pool))]
  width = max(2, len(str(len(sizes) - 1)))
  bounds = np.concatenate([[0], np.cumsum(sizes)])
  return {
    f'client-{k:0{width}d}': shuffled[bounds[k] : bounds[k + 1]]
    for k in range(len(sizes))
  }


# ----------------------------------------------------------------------------
# Validation sets.


def _validation(
  cases: tuple[str, ...],
  validation_cases: str | os.PathLike[str] | None,
  validation_fraction: float | None,
  rng: np.random.Generator,
) -> tuple[str, ...]:
  if validation_cases is not None:
    return _validation_from_list(validation_cases, cases)
  if validation_fraction is not None:
    return _validation_from_fraction(validation_fraction, cases, rng)
  return ()


def _validation_from_list(
  source: str | os.PathLike[str], cases: tuple[str, ...]
) -> tuple[str, ...]:
  path, entries = _read_case_lines(source)
  known = set(cases)
  for case, line in entries:
    if case not in known:
      raise errors.BratsDataError(
        f'line {line}: validation case must be one of the {len(known)} '
        f'case_ids. Found {case!r}.',
        case_id=case,
        path=path,
      )
  return tuple(sorted(case for case, _ in entries))


def _validation_from_fraction(
  fraction: float, cases: tuple[str, ...], rng: np.random.Generator
) -> tuple[str, ...]:
  """A seeded `fraction` of each institution (or of the whole pool)."""
  if (
    isinstance(fraction, bool)
    or not isinstance(fraction, numbers.Real)
    or not 0 < fraction < 1
  ):
    raise ValueError(
      f'validation_fraction must be a number in (0, 1). Found {fraction!r}.'
    )
  if all(_match_token(case) is not None for case in cases):
    groups = _group_by_token(cases)
  else:
    groups = {'': list(cases)}
  validation = []
  for group in groups.values():
    # Rounded half up (not to even); the epsilon absorbs products such as
    # 0.15 * 10 = 1.4999999999999998.
    count = math.floor(fraction * len(group) + 0.5 + 1e-9)
    count = min(count, len(group) - 1)
    picks = rng.choice(len(group), size=count, replace=False)
    validation += [group[i] for i in picks]
  if not validation:
    raise ValueError(
      f'validation_fraction must select at least one case. Found '
      f'{fraction!r}, which rounds to no case in any of the {len(groups)} '
      f'groups of {len(cases)} cases.'
    )
  return tuple(sorted(validation))


# ----------------------------------------------------------------------------
# Files.


@functools.lru_cache(maxsize=1)
def _builtin_li2019() -> tuple[str, tuple[tuple[str, str, int], ...]]:
  """(path, rows of (case, partition, line)) of the built-in CSV."""
  resource = (
    importlib.resources.files('tff_brats.data')
    .joinpath('partitions')
    .joinpath(_BUILTIN_LI2019_FILE)
  )
  path = str(resource)
  header, rows = _parse_csv(resource.read_text(encoding='utf-8'), path)
  columns = _column_indices(header, ('Subject_ID', 'Partition'), path)
  parsed = []
  for line, row in rows:
    case = _field(row, columns['Subject_ID'], 'Subject_ID', line, path)
    partition = _field(row, columns['Partition'], 'Partition', line, path)
    parsed.append((case, partition, line))
  return path, tuple(parsed)


def _read_case_lines(
  source: str | os.PathLike[str],
) -> tuple[str, list[tuple[str, int]]]:
  """(path, [(case id, line)]) of a case list, checked for duplicates."""
  if isinstance(source, str) and source in BUILTIN_PARTITIONS:
    path, rows = _builtin_li2019()
    entries = [(case, line) for case, p, line in rows if p == VALIDATION]
    return path, entries
  if not isinstance(source, (str, os.PathLike)):
    raise ValueError(
      f'validation_cases must be a file path or one of '
      f'{list(BUILTIN_PARTITIONS)}. Found {source!r}.'
    )
  path = os.path.expanduser(os.fspath(source))
  text = _read_text(path, 'case list')
  first = next((ln for ln in text.splitlines() if ln.strip()), '')
  if path.lower().endswith('.csv') or ',' in first:
    entries = _case_lines_from_csv(text, path)
  else:
    entries = _case_lines_from_text(text, path)
  if not entries:
    raise errors.BratsDataError(
      'case list must hold at least one case id. Found none.', path=path
    )
  first_line = {}
  for case, line in entries:
    if case in first_line:
      raise errors.BratsDataError(
        f'line {line}: case list must list each case once. Found it again '
        f'(first on line {first_line[case]}).',
        case_id=case,
        path=path,
      )
    first_line[case] = line
  return path, entries


def _case_lines_from_text(text: str, path: str) -> list[tuple[str, int]]:
  entries = []
  for line, raw in enumerate(text.splitlines(), start=1):
    content = raw.split('#', 1)[0].strip()
    if not content:
      continue
    if len(content.split()) > 1:
      raise errors.BratsDataError(
        f'line {line}: case list must hold one case id per line. Found '
        f'{content!r}.',
        path=path,
      )
    entries.append((content, line))
  return entries


def _case_lines_from_csv(text: str, path: str) -> list[tuple[str, int]]:
  header, rows = _parse_csv(text, path)
  columns = _column_indices(header, ('Subject_ID',), path)
  partition = header.index('Partition') if 'Partition' in header else None
  entries = []
  for line, row in rows:
    if partition is not None:
      value = row[partition].strip() if partition < len(row) else ''
      if value != VALIDATION:
        continue
    case = _field(row, columns['Subject_ID'], 'Subject_ID', line, path)
    entries.append((case, line))
  if partition is not None and not entries:
    raise errors.BratsDataError(
      'case list CSV with a Partition column must have rows whose Partition '
      "is 'validation'. Found none.",
      path=path,
    )
  return entries


def _read_csv(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
  return _parse_csv(_read_text(path, 'FeTS partition CSV'), path)


def _parse_csv(
  text: str, path: str
) -> tuple[list[str], list[tuple[int, list[str]]]]:
  """(stripped header, [(line, row)]) of CSV text; blank rows skipped."""
  reader = csv.reader(io.StringIO(text))
  header = [name.strip() for name in next(reader, [])]
  if not any(header):
    raise errors.BratsDataError(
      'line 1: CSV must start with a header row. Found an empty line.',
      path=path,
    )
  rows = []
  for row in reader:
    if any(field.strip() for field in row):
      rows.append((reader.line_num, row))
  return header, rows


def _column_indices(
  header: list[str], required: tuple[str, ...], path: str
) -> dict[str, int]:
  missing = [name for name in required if name not in header]
  if missing:
    raise errors.BratsDataError(
      f'line 1: header must have the column(s) {missing} of '
      f'{list(required)}. Found {header}.',
      path=path,
    )
  return {name: header.index(name) for name in required}


def _field(row: list[str], index: int, name: str, line: int, path: str) -> str:
  value = row[index].strip() if index < len(row) else ''
  if not value:
    raise errors.BratsDataError(
      f'line {line}: {name} must be non-empty. Found {value!r}.', path=path
    )
  return value


def _read_text(path: str, what: str) -> str:
  try:
    with open(path, encoding='utf-8-sig') as f:
      return f.read()
  except FileNotFoundError:
    raise errors.BratsDataError(
      f'{what} must be an existing file. Found no such file.', path=path
    ) from None
  except (IsADirectoryError, UnicodeDecodeError) as e:
    raise errors.BratsDataError(
      f'{what} must be a UTF-8 text file. Found {type(e).__name__}: {e}.',
      path=path,
    ) from None


# ----------------------------------------------------------------------------
# Small helpers.


def _check_case_ids(case_ids: Iterable[str]) -> tuple[str, ...]:
  """Sorted case ids, checked for type, emptiness and duplicates."""
  if isinstance(case_ids, (str, bytes)) or not isinstance(case_ids, Iterable):
    raise ValueError(
      f'case_ids must be an iterable of case id strings. Found {case_ids!r}.'
    )
  cases = list(case_ids)
  for case in cases:
    if not isinstance(case, str) or not case or case != case.strip():
      raise ValueError(
        f'case_ids must hold non-empty strings without surrounding spaces. '
        f'Found {case!r}.'
      )
  if not cases:
    raise ValueError('case_ids must be non-empty. Found no case ids.')
  counts = collections.Counter(cases)
  duplicates = sorted(case for case, count in counts.items() if count > 1)
  if duplicates:
    raise errors.BratsDataError(
      f'case_ids must not repeat a case. Found {len(duplicates)} repeated '
      f'(first: {_first(duplicates)}).',
      case_id=duplicates[0],
    )
  return tuple(sorted(cases))


def _check_client_id(client_id: str) -> None:
  if (
    not isinstance(client_id, str)
    or not _CLIENT_ID.match(client_id)
    or client_id.lower() == VALIDATION
  ):
    raise errors.BratsDataError(
      f'client id {_client_id_rule()} Found {client_id!r}.'
    )


def _client_id_rule() -> str:
  return (
    "must match '[A-Za-z0-9][A-Za-z0-9_.-]*' and not be 'validation' "
    '(reserved for the shared validation set).'
  )


def _case_tuple(cases: Iterable[str], where: str) -> tuple[str, ...]:
  if isinstance(cases, (str, bytes)) or not isinstance(cases, Iterable):
    raise errors.BratsDataError(
      f'{where} must be a list of case ids. Found {cases!r}.'
    )
  cases = tuple(cases)
  if not all(isinstance(case, str) and case for case in cases):
    raise errors.BratsDataError(
      f'{where} must hold non-empty case id strings. Found {cases!r}.'
    )
  counts = collections.Counter(cases)
  repeated = sorted(case for case, count in counts.items() if count > 1)
  if repeated:
    raise errors.BratsDataError(
      f'{where} must list each case once. Found {_first(repeated)} repeated.',
      case_id=repeated[0],
    )
  return tuple(sorted(cases))


def _match_token(case_id: str) -> str | None:
  match = _BRATS18_ID.match(case_id) or _BRATS23_ID.match(case_id)
  if match is None or match.group(1).lower() in _NOT_INSTITUTIONS:
    return None
  return match.group(1)


def _no_token_message(case_id: str) -> str:
  return (
    "case id must carry an institution token, like 'Brats18_CBICA_AAB_1' "
    "(BraTS 2018/2019) or 'BraTS-CBICA-00001-000'. Found "
    f'{case_id!r}. BraTS 2020/2021 ids (and real BraTS 2023 ids, whose '
    'token is the sub-challenge) carry no institution; use a FeTS '
    "institution CSV with spec 'fets_csv:PATH'."
  )


def _group_by_token(cases: Iterable[str]) -> dict[str, list[str]]:
  groups = {}
  for case in sorted(cases):
    groups.setdefault(institution_token(case), []).append(case)
  return {token: groups[token] for token in sorted(groups, key=_natural_key)}


def _natural_key(text: str) -> tuple[Any, ...]:
  """Sort key comparing runs of ASCII digits by value ('a2' < 'a10')."""
  parts = re.split(r'([0-9]+)', text)
  key = tuple(
    (0, int(part), '') if part[0] in '0123456789' else (1, 0, part)
    for part in parts
    if part
  )
  return key, text


def _count_first(items: list[str]) -> str:
  """'3 (first: 'a', 'b', 'c')', or '0'."""
  return f'{len(items)} (first: {_first(items)})' if items else '0'


def _first(items: list[str]) -> str:
  shown = ', '.join(repr(item) for item in items[:_SHOW])
  return shown + (', ...' if len(items) > _SHOW else '')
