"""Offline data sources, partitioners and per-client statistics."""

from tff_lab.data.sources import NATURAL_SOURCES, FederatedData, load_federated_data
from tff_lab.data.stats import client_stats

__all__ = ["NATURAL_SOURCES", "FederatedData", "client_stats", "load_federated_data"]
