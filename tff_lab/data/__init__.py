"""Data: sources (built-in, tasks, a user's), partitioners, adapters and per-client statistics."""

from tff_lab.data.adapters import content_hash, federated_data
from tff_lab.data.registry import available_sources, register_source
from tff_lab.data.sources import NATURAL_SOURCES, FederatedData, load_federated_data
from tff_lab.data.stats import client_stats

__all__ = [
    "NATURAL_SOURCES",
    "FederatedData",
    "available_sources",
    "client_stats",
    "content_hash",
    "federated_data",
    "load_federated_data",
    "register_source",
]
