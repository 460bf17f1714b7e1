"""Tests for tff_brats.data.partitions."""

import collections
import csv
import importlib.resources
import json
import logging
import random

import numpy as np
import pytest

from tff_brats.data import errors
from tff_brats.data import partitions

# Li et al. 2019 (MICCAI MLMI), the 13 institutions of BraTS 2018's 242
# training cases; also stated in the built-in CSV's README (NVFlare datalists).
PAPER_SIZES = {
  '2013': 18,
  'CBICA': 77,
  'TCIA01': 20,
  'TCIA02': 30,
  'TCIA03': 11,
  'TCIA04': 7,
  'TCIA05': 3,
  'TCIA06': 6,
  'TCIA08': 13,
  'TCIA09': 9,
  'TCIA10': 32,
  'TCIA12': 5,
  'TCIA13': 11,
}


def _builtin_rows():
  """(Subject_ID, Partition) rows of the shipped CSV, read independently."""
  resource = importlib.resources.files('tff_brats.data').joinpath(
    'partitions', 'brats18_li2019_partition.csv'
  )
  reader = csv.DictReader(resource.read_text().splitlines())
  return [(row['Subject_ID'], row['Partition']) for row in reader]


ROWS = _builtin_rows()
ALL_IDS = [case for case, _ in ROWS]
TRAIN_IDS = [case for case, part in ROWS if part != 'validation']
VALIDATION_IDS = sorted(case for case, part in ROWS if part == 'validation')


def _ids(token, n):
  return [f'Brats18_{token}_{i}_1' for i in range(n)]


def _write(path, text):
  path.write_text(text)
  return str(path)


def _check_disjoint_cover(partition, cases):
  """Clients and validation are disjoint and exactly cover `cases`."""
  members = [c for cs in partition.clients.values() for c in cs]
  members += list(partition.validation)
  assert len(members) == len(set(members))
  assert sorted(members) == sorted(cases)


# ---------------------------------------------------------------------------
# The paper's split.


def test_builtin_csv_has_paper_counts():
  counts = collections.Counter(part for _, part in ROWS)
  assert len(ROWS) == 285 == len(set(ALL_IDS))
  assert counts['validation'] == 43
  assert [counts[f'site-{k}'] for k in range(1, 14)] == list(
    PAPER_SIZES.values()
  )


def test_institutions_of_paper_training_ids_give_paper_sizes():
  partition = partitions.make_partition(TRAIN_IDS, 'brats18_institutions')
  assert list(partition.client_sizes().items()) == list(PAPER_SIZES.items())
  assert partition.validation == ()
  for token, cases in partition.clients.items():
    assert all(partitions.institution_token(c) == token for c in cases)
  _check_disjoint_cover(partition, TRAIN_IDS)


def test_institutions_with_builtin_validation_give_paper_sizes():
  partition = partitions.make_partition(
    ALL_IDS, 'brats18_institutions', validation_cases='brats18_li2019'
  )
  assert list(partition.client_sizes().items()) == list(PAPER_SIZES.items())
  assert partition.validation == tuple(VALIDATION_IDS)
  _check_disjoint_cover(partition, ALL_IDS)


def test_li2019_gives_sites_and_validation():
  partition = partitions.make_partition(ALL_IDS, 'brats18_li2019', seed=3)
  sites = [f'site-{k}' for k in range(1, 14)]
  assert list(partition.clients) == sites
  assert list(partition.client_sizes().values()) == list(PAPER_SIZES.values())
  assert partition.validation == tuple(VALIDATION_IDS)
  for site, token in zip(sites, PAPER_SIZES, strict=True):
    expected = sorted(c for c, part in ROWS if part == site)
    assert partition.clients[site] == tuple(expected)
    assert {partitions.institution_token(c) for c in expected} == {token}
  assert partition.spec == 'brats18_li2019'
  assert partition.seed == 3


def test_li2019_equals_institutions_with_builtin_validation():
  li = partitions.make_partition(ALL_IDS, 'brats18_li2019')
  inst = partitions.make_partition(
    ALL_IDS, 'brats18_institutions', validation_cases='brats18_li2019'
  )
  assert list(li.clients.values()) == list(inst.clients.values())
  assert li.validation == inst.validation


def test_li2019_rejects_missing_and_extra_ids():
  case_ids = [*ALL_IDS[2:], 'Brats18_CBICA_ZZZ_1']
  with pytest.raises(errors.BratsDataError) as e:
    partitions.make_partition(case_ids, 'brats18_li2019')
  message = str(e.value)
  assert 'Found 284 case ids' in message
  assert f'2 (first: {sorted(ALL_IDS[:2])[0]!r}' in message
  assert "1 (first: 'Brats18_CBICA_ZZZ_1')" in message
  assert 'brats18_li2019_partition.csv' in message


def test_li2019_rejects_training_ids_only():
  with pytest.raises(errors.BratsDataError, match=r'43 \(first'):
    partitions.make_partition(TRAIN_IDS, 'brats18_li2019')


@pytest.mark.parametrize(
  'kwargs',
  [{'validation_cases': 'brats18_li2019'}, {'validation_fraction': 0.1}],
)
def test_li2019_rejects_own_validation_arguments(kwargs):
  with pytest.raises(ValueError, match='defines its own 43 validation'):
    partitions.make_partition(ALL_IDS, 'brats18_li2019', **kwargs)


# ---------------------------------------------------------------------------
# Institution tokens.


@pytest.mark.parametrize(
  ('case_id', 'token'),
  [
    ('Brats18_2013_10_1', '2013'),
    ('Brats18_CBICA_AAB_1', 'CBICA'),
    ('BraTS19_TCIA01_131_1', 'TCIA01'),
    ('BraTS19_TMC_06290_1', 'TMC'),
    ('BRATS18_TCIA10_103_1', 'TCIA10'),
    ('BraTS-CBICA-00001-000', 'CBICA'),
    ('BraTS-UPenn-00012-001', 'UPenn'),
  ],
)
def test_institution_token(case_id, token):
  assert partitions.institution_token(case_id) == token


@pytest.mark.parametrize(
  'case_id',
  [
    'BraTS20_Training_001',
    'BraTS20_Validation_001',
    'BraTS2021_00000',
    'BraTS-GLI-00000-000',
    'FeTS2022_00001',
    'Brats18_CBICA_AAB',
    'Brats18-CBICA-AAB-1',
  ],
)
def test_institution_token_rejects_ids_without_institution(case_id):
  with pytest.raises(errors.BratsDataError) as e:
    partitions.institution_token(case_id)
  assert f'case {case_id!r}' in str(e.value)
  assert 'fets_csv:PATH' in str(e.value)
  assert e.value.case_id == case_id


def test_institutions_rejects_ids_without_institution():
  case_ids = [*_ids('CBICA', 3), 'BraTS20_Training_002', 'BraTS20_Training_001']
  with pytest.raises(errors.BratsDataError) as e:
    partitions.make_partition(case_ids, 'brats18_institutions')
  message = str(e.value)
  assert message.startswith("case 'BraTS20_Training_001'")
  assert '2 of 5 training case ids have no institution token' in message
  assert 'fets_csv:PATH' in message


def test_institutions_of_2023_style_ids():
  case_ids = [
    f'BraTS-{site}-{i:05d}-000' for site in ('UCSF', 'CBICA') for i in range(3)
  ]
  partition = partitions.make_partition(case_ids, 'brats18_institutions')
  assert partition.client_sizes() == {'CBICA': 3, 'UCSF': 3}
  assert list(partition.clients) == ['CBICA', 'UCSF']


# ---------------------------------------------------------------------------
# FeTS partition CSVs.


FETS_IDS = [f'FeTS2022_{i:05d}' for i in range(8)]


def test_fets_csv_round_trip(tmp_path, caplog):
  path = _write(
    tmp_path / 'partitioning_1.csv',
    'Partition_ID,Subject_ID,Notes\n'
    '10,FeTS2022_00005,x\n'
    '2,FeTS2022_00001,\n'
    '1,FeTS2022_00003,\n'
    '2,FeTS2022_00000,\n'
    '\n'
    '1,FeTS2022_00002,\n',
  )
  with caplog.at_level(logging.WARNING):
    partition = partitions.make_partition(FETS_IDS, f'fets_csv:{path}')
  assert list(partition.clients.items()) == [
    ('1', ('FeTS2022_00002', 'FeTS2022_00003')),
    ('2', ('FeTS2022_00000', 'FeTS2022_00001')),
    ('10', ('FeTS2022_00005',)),
  ]
  assert partition.validation == ()
  assert partition.spec == f'fets_csv:{path}'
  # Three ids are not in the CSV: left out, with one warning naming them.
  assert 'does not list 3 of the 8 case ids' in caplog.text
  assert "'FeTS2022_00004', 'FeTS2022_00006', 'FeTS2022_00007'" in caplog.text


def test_fets_csv_removes_validation_cases(tmp_path, caplog):
  path = _write(
    tmp_path / 'p.csv',
    'Partition_ID,Subject_ID\n'
    + ''.join(f'{i % 2 + 1},{case}\n' for i, case in enumerate(FETS_IDS[:6])),
  )
  validation = _write(tmp_path / 'val.txt', 'FeTS2022_00000\nFeTS2022_00007\n')
  with caplog.at_level(logging.WARNING):
    partition = partitions.make_partition(
      FETS_IDS, f'fets_csv:{path}', validation_cases=validation
    )
  assert partition.validation == ('FeTS2022_00000', 'FeTS2022_00007')
  assert partition.clients == {
    '1': ('FeTS2022_00002', 'FeTS2022_00004'),
    '2': ('FeTS2022_00001', 'FeTS2022_00003', 'FeTS2022_00005'),
  }
  # Only FeTS2022_00006 is unlisted: validation cases are not "left out".
  assert 'does not list 1 of the 8 case ids' in caplog.text


@pytest.mark.parametrize(
  ('text', 'expected'),
  [
    ('Subject_ID\nFeTS2022_00000\n', ['line 1', "['Partition_ID']"]),
    ('Partition_ID,Subject\n1,FeTS2022_00000\n', ['line 1', "['Subject_ID']"]),
    (
      'Partition_ID,Subject_ID\n1,FeTS2022_00000\n1, \n',
      ['line 3: Subject_ID must be non-empty', "Found ''"],
    ),
    (
      'Partition_ID,Subject_ID\n1,FeTS2022_00000\n,FeTS2022_00001\n',
      ['line 3: Partition_ID must be non-empty'],
    ),
    (
      'Partition_ID,Subject_ID\n1,FeTS2022_00000\n1,FeTS2022_00001\n'
      '2,FeTS2022_00000\n',
      [
        "case 'FeTS2022_00000'",
        'line 4: Subject_ID must be listed once',
        'first on line 2',
      ],
    ),
    (
      'Partition_ID,Subject_ID\n1,FeTS2022_00000\n1,FeTS2022_00099\n',
      [
        "case 'FeTS2022_00099'",
        'line 3: Subject_ID must be one of the 8 case_ids',
        "Found 'FeTS2022_00099'",
      ],
    ),
    (
      'Partition_ID,Subject_ID\nvalidation,FeTS2022_00000\n',
      ['line 2: Partition_ID must match', "Found 'validation'"],
    ),
    (
      'Partition_ID,Subject_ID\nsite 1,FeTS2022_00000\n',
      ['line 2: Partition_ID must match', "Found 'site 1'"],
    ),
    ('Partition_ID,Subject_ID\n', ['must list at least one subject']),
    ('', ['line 1: CSV must start with a header row']),
  ],
)
def test_fets_csv_errors(tmp_path, text, expected):
  path = _write(tmp_path / 'bad.csv', text)
  with pytest.raises(errors.BratsDataError) as e:
    partitions.make_partition(FETS_IDS, f'fets_csv:{path}')
  assert f'file {path!r}' in str(e.value)
  for part in expected:
    assert part in str(e.value)


def test_fets_csv_missing_file(tmp_path):
  path = str(tmp_path / 'absent.csv')
  with pytest.raises(errors.BratsDataError) as e:
    partitions.make_partition(FETS_IDS, f'fets_csv:{path}')
  assert str(e.value) == (
    f'file {path!r}: FeTS partition CSV must be an existing file. '
    'Found no such file.'
  )


# ---------------------------------------------------------------------------
# Uniform and skewed random splits.


def test_uniform_sizes_exact():
  case_ids = [f'BraTS2021_{i:05d}' for i in range(10)]
  partition = partitions.make_partition(case_ids, 'uniform:3', seed=7)
  assert partition.client_sizes() == {
    'client-00': 4,
    'client-01': 3,
    'client-02': 3,
  }
  _check_disjoint_cover(partition, case_ids)


@pytest.mark.parametrize(('n', 'k'), [(1, 1), (5, 5), (13, 4), (100, 7)])
def test_uniform_sizes_differ_by_at_most_one(n, k):
  case_ids = [f'c{i}' for i in range(n)]
  sizes = partitions.make_partition(case_ids, f'uniform:{k}').client_sizes()
  assert len(sizes) == k
  assert sum(sizes.values()) == n
  assert max(sizes.values()) - min(sizes.values()) == (0 if n % k == 0 else 1)


def test_uniform_client_ids_are_zero_padded_in_order():
  case_ids = [f'c{i}' for i in range(101)]
  partition = partitions.make_partition(case_ids, 'uniform:101')
  ids = list(partition.clients)
  assert ids[:2] == ['client-000', 'client-001']
  assert ids[-1] == 'client-100'
  assert ids == sorted(ids)


def test_uniform_shuffle_depends_on_seed_only():
  case_ids = [f'c{i:02d}' for i in range(40)]
  shuffled = list(case_ids)
  random.Random(1).shuffle(shuffled)
  first = partitions.make_partition(case_ids, 'uniform:4', seed=5)
  again = partitions.make_partition(shuffled, 'uniform:4', seed=5)
  other = partitions.make_partition(case_ids, 'uniform:4', seed=6)
  assert first == again
  assert first.clients != other.clients
  # A shuffle, not a contiguous cut of the sorted ids.
  assert first.clients['client-00'] != tuple(case_ids[:10])


def test_skewed_is_deterministic_under_seed():
  case_ids = [f'c{i:03d}' for i in range(120)]
  shuffled = list(reversed(case_ids))
  first = partitions.make_partition(case_ids, 'skewed:6', seed=11)
  again = partitions.make_partition(shuffled, 'skewed:6', seed=11)
  assert first == again


def test_skewed_differs_across_seeds():
  case_ids = [f'c{i:03d}' for i in range(120)]
  sizes = {
    tuple(
      partitions.make_partition(case_ids, 'skewed:6', seed=s)
      .client_sizes()
      .values()
    )
    for s in range(5)
  }
  assert len(sizes) == 5


@pytest.mark.parametrize(
  'spec', ['skewed:10', 'skewed:10:0.05', 'skewed:30:0.01']
)
@pytest.mark.parametrize('seed', range(5))
def test_skewed_sizes_are_positive_and_sum_to_n(spec, seed):
  case_ids = [f'c{i:03d}' for i in range(60)]
  partition = partitions.make_partition(case_ids, spec, seed=seed)
  sizes = list(partition.client_sizes().values())
  assert len(sizes) == int(spec.split(':')[1])
  assert min(sizes) >= 1
  assert sum(sizes) == 60
  _check_disjoint_cover(partition, case_ids)


def test_skewed_sizes_follow_dirichlet_proportions():
  # Golden rule: one case each, the other n - K by largest remainder of
  # n - K times a Dirichlet(ALPHA) draw, the first draw of default_rng(seed).
  n, k, alpha, seed = 50, 4, 0.7, 3
  p = np.random.default_rng(seed).dirichlet([alpha] * k)
  shares = p * (n - k)
  expected = np.floor(shares).astype(int)
  expected[np.argsort(-(shares - expected))[: n - k - expected.sum()]] += 1
  case_ids = [f'c{i}' for i in range(n)]
  partition = partitions.make_partition(
    case_ids, f'skewed:{k}:{alpha}', seed=seed
  )
  assert list(partition.client_sizes().values()) == list(expected + 1)


def test_skewed_default_alpha():
  case_ids = [f'c{i}' for i in range(50)]
  default = partitions.make_partition(case_ids, 'skewed:4', seed=2)
  explicit = partitions.make_partition(
    case_ids, f'skewed:4:{partitions.DEFAULT_SKEW_ALPHA}', seed=2
  )
  assert partitions.DEFAULT_SKEW_ALPHA == 0.5
  assert default.clients == explicit.clients


def test_skewed_smaller_alpha_is_more_skewed():
  # Deterministic seeds; the size spread (max/min over 10 seeds) at ALPHA 100
  # is near uniform and at 0.1 spans well over an order of magnitude.
  case_ids = [f'c{i:03d}' for i in range(200)]

  def spread(alpha):
    ratios = []
    for seed in range(10):
      sizes = partitions.make_partition(
        case_ids, f'skewed:5:{alpha}', seed=seed
      ).client_sizes()
      ratios.append(max(sizes.values()) / min(sizes.values()))
    return float(np.median(ratios))

  assert spread(100) < 2
  assert spread(0.1) > 10


def test_skewed_k_equal_n_gives_singletons():
  partition = partitions.make_partition(['a', 'b', 'c'], 'skewed:3', seed=9)
  assert sorted(partition.client_sizes().values()) == [1, 1, 1]


# ---------------------------------------------------------------------------
# Validation sets.


SMALL = (
  _ids('2013', 4) + _ids('CBICA', 10) + _ids('TCIA01', 1) + _ids('TCIA02', 2)
)


@pytest.mark.parametrize(
  ('fraction', 'per_institution'),
  [
    # round half up of fraction * n, at most n - 1:
    # 2013 4 -> 1.0; CBICA 10 -> 2.5 -> 3; TCIA01 1 -> 0.25 -> 0;
    # TCIA02 2 -> 0.5 -> 1.
    (0.25, {'2013': 1, 'CBICA': 3, 'TCIA02': 1}),
    # 2013 3.6 -> 4 -> 3 (one kept); CBICA 9; TCIA01 0.9 -> 1 -> 0;
    # TCIA02 1.8 -> 2 -> 1.
    (0.9, {'2013': 3, 'CBICA': 9, 'TCIA02': 1}),
  ],
)
def test_validation_fraction_per_institution(fraction, per_institution):
  partition = partitions.make_partition(
    SMALL, 'brats18_institutions', validation_fraction=fraction, seed=4
  )
  counts = collections.Counter(
    partitions.institution_token(c) for c in partition.validation
  )
  assert dict(counts) == per_institution
  sizes = collections.Counter(partitions.institution_token(c) for c in SMALL)
  assert partition.client_sizes() == {
    token: sizes[token] - per_institution.get(token, 0) for token in sizes
  }
  _check_disjoint_cover(partition, SMALL)


def test_validation_fraction_is_seeded():
  draws = {
    partitions.make_partition(
      SMALL, 'uniform:2', validation_fraction=0.25, seed=seed
    ).validation
    for seed in range(5)
  }
  again = partitions.make_partition(
    list(reversed(SMALL)), 'uniform:2', validation_fraction=0.25, seed=0
  )
  assert again.validation in draws
  assert len(draws) > 1


@pytest.mark.parametrize(('fraction', 'count'), [(0.3, 3), (0.25, 3), (0.2, 2)])
def test_validation_fraction_of_pool_without_institutions(fraction, count):
  case_ids = [f'BraTS2021_{i:05d}' for i in range(10)]
  partition = partitions.make_partition(
    case_ids, 'uniform:2', validation_fraction=fraction
  )
  assert len(partition.validation) == count
  assert sum(partition.client_sizes().values()) == 10 - count
  _check_disjoint_cover(partition, case_ids)


def test_validation_fraction_selecting_nothing():
  with pytest.raises(ValueError, match='must select at least one case'):
    partitions.make_partition(
      [f'c{i}' for i in range(10)], 'uniform:2', validation_fraction=0.01
    )


@pytest.mark.parametrize(
  'fraction', [0, 1, -0.1, 1.5, float('nan'), True, '0.1']
)
def test_validation_fraction_out_of_range(fraction):
  with pytest.raises(ValueError) as e:
    partitions.make_partition(SMALL, 'uniform:2', validation_fraction=fraction)
  assert str(e.value) == (
    f'validation_fraction must be a number in (0, 1). Found {fraction!r}.'
  )


def test_validation_arguments_are_exclusive():
  with pytest.raises(ValueError, match='must not both be given'):
    partitions.make_partition(
      ALL_IDS,
      'uniform:3',
      validation_cases='brats18_li2019',
      validation_fraction=0.1,
    )


def test_uniform_splits_only_the_training_pool():
  partition = partitions.make_partition(
    ALL_IDS, 'uniform:5', validation_cases='brats18_li2019'
  )
  assert sorted(partition.client_sizes().values()) == [48, 48, 48, 49, 49]
  assert partition.validation == tuple(VALIDATION_IDS)
  _check_disjoint_cover(partition, ALL_IDS)


def test_validation_leaving_no_training_case(tmp_path):
  path = _write(tmp_path / 'val.txt', 'a\nb\n')
  with pytest.raises(errors.BratsDataError, match='at least one training'):
    partitions.make_partition(['a', 'b'], 'uniform:1', validation_cases=path)


def test_k_larger_than_training_pool():
  with pytest.raises(ValueError) as e:
    partitions.make_partition(
      ALL_IDS, 'uniform:243', validation_cases='brats18_li2019'
    )
  assert str(e.value) == (
    'K must be at most the number of training cases (242) in spec '
    "'uniform:243'. Found 243."
  )


# ---------------------------------------------------------------------------
# Case lists.


def test_read_case_list_text(tmp_path):
  path = _write(
    tmp_path / 'val.txt',
    '# validation cases\n\nBrats18_2013_2_1\n  Brats18_CBICA_AAB_1  # why\n\n',
  )
  assert partitions.read_case_list(path) == (
    'Brats18_2013_2_1',
    'Brats18_CBICA_AAB_1',
  )


def test_read_case_list_csv(tmp_path):
  plain = _write(tmp_path / 'ids.csv', 'Subject_ID,Grade\nb,HGG\na,LGG\n')
  split = _write(
    tmp_path / 'split.txt',
    'Subject_ID,Partition\na,site-1\nb,validation\nc,validation\n',
  )
  assert partitions.read_case_list(plain) == ('b', 'a')
  assert partitions.read_case_list(split) == ('b', 'c')


def test_read_case_list_builtin_and_its_csv(tmp_path):
  builtin = partitions.read_case_list('brats18_li2019')
  assert sorted(builtin) == VALIDATION_IDS
  copy = tmp_path / 'copy.csv'
  copy.write_text(
    importlib.resources.files('tff_brats.data')
    .joinpath('partitions', 'brats18_li2019_partition.csv')
    .read_text()
  )
  assert partitions.read_case_list(str(copy)) == builtin
  assert partitions.BUILTIN_PARTITIONS == ('brats18_li2019',)


@pytest.mark.parametrize(
  ('name', 'text', 'expected'),
  [
    (
      'a.txt',
      'x\ny\nx\n',
      "case 'x', file '{}': line 3: case list must list each case once. "
      'Found it again (first on line 1).',
    ),
    (
      'a.txt',
      '# nothing\n\n',
      "file '{}': case list must hold at least one case id. Found none.",
    ),
    (
      'a.txt',
      'x y\n',
      "file '{}': line 1: case list must hold one case id per line. "
      "Found 'x y'.",
    ),
    (
      'a.csv',
      'Case,Partition\nx,validation\n',
      "file '{}': line 1: header must have the column(s) ['Subject_ID'] "
      "of ['Subject_ID']. Found ['Case', 'Partition'].",
    ),
    (
      'a.csv',
      'Subject_ID,Partition\nx,site-1\n',
      "file '{}': case list CSV with a Partition column must have rows "
      "whose Partition is 'validation'. Found none.",
    ),
  ],
)
def test_read_case_list_errors(tmp_path, name, text, expected):
  path = _write(tmp_path / name, text)
  with pytest.raises(errors.BratsDataError) as e:
    partitions.read_case_list(path)
  assert str(e.value) == expected.format(path)


def test_read_case_list_missing_file(tmp_path):
  path = str(tmp_path / 'absent.txt')
  with pytest.raises(errors.BratsDataError, match='must be an existing file'):
    partitions.read_case_list(path)


def test_validation_case_not_in_case_ids(tmp_path):
  path = _write(tmp_path / 'val.txt', 'c0\n# comment\nc9\n')
  with pytest.raises(errors.BratsDataError) as e:
    partitions.make_partition(
      ['c0', 'c1', 'c2'], 'uniform:1', validation_cases=path
    )
  assert str(e.value) == (
    f"case 'c9', file {path!r}: line 3: validation case must be one of the "
    "3 case_ids. Found 'c9'."
  )


def test_builtin_validation_not_in_case_ids():
  with pytest.raises(errors.BratsDataError) as e:
    partitions.make_partition(
      TRAIN_IDS, 'uniform:3', validation_cases='brats18_li2019'
    )
  assert 'brats18_li2019_partition.csv' in str(e.value)
  assert 'validation case must be one of the 242 case_ids' in str(e.value)


# ---------------------------------------------------------------------------
# Partition objects.


def test_json_round_trip():
  partition = partitions.make_partition(ALL_IDS, 'brats18_li2019', seed=2)
  text = json.dumps(partition.to_json(), sort_keys=True)
  restored = partitions.Partition.from_json(json.loads(text))
  assert restored == partition
  # Natural client order survives a JSON writer that sorts keys.
  assert list(restored.clients) == [f'site-{k}' for k in range(1, 14)]
  assert isinstance(restored.validation, tuple)


def test_to_json_is_plain_json():
  partition = partitions.make_partition(
    ['a', 'b', 'c'], 'uniform:2', seed=np.int64(1)
  )
  assert json.loads(json.dumps(partition.to_json())) == {
    'spec': 'uniform:2',
    'seed': 1,
    'clients': dict((k, list(v)) for k, v in partition.clients.items()),
    'validation': [],
  }


@pytest.mark.parametrize(
  ('change', 'message'),
  [
    ({'clients': {'a': ['x'], 'b': ['x']}}, 'clients must be disjoint'),
    ({'validation': ['y']}, 'validation must be disjoint'),
    ({'clients': {'validation': ['z']}}, "Found 'validation'"),
    ({'clients': {'-a': ['z']}}, "Found '-a'"),
    ({'clients': {'a': []}}, 'must hold at least one case'),
    ({'clients': {'a': ['x', 'x']}}, "'x' repeated"),
    ({'clients': {}}, 'clients must be a non-empty mapping'),
    ({'extra': 1}, 'must have exactly the keys'),
  ],
)
def test_from_json_rejects_bad_partitions(change, message):
  d = {'spec': 'uniform:2', 'seed': 0, 'clients': {'a': ['x'], 'b': ['y']}}
  d['validation'] = []
  d.update(change)
  with pytest.raises(errors.BratsDataError, match=message):
    partitions.Partition.from_json(d)


def test_partition_normalises_order():
  partition = partitions.Partition(
    clients={'site-10': ('b', 'a'), 'site-2': ('c',)},
    validation=('e', 'd'),
    spec='fets_csv:x.csv',
    seed=0,
  )
  assert list(partition.clients.items()) == [
    ('site-2', ('c',)),
    ('site-10', ('a', 'b')),
  ]
  assert partition.validation == ('d', 'e')


def test_table():
  partition = partitions.make_partition(
    ALL_IDS, 'brats18_institutions', validation_cases='brats18_li2019'
  )
  lines = partition.table().splitlines()
  assert lines[:4] == [
    "partition 'brats18_institutions', seed 0",
    'client              cases',
    '------------------  -----',
    '2013                   18',
  ]
  assert lines[-2:] == [
    'total (13 clients)    242',
    'validation             43',
  ]
  assert len(lines) == 3 + 13 + 1 + 2


# ---------------------------------------------------------------------------
# Bad arguments.


SPEC_MESSAGE = (
  "spec must be one of 'brats18_institutions', 'brats18_li2019', "
  "'fets_csv:PATH', 'uniform:K', 'skewed:K', 'skewed:K:ALPHA'. Found {!r}."
)


@pytest.mark.parametrize(
  'spec',
  [
    'random:3',
    'uniform',
    'uniform:',
    'skewed',
    'fets_csv',
    'fets_csv:',
    'brats18_li2019:',
    'brats18_institutions:2',
    'Uniform:3',
    '',
  ],
)
def test_unknown_specs(spec):
  with pytest.raises(ValueError) as e:
    partitions.make_partition(['a'], spec)
  assert str(e.value) == SPEC_MESSAGE.format(spec)


def test_spec_must_be_a_string():
  with pytest.raises(ValueError, match=r'spec must be a string\. Found 3\.'):
    partitions.make_partition(['a'], 3)


@pytest.mark.parametrize(
  ('spec', 'message'),
  [
    ('uniform:0', "K must be an integer >= 1 in spec 'uniform:0'. Found '0'."),
    (
      'uniform:-1',
      "K must be an integer >= 1 in spec 'uniform:-1'. Found '-1'.",
    ),
    (
      'uniform:2.0',
      "K must be an integer >= 1 in spec 'uniform:2.0'. Found '2.0'.",
    ),
    (
      'skewed:x:1',
      "K must be an integer >= 1 in spec 'skewed:x:1'. Found 'x'.",
    ),
    (
      'uniform:4',
      'K must be at most the number of training cases (3) in spec '
      "'uniform:4'. Found 4.",
    ),
    (
      'skewed:4',
      'K must be at most the number of training cases (3) in spec '
      "'skewed:4'. Found 4.",
    ),
    (
      'skewed:2:0',
      "ALPHA must be a finite number > 0 in spec 'skewed:2:0'. Found '0'.",
    ),
    (
      'skewed:2:-1',
      "ALPHA must be a finite number > 0 in spec 'skewed:2:-1'. Found '-1'.",
    ),
    (
      'skewed:2:inf',
      "ALPHA must be a finite number > 0 in spec 'skewed:2:inf'. Found 'inf'.",
    ),
    (
      'skewed:2:a',
      "ALPHA must be a finite number > 0 in spec 'skewed:2:a'. Found 'a'.",
    ),
    (
      'skewed:2:',
      "ALPHA must be a finite number > 0 in spec 'skewed:2:'. Found ''.",
    ),
  ],
)
def test_bad_k_and_alpha(spec, message):
  with pytest.raises(ValueError) as e:
    partitions.make_partition(['a', 'b', 'c'], spec)
  assert str(e.value) == message


@pytest.mark.parametrize(
  ('case_ids', 'message'),
  [
    ([], 'case_ids must be non-empty. Found no case ids.'),
    (
      'Brats18_2013_2_1',
      'case_ids must be an iterable of case id strings. '
      "Found 'Brats18_2013_2_1'.",
    ),
    (None, 'case_ids must be an iterable of case id strings. Found None.'),
    (
      ['a', 1],
      'case_ids must hold non-empty strings without surrounding spaces. '
      'Found 1.',
    ),
    (
      ['a', ''],
      'case_ids must hold non-empty strings without surrounding spaces. '
      "Found ''.",
    ),
    (
      ['a', 'b '],
      'case_ids must hold non-empty strings without surrounding spaces. '
      "Found 'b '.",
    ),
  ],
)
def test_bad_case_ids(case_ids, message):
  with pytest.raises(ValueError) as e:
    partitions.make_partition(case_ids, 'uniform:1')
  assert str(e.value) == message


def test_duplicate_case_ids():
  with pytest.raises(errors.BratsDataError) as e:
    partitions.make_partition(['b', 'a', 'b', 'c', 'a'], 'uniform:1')
  assert str(e.value) == (
    "case 'a': case_ids must not repeat a case. Found 2 repeated "
    "(first: 'a', 'b')."
  )


@pytest.mark.parametrize(
  ('seed', 'message'),
  [
    (-1, 'seed must be a non-negative integer. Found -1.'),
    (1.0, 'seed must be a non-negative integer. Found 1.0.'),
    (True, 'seed must be a non-negative integer. Found True.'),
    (None, 'seed must be a non-negative integer. Found None.'),
  ],
)
def test_bad_seed(seed, message):
  with pytest.raises(ValueError) as e:
    partitions.make_partition(['a'], 'uniform:1', seed=seed)
  assert str(e.value) == message


def test_bad_validation_cases_type():
  with pytest.raises(ValueError, match='validation_cases must be a file path'):
    partitions.make_partition(['a', 'b'], 'uniform:1', validation_cases=3)


@pytest.mark.parametrize(
  'spec', ['brats18_institutions', 'uniform:3', 'skewed:3:0.3']
)
def test_every_spec_is_independent_of_input_order(spec):
  shuffled = list(ALL_IDS)
  random.Random(0).shuffle(shuffled)
  first = partitions.make_partition(ALL_IDS, spec, validation_fraction=0.15)
  again = partitions.make_partition(shuffled, spec, validation_fraction=0.15)
  assert first == again
  _check_disjoint_cover(first, ALL_IDS)
