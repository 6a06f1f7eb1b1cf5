"""A RUN_DIR-like directory with a small trained digits MLP, shared by tests/export and tests/tflite.

The default experiment's data (digits, 20 clients, Dirichlet 0.5) and model (MLP 64-64) trained
centrally for a few epochs: the artifacts ``tff-lab export`` reads from a finished run
(config.yaml, model/model.keras). Built once per test session and reused (a marker file tells
that it is complete).
"""

from __future__ import annotations

import os
from pathlib import Path

TRAIN_EPOCHS = 25
# Breast cancer: standardized features, so the sidecar's offset and scale hold one value per feature.
BREAST_CANCER = [
    "data.source=breast_cancer",
    "data.num_clients=5",
    "training.clients_per_round=5",
    "model.hidden_units=[16]",
]


def make_trained_run(run_dir: Path, overrides=()) -> Path:
    """Writes config.yaml and model/model.keras into ``run_dir`` (idempotent)."""
    run_dir = Path(run_dir)
    done = run_dir / ".fixture-complete"
    if done.exists():
        return run_dir
    import tensorflow as tf

    from tff_lab.config import dump_yaml, load_config
    from tff_lab.data import load_federated_data
    from tff_lab.models import build_model

    cfg = load_config(None, overrides=list(overrides))
    data = load_federated_data(cfg)
    tf.keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    x, y = data.union_train()
    model.fit(x, y, epochs=TRAIN_EPOCHS, batch_size=32, verbose=0, shuffle=True)
    (run_dir / "model").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("# resolved config (test fixture)\n" + dump_yaml(cfg))
    model.save(run_dir / "model" / "model.keras")
    done.write_text("ok\n")
    return run_dir


def copy_run(src: Path, dst: Path) -> Path:
    """A private copy of the run's inputs (config + model), without exports."""
    import shutil

    dst = Path(dst)
    (dst / "model").mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(src) / "config.yaml", dst / "config.yaml")
    shutil.copy2(Path(src) / "model" / "model.keras", dst / "model" / "model.keras")
    return dst


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def load_module_from(path: Path, name: str):
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_EXPORTS: dict = {}
_REFERENCES: dict = {}


def export_all(run_dir: Path, quantize: str = "all") -> dict:
    """Exports ``run_dir`` once per session (shared by tests/export and tests/tflite)."""
    key = str(Path(run_dir).resolve())
    if key not in _EXPORTS:
        from tff_lab.export import export_run

        res = export_run(run_dir, quantize, latency_runs=50)
        _EXPORTS[key] = {
            "run_dir": Path(run_dir),
            "report": res["report"],
            "paths": {r.variant: r.path for r in res["exports"]},
            "sidecars": {r.variant: r.sidecar for r in res["exports"]},
        }
    return _EXPORTS[key]


def reference(run_dir: Path) -> dict:
    """Data of the run and Keras probabilities; ``raw_test`` undoes the preprocessing (digits: x * 16)."""
    key = str(Path(run_dir).resolve())
    if key not in _REFERENCES:
        import numpy as np

        from tff_lab.export.convert import load_run

        art = load_run(run_dir)
        tx, ty = art.data.test
        pre = art.data.preprocessing
        raw = (tx / np.asarray(pre["scale"], np.float32) + np.asarray(pre["offset"], np.float32)).astype(np.float32)
        _REFERENCES[key] = {
            "art": art,
            "x_test": tx,
            "y_test": ty,
            "raw_test": raw,
            "keras_test": art.model.predict(tx, batch_size=1024, verbose=0),
        }
    return _REFERENCES[key]
