"""Fixtures of the export tests: a trained RUN_DIR-like directory and its exports (built once per session)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_NAME = "tff_lab_tests_edge_run_fixture"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("edge_run_fixture.py"))
    sys.modules[_NAME] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NAME])
edge = sys.modules[_NAME]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """config.yaml + model/model.keras of a digits MLP 64-64 (the default experiment's data and model)."""
    return edge.make_trained_run(tmp_path_factory.getbasetemp() / "edge_trained_run")


@pytest.fixture(scope="session")
def exported_run(trained_run) -> dict:
    """``export_run(trained_run, "all")``: every quantization, sidecars and the report."""
    return edge.export_all(trained_run)


@pytest.fixture(scope="session")
def reference(trained_run) -> dict:
    """The run's data and the Keras model's probabilities on the test set and on raw test inputs."""
    return edge.reference(trained_run)


@pytest.fixture(scope="session")
def bc_exported(tmp_path_factory) -> dict:
    """Breast cancer (per-feature preprocessing), MLP 16: float32 and int8 exports and the Keras reference."""
    run = edge.make_trained_run(tmp_path_factory.getbasetemp() / "edge_bc_run", edge.BREAST_CANCER)
    return {**edge.export_all(run, "float32,int8"), **edge.reference(run)}
