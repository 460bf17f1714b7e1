"""tff_brats: federated 3D brain-tumour segmentation with differential privacy.

Layers, in the only direction imports may go (each imports only from the
layers above it in this list):

* Plain numpy / TensorFlow (never TFF):
  * `tff_brats.utils`: atomic writes, argument checks;
  * `tff_brats.data`: reading BraTS scans, institution partitions,
    preparing TFRecord shards, the input pipeline, synthetic data;
  * `tff_brats.models`: SegResNet, losses, metrics, precision, model folders;
  * `tff_brats.privacy`: the mechanisms' mathematics (selective sharing, the
    sparse vector technique, exact budgets) and the per-institution
    accounting (dp_accounting);
  * `tff_brats.evaluation`, `tff_brats.inference`: scoring, sliding-window
    prediction, export.
* TFF wiring:
  * `tff_brats.runtime`: ownership of the TFF execution context and its C++
    workers;
  * `tff_brats.aggregators`: aggregation factories for privatised updates;
  * `tff_brats.mechanisms`: one object per privacy mechanism, which builds
    its aggregator and states each round's guarantee as a `DpEvent`;
  * `tff_brats.learning`: the clients' work and weighted FedAvg.
* Drivers:
  * `tff_brats.training`: the centralised baseline and the federated loop;
  * `experiments/`: absl binaries that turn flags into arguments.
"""

__version__ = '0.1.0'
