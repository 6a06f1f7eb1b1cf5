"""Secure aggregation that really masks: SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

- :mod:`.protocol`: the client and server state machines and one round of the protocol;
- :mod:`.graph`: SecAgg+'s sparse communication graph (``k = n - 1``: SecAgg);
- :mod:`.field`: quantisation into the field, exactly as TFF's secure sum does;
- :mod:`.aggregator`: ``tff.learning.secure_aggregator``'s composition (zeroing, clipping, weighted
  mean, adaptive bounds) with every secure sum done by the protocol (``aggregation.kind: secagg``).
"""

from tff_lab.aggregation.secagg.protocol import SecAggAborted

__all__ = ["SecAggAborted"]
