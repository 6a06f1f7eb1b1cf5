"""Fixtures of the edge runner tests: the exported run (shared with tests/export) and a TF-free venv."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tflite" / "runner.py"


def _load(name: str, path: Path):
    """Imports a helper file by path once (tests/ and tflite/ are not packages)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


edge = _load("tff_lab_tests_edge_run_fixture", REPO / "tests" / "export" / "edge_run_fixture.py")
make_env = _load("tff_lab_tests_tflite_make_env", REPO / "tflite" / "make_env.py")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    return edge.make_trained_run(tmp_path_factory.getbasetemp() / "edge_trained_run")


@pytest.fixture(scope="session")
def exported_run(trained_run) -> dict:
    return edge.export_all(trained_run)


@pytest.fixture(scope="session")
def reference(trained_run) -> dict:
    return edge.reference(trained_run)


@pytest.fixture(scope="session")
def edge_python() -> Path:
    """A venv with only tflite/requirements.txt (built once, cached in .venv-edge/<hash>/)."""
    return make_env.build()


def run_runner(python: Path, *args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), str(RUNNER), *map(str, args)],
        capture_output=True,
        text=True,
        env=make_env.clean_env(),
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def edge_runner(edge_python):
    """``edge_runner(*args)`` runs ``python tflite/runner.py ARGS`` in the TF-free venv."""
    return lambda *args, **kw: run_runner(edge_python, *args, **kw)


@pytest.fixture(scope="session")
def bc_exported(tmp_path_factory) -> dict:
    """Breast cancer (per-feature preprocessing), MLP 16: float32 and int8 exports and the Keras reference."""
    run = edge.make_trained_run(tmp_path_factory.getbasetemp() / "edge_bc_run", edge.BREAST_CANCER)
    return {**edge.export_all(run, "float32,int8"), **edge.reference(run)}


text = _load("tff_lab_tests_text_run_fixture", REPO / "tests" / "tasks" / "text_run_fixture.py")


@pytest.fixture(scope="session")
def text_exported(tmp_path_factory) -> dict:
    """The tiny Shakespeare run (tests/tasks), exported float32/dynamic/int8, and Keras' probabilities."""
    import numpy as np

    from tff_lab.export import export_run
    from tff_lab.export.convert import keras_probabilities, load_run

    base = tmp_path_factory.getbasetemp()
    run = text.make_text_run(base / "text_run", base / "tff_cache")
    if not (run / "export" / "model_int8.tflite").is_file():
        export_run(run, "float32,dynamic,int8", latency_runs=5)
    art = load_run(run)
    x = art.data.test[0]
    tokens = base / "text_tokens.npy"
    np.save(tokens, x)
    return {"run": run, "tokens": tokens, "x": x, "keras": keras_probabilities(art.model, x, art.outputs)}


@pytest.fixture(scope="session")
def onnx_exported(trained_run, tmp_path_factory) -> dict:
    """A copy of the digits MLP run exported with ``--format onnx`` (model.onnx + model.json + report)."""
    from tff_lab.export import export_run

    run = edge.copy_run(trained_run, tmp_path_factory.getbasetemp() / "edge_onnx_run")
    res = export_run(run, "float32", format="onnx", latency_runs=5)
    return {"run_dir": run, "path": res["exports"][0].path, "report": res["report"]}


@pytest.fixture(scope="session")
def text_onnx(text_exported) -> dict:
    """The tiny Shakespeare run's model.onnx (next to its .tflite files)."""
    from tff_lab.export import export_run

    path = text_exported["run"] / "export" / "model.onnx"
    if not path.is_file():
        export_run(text_exported["run"], "float32", format="onnx", latency_runs=5)
    return {**text_exported, "path": path}
