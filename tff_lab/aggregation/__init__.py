"""Aggregation that is not a TFF factory: the secure-aggregation protocol (:mod:`.secagg`)."""
