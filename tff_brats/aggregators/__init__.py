"""TFF aggregation factories for privatised model updates.

`private_sharing` (client-side mechanisms at CLIENTS, then an inner mean)
and `weights_dropping` (an unweighted factory, e.g. TFF's DP-FedAvg, inside
a weighted algorithm). The mechanisms that build them are in
`tff_brats.mechanisms`.
"""
