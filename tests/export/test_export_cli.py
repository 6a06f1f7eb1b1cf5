"""`tff-lab export` and bad input: one-line errors naming what is wrong and what was expected, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_user_error, run_cli

from tff_lab import cli


def _user_error(capsys, argv, *needles):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # a flag's value refused by its argparse type (usage, then one error line)
        code = e.code
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if l]
    assert code == 2, err
    if lines and lines[0].startswith("usage:"):
        lines = [lines[-1]]
        assert "error: argument " in lines[0], err
    assert len(lines) == 1 and lines[0].startswith("tff-lab"), err
    assert "error: " in lines[0], err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory):
    from tff_lab_tests_edge_run_fixture import copy_run

    return copy_run(trained_run, tmp_path_factory.mktemp("cli") / "run")


def test_export_one_quantization_to_a_file(run_copy, tmp_path, capsys):
    out = tmp_path / "edge" / "digits.tflite"
    assert cli.main(["export", str(run_copy), "--quantize", "float16", "--out", str(out), "--latency-runs", "5"]) == 0
    printed = capsys.readouterr().out
    assert "float16" in printed and str(out) in printed and "report.md" in printed
    side = json.loads((tmp_path / "edge" / "digits.json").read_text())
    assert side["model_file"] == "digits.tflite" and side["quantization"] == "float16"
    rep = json.loads((run_copy / "export" / "report.json").read_text())
    assert list(rep["variants"]) == ["float16"]
    assert rep["variants"]["float16"]["file"] == str(out.resolve())  # outside RUN_DIR: absolute


def test_export_int8_float_io_to_a_directory(run_copy, tmp_path, capsys):
    assert (
        cli.main(
            [
                "export",
                str(run_copy),
                "--quantize",
                "int8",
                "--int8-io",
                "float",
                "--out",
                str(tmp_path),
                "--quiet",
                "--latency-runs",
                "5",
                "--representative-examples",
                "40",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == ""
    side = json.loads((tmp_path / "model_int8_float_io.json").read_text())
    assert side["input"]["dtype"] == "float32" and side["representative_data"]["examples"] == 40
    assert side["representative_data"]["clients"] == 20


def test_unknown_quantization(run_copy, capsys):
    _user_error(
        capsys,
        ["export", run_copy, "--quantize", "int4"],
        "--quantize",
        "unknown quantization 'int4'",
        "float32, dynamic, float16, int8, all",
    )


def test_bad_int8_io_and_out(run_copy, tmp_path, capsys):
    _user_error(capsys, ["export", run_copy, "--quantize", "int8", "--int8-io", "uint8"], "--int8-io", "int8, float")
    _user_error(
        capsys, ["export", run_copy, "--quantize", "all", "--out", tmp_path / "m.tflite"], "--out", "4 quantizations"
    )
    _user_error(
        capsys,
        ["export", run_copy, "--representative-examples", "0", "--quantize", "int8"],
        "--representative-examples",
        ">= 1",
    )


def test_run_dir_without_a_finished_model(trained_run, tmp_path, capsys):
    run = tmp_path / "unfinished"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text((trained_run / "config.yaml").read_text())
    _user_error(capsys, ["export", run], str(run), "no finished model", "model/model.keras")
    _user_error(capsys, ["export", tmp_path / "nowhere"], "RUN_DIR not found")
    _user_error(capsys, ["export", tmp_path], "config.yaml is missing")
    (run / "model").mkdir()
    (run / "model" / "model.keras").write_bytes(b"PK\x03\x04 truncated zip")
    _user_error(capsys, ["export", run], "not a loadable Keras model")


def test_int8_export_of_a_run_whose_clients_hold_no_data(reference, capsys):
    import dataclasses

    from tff_lab.errors import DataError
    from tff_lab.export.convert import export_artifacts

    art = reference["art"]
    empty = dataclasses.replace(art.data, train={c: (v[0][:0], v[1][:0]) for c, v in art.data.train.items()})
    with pytest.raises(DataError) as e:
        export_artifacts(dataclasses.replace(art, data=empty), ["int8"])
    assert "--quantize int8" in str(e.value) and "needs representative data" in str(e.value)


@pytest.fixture()
def bad_models(exported_run, tmp_path):
    good = exported_run["paths"]["int8"].read_bytes()
    d = tmp_path / "bad"
    d.mkdir()
    (d / "truncated.tflite").write_bytes(good[: len(good) // 2])
    (d / "random.tflite").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "empty.tflite").write_bytes(b"")
    # truncated, with the original's sidecar beside it: caught by the sidecar's sha256
    (d / "sided.tflite").write_bytes(good[:-100])
    (d / "sided.json").write_text(exported_run["paths"]["int8"].with_suffix(".json").read_text())
    return d


@pytest.mark.parametrize(
    "name, needle",
    [
        ("truncated", "corrupt or truncated TFLite model"),
        ("random", "not a TFLite model"),
        ("empty", "not a TFLite model"),
        ("sided", "does not match its sidecar"),
    ],
)
def test_corrupt_or_truncated_tflite(bad_models, reference, tmp_path, capsys, name, needle):
    np.save(tmp_path / "x.npy", reference["raw_test"][:4])
    _user_error(
        capsys,
        ["predict", bad_models / f"{name}.tflite", tmp_path / "x.npy", "--out", tmp_path / "p.npz"],
        f"{name}.tflite",
        needle,
    )
    assert not (tmp_path / "p.npz").exists()


def test_truncated_tflite_in_a_fresh_process(bad_models, reference, tmp_path):
    """As a user meets it: TF 2.14's interpreter would crash (SIGSEGV) on this file; tff-lab exits 2."""
    np.save(tmp_path / "x.npy", reference["raw_test"][:4])
    proc = run_cli("predict", bad_models / "truncated.tflite", tmp_path / "x.npy", "--out", tmp_path / "p.npz")
    assert_user_error(proc, "truncated.tflite", "corrupt or truncated TFLite model")


@pytest.mark.parametrize("model", ["int8", "keras"])
def test_wrong_input_shape_and_dtype(exported_run, trained_run, reference, tmp_path, capsys, model):
    path = exported_run["paths"]["int8"] if model == "int8" else trained_run / "model" / "model.keras"
    np.save(tmp_path / "short.npy", reference["raw_test"][:, :63])
    _user_error(
        capsys,
        ["predict", path, tmp_path / "short.npy", "--out", tmp_path / "p.npz"],
        "short.npy",
        "wrong input shape: expected (n, 64)",
        "(359, 63)",
    )
    np.save(tmp_path / "img.npy", reference["raw_test"].reshape(-1, 8, 8, 1))
    _user_error(capsys, ["predict", path, tmp_path / "img.npy", "--out", tmp_path / "p.npz"], "(359, 8, 8, 1)")
    np.save(tmp_path / "str.npy", np.array([["a"] * 64] * 3))
    _user_error(
        capsys, ["predict", path, tmp_path / "str.npy", "--out", tmp_path / "p.npz"], "expected a numeric array", "<U1"
    )
    np.save(tmp_path / "cplx.npy", np.zeros((3, 64), np.complex64))
    _user_error(capsys, ["predict", path, tmp_path / "cplx.npy", "--out", tmp_path / "p.npz"], "complex64")
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    _user_error(capsys, ["predict", path, tmp_path / "obj.npy", "--out", tmp_path / "p.npz"], "pickled")
    nan = reference["raw_test"].copy()
    nan[300, 5] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    _user_error(
        capsys,
        ["predict", path, tmp_path / "nan.npy", "--out", tmp_path / "p.npz", "--batch-size", "128"],
        "nan.npy",
        "example 300 holds NaN or inf",
    )
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    _user_error(
        capsys,
        ["predict", path, tmp_path / "ragged.csv", "--out", tmp_path / "p.npz"],
        "ragged.csv",
        "numeric CSV rows",
    )
    assert not (tmp_path / "p.npz").exists()


def test_predict_bad_arguments(exported_run, reference, tmp_path, capsys):
    np.save(tmp_path / "x.npy", reference["raw_test"][:4])
    m = exported_run["paths"]["float32"]
    _user_error(capsys, ["predict", m, tmp_path / "x.npy", "--out", tmp_path / "p.json"], "--out", ".npz, .csv")
    _user_error(
        capsys, ["predict", m, tmp_path / "x.npy", "--out", tmp_path / "p.npz", "--batch-size", "0"], "--batch-size"
    )
    _user_error(
        capsys,
        ["predict", tmp_path / "none.tflite", tmp_path / "x.npy", "--out", tmp_path / "p.npz"],
        "model not found",
    )
    (tmp_path / "m.h5").write_bytes(b"\x89HDF")
    _user_error(
        capsys,
        ["predict", tmp_path / "m.h5", tmp_path / "x.npy", "--out", tmp_path / "p.npz"],
        "unsupported model type '.h5'",
    )
    _user_error(
        capsys,
        ["predict", m, tmp_path / "x.npy", "--out", tmp_path / "p.npz", "--sidecar", tmp_path / "none.json"],
        "--sidecar",
        "none.json",
        "not found",
    )
