"""Experiment configuration: typed schema and YAML I/O."""

from tff_lab.config.io import apply_overrides, config_hash, dump_yaml, from_dict, load_config, read_yaml, to_dict
from tff_lab.config.schema import (
    AggregationConfig,
    AlgorithmConfig,
    AuditConfig,
    CentralizedConfig,
    DataConfig,
    DistConfig,
    ExperimentConfig,
    ModelConfig,
    OptimizerConfig,
    PartitionConfig,
    PrivacyConfig,
    TrainingConfig,
)

__all__ = [
    "AggregationConfig",
    "AlgorithmConfig",
    "AuditConfig",
    "CentralizedConfig",
    "DataConfig",
    "DistConfig",
    "ExperimentConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PartitionConfig",
    "PrivacyConfig",
    "TrainingConfig",
    "apply_overrides",
    "config_hash",
    "dump_yaml",
    "from_dict",
    "load_config",
    "read_yaml",
    "to_dict",
]
