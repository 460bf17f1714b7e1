"""Privacy mathematics (plain TensorFlow) and accounting; never imports TFF.

Mechanism mathematics: `client_release` (normalise, clip, release, report:
what every client-side mechanism shares), `selective_sharing`,
`sparse_vector` (on an exact lattice), `budget` (c = ⌈qN⌉ and the SVT's
budget split, lattice and noise scales, TF-free), `discrete` (exact
discrete Laplace samplers in integer arithmetic), `randomness` (seeds and
the random order), `structure`
(flattening a model update). Accounting (numpy/scipy + dp_accounting):
`events` (the round's `DpEvent`s and their JSON form), `accounting`
(the per-institution ledger), `planning` (participation, solving for a
target ε). The mechanism objects that choose and wire these are in
`tff_brats.mechanisms`.

Nothing is imported here, so importing the accounting modules does not
load TensorFlow.
"""
