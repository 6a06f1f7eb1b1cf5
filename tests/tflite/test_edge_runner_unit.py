"""The runner's numpy parts, checked in the main environment (no interpreter needed), and its imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tflite" / "runner.py"


@pytest.fixture(scope="module")
def runner():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tff_lab_tests_edge_runner", RUNNER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runner_imports_only_numpy_and_the_interpreter():
    tree = ast.parse(RUNNER.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    third_party = names - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"numpy"}, third_party
    # the runtimes are imported by name at run time: LiteRT, then tflite-runtime; onnxruntime for .onnx
    src = RUNNER.read_text()
    assert '"ai_edge_litert.interpreter"' in src and '"tflite_runtime.interpreter"' in src
    assert '__import__("onnxruntime")' in src


def test_without_onnxruntime_an_onnx_model_exits_3(tmp_path):
    """The runtime follows the extension: an .onnx file needs onnxruntime (hidden here), never TensorFlow."""
    np.save(tmp_path / "x.npy", np.zeros((2, 64), np.float32))
    (tmp_path / "m.onnx").write_bytes(b"\x08\x08" + b"\x00" * 64)
    code = (
        "import sys, runpy; sys.modules['onnxruntime'] = None\n"
        f"sys.argv = ['runner.py', {str(tmp_path / 'm.onnx')!r}, {str(tmp_path / 'x.npy')!r}]\n"
        "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "print('exit', code, 'tensorflow' in sys.modules, 'tff_lab' in sys.modules)" % str(RUNNER)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "exit 3 False False", (proc.stdout, proc.stderr)
    assert "runner: error: no ONNX runtime: install onnxruntime" in proc.stderr


def test_without_an_interpreter_the_runner_says_so(tmp_path):
    """In the main env (TensorFlow present, no LiteRT) the runner still never imports TensorFlow."""
    np.save(tmp_path / "x.npy", np.zeros((2, 64), np.float32))
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    code = (
        f"import sys, runpy; sys.argv = ['runner.py', {str(tmp_path / 'm.tflite')!r}, "
        f"{str(tmp_path / 'x.npy')!r}]\n"
        "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "print('exit', code, 'tensorflow' in sys.modules, 'tff_lab' in sys.modules)" % str(RUNNER)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    try:
        import ai_edge_litert  # noqa: F401

        pytest.skip("ai-edge-litert is installed in this environment")
    except ImportError:
        pass
    assert proc.stdout.strip().splitlines()[-1] == "exit 3 False False", (proc.stdout, proc.stderr)
    assert "runner: error: no TFLite interpreter: install ai-edge-litert" in proc.stderr


def test_quantize_round_trip(runner):
    scale, zp = 1 / 255, -128
    x = np.linspace(0, 1, 256, dtype=np.float32)
    q = runner.quantize(x, scale, zp, np.int8)
    assert q.dtype == np.int8 and q.min() == -128 and q.max() == 127
    assert np.abs(runner.dequantize(q, scale, zp) - x).max() <= scale / 2 + 1e-7
    # out of range saturates instead of wrapping around
    assert list(runner.quantize(np.array([-5.0, 5.0], np.float32), scale, zp, np.int8)) == [-128, 127]


def test_preprocessing_arrays(runner):
    off, sc = runner.preprocessing_arrays({"offset": 0.0, "scale": 0.0625}, (64,))
    assert off.shape == () and sc == np.float32(0.0625)
    off, sc = runner.preprocessing_arrays({"offset": list(range(4)), "scale": [1, 2, 3, 4]}, (2, 2))
    assert off.shape == (2, 2) and sc[1, 1] == 4
    off, sc = runner.preprocessing_arrays(None, (3,))
    assert off == 0 and sc == 1
    with pytest.raises(runner.RunnerError, match="offset has 3 values, expected 1 or 4"):
        runner.preprocessing_arrays({"offset": [1, 2, 3]}, (4,))


def test_check_input(runner):
    assert runner.check_input(np.zeros(64), (64,), "in").shape == (1, 64)  # one example
    assert runner.check_input(np.zeros((5, 64)), (8, 8, 1), "in").shape == (5, 8, 8, 1)  # flat rows
    assert runner.check_input(np.zeros((5, 64), np.uint8), (64,), "in").dtype == np.uint8
    with pytest.raises(runner.RunnerError, match=r"in: wrong input shape: expected \(n, 64\).*\(5, 63\)"):
        runner.check_input(np.zeros((5, 63)), (64,), "in")
    with pytest.raises(runner.RunnerError, match="expected a numeric array.*<U1"):
        runner.check_input(np.array([["a"] * 64]), (64,), "in")
    with pytest.raises(runner.RunnerError, match="holds no examples"):
        runner.check_input(np.zeros((0, 64)), (64,), "in")


def test_load_input(runner, tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", x)
    assert np.array_equal(runner.load_input(str(tmp_path / "a.npy")), x)
    np.savez(tmp_path / "b.npz", features=x)
    assert np.array_equal(runner.load_input(str(tmp_path / "b.npz")), x)  # the only array
    np.savez(tmp_path / "c.npz", p=x, q=x)
    with pytest.raises(runner.RunnerError, match="expected an array 'x'.*p, q"):
        runner.load_input(str(tmp_path / "c.npz"))
    assert np.array_equal(runner.load_input(str(tmp_path / "c.npz"), "q"), x)
    (tmp_path / "d.csv").write_text("a,b,c,d\n" + "\n".join(",".join(str(v) for v in r) for r in x) + "\n")
    assert np.array_equal(runner.load_input(str(tmp_path / "d.csv")), x)
    (tmp_path / "e.csv").write_text("1,2\n3\n")
    with pytest.raises(runner.RunnerError, match="e.csv: not a readable .csv"):
        runner.load_input(str(tmp_path / "e.csv"))


def test_write_predictions(runner, tmp_path):
    probs = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    runner.write_predictions(str(tmp_path / "p.npz"), probs, ["no", "yes"])
    with np.load(tmp_path / "p.npz", allow_pickle=False) as f:
        assert list(f["pred"]) == [1, 0] and list(f["label"]) == ["yes", "no"]
        assert np.array_equal(f["probs"], probs) and list(f["labels"]) == ["no", "yes"]
    runner.write_predictions(str(tmp_path / "p.csv"), probs, ["no", "yes"])
    assert (tmp_path / "p.csv").read_text().splitlines() == [
        "index,pred,label,p_no,p_yes",
        "0,1,yes,0.1,0.9",
        "1,0,no,0.8,0.2",
    ]
