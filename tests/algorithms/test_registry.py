"""The algorithm registry is the one place names resolve: config validation, both engines."""

from __future__ import annotations

import pytest

from tff_lab.algorithms import ALGORITHMS, Algorithm, create, names, registry
from tff_lab.algorithms.fedavg import FedAvg
from tff_lab.config.io import from_dict
from tff_lab.errors import ConfigError


def test_builtin_names_and_classes():
    assert names()[:3] == ("fedavg", "fedprox", "fedsgd")
    for name, cls in ALGORITHMS.items():
        assert issubclass(cls, Algorithm) and cls.name == name


def test_config_validation_reads_the_registry(monkeypatch):
    with pytest.raises(ConfigError) as e:
        from_dict({"algorithm": {"name": "fedfoo"}})
    assert e.value.where == "algorithm.name" and ", ".join(names()) in str(e.value)

    class FedFoo(FedAvg):
        name = "fedfoo"

    monkeypatch.setitem(registry.ALGORITHMS, "fedfoo", FedFoo)
    cfg = from_dict({"algorithm": {"name": "fedfoo"}})
    assert isinstance(create(cfg.algorithm), FedFoo)


def test_algorithm_owned_rules():
    with pytest.raises(ConfigError) as e:  # a field only FedProx reads
        from_dict({"algorithm": {"name": "fedavg", "proximal_strength": 0.1}})
    assert e.value.where == "algorithm.proximal_strength" and "'fedprox'" in str(e.value)
    with pytest.raises(ConfigError) as e:  # FedSGD's own rule
        from_dict({"algorithm": {"name": "fedsgd", "weighting": "uniform"}})
    assert e.value.where == "algorithm.weighting"
    with pytest.raises(ConfigError) as e:  # FedSGD's DP refusal
        from_dict(
            {"algorithm": {"name": "fedsgd"}, "privacy": {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0}}
        )
    assert e.value.where == "algorithm.name" and "fedsgd" in str(e.value)
    assert (
        create(from_dict({"algorithm": {"name": "fedprox", "proximal_strength": 0.5}}).algorithm).cfg.proximal_strength
        == 0.5
    )


def test_registry_imports_no_tensorflow():
    import subprocess
    import sys

    code = "import sys, tff_lab.algorithms.registry, tff_lab.config; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
