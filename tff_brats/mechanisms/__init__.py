"""Privacy mechanisms of a federated run: one class each (see `base`)."""

from tff_brats.mechanisms.base import PrivacyMechanism
from tff_brats.mechanisms.base import Solution
from tff_brats.mechanisms.client_side import ClientSideMechanism
from tff_brats.mechanisms.dp_sgd import DpSgd
from tff_brats.mechanisms.gaussian import Gaussian
from tff_brats.mechanisms.no_privacy import NoPrivacy
from tff_brats.mechanisms.registry import MECHANISMS
from tff_brats.mechanisms.registry import NAMES
from tff_brats.mechanisms.registry import from_dict
from tff_brats.mechanisms.registry import get
from tff_brats.mechanisms.selective_sharing import SelectiveSharing
from tff_brats.mechanisms.sparse_vector import SparseVector

__all__ = [
  'MECHANISMS',
  'NAMES',
  'ClientSideMechanism',
  'DpSgd',
  'Gaussian',
  'NoPrivacy',
  'PrivacyMechanism',
  'SelectiveSharing',
  'Solution',
  'SparseVector',
  'from_dict',
  'get',
]
