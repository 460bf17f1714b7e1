"""Privacy: client-side mechanisms (plain TensorFlow) and accounting.

Mechanisms (never import TFF): `mechanisms` (configurations and
`privatize`), `selective_sharing`, `sparse_vector`, `randomness` (seeds and
samplers), `structure` (flattening a model update). Accounting
(numpy/scipy + dp_accounting): `accounting`, `planning`, `privacy_report`.

Nothing is imported here, so importing the accounting modules does not
load TensorFlow.
"""
