"""tff_brats: federated 3D brain-tumour segmentation with differential privacy.

Layers, in the only direction imports may go:

* `tff_brats.data` (plain numpy / nibabel / tf.data): reading BraTS scans,
  institution partitions, preparing TFRecord shards, the input pipeline and
  synthetic BraTS-style data.
* `tff_brats.runtime` (TFF wiring): ownership of the TFF execution context
  and its C++ workers.
* `experiments/` (drivers): absl binaries that turn flags into arguments.
"""

__version__ = '0.1.0'
