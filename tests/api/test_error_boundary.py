"""The one error boundary of the CLI (tff_lab.cli.run_command), fed generated failures of a user's code.

Whatever a user's model builder, data loader or module does (raise any exception type, call
sys.exit, parse argv or get interrupted at import), the command ends with exit 2 and one line
naming the user's file; a failure inside tff-lab's own code is exit 1 with a please-report line;
never a traceback.
"""

from __future__ import annotations

import functools
import itertools

import pytest
from helpers import assert_user_error, run_cli

RAISES = [
    "raise ValueError('bad units')",
    "raise RuntimeError('no GPU here')",
    "raise AttributeError('layer has no attribute foo')",
    "raise KeyError('width')",
    "raise IndexError('list index out of range')",
    "raise ZeroDivisionError('division by zero')",
    "raise AssertionError('shape check')",
    "raise NotImplementedError('todo')",
    "raise LookupError('lookup')",
    "raise OSError('weights file missing')",
    "class MyError(Exception):\n        pass\n    raise MyError('custom')",
    "import tensorflow as tf\n    return tf.keras.layers.Dense(-5)",  # Keras raises on the user's behalf
    "return None.units",
    "return [][3]",
    "return {}['x']",
    "return 1 / 0",
    "import sys\n    sys.exit(0)",
    "import sys\n    sys.exit(3)",
    "import sys\n    sys.exit('fatal: no data')",
]

AT_IMPORT = [
    "raise ValueError('config missing')",
    "raise RuntimeError('import-time failure')",
    "import sys\nsys.exit(0)",
    "import sys\nsys.exit(1)",
    "import argparse\np = argparse.ArgumentParser()\np.add_argument('--data', required=True)\np.parse_args()",
    "import argparse\np = argparse.ArgumentParser()\np.add_argument('n', type=int)\nARGS = p.parse_args()",
    "raise KeyboardInterrupt",
    "import no_such_module_anywhere_12345",
    "x = undefined_name",
    "def f(:\n    pass",  # a syntax error
]

BASE = ["training.rounds=1", "training.clients_per_round=2", "data.num_clients=4", "centralized.enabled=false"]


def _experiment(tmp_path, name, builder_body=None, module_top=""):
    mod = tmp_path / f"{name}.py"
    body = builder_body or "import tensorflow as tf\n    return tf.keras.Sequential([tf.keras.layers.Dense(n)])"
    mod.write_text(f"{module_top}\n\ndef build(input_shape, n, **kw):\n    {body}\n")
    exp = tmp_path / f"{name}.yaml"
    exp.write_text(f"name: {name}\nmodel:\n  builder: {name}:build\n")
    return exp


def _sets():
    return sum((["--set", o] for o in BASE), [])


@pytest.mark.parametrize("i", range(len(RAISES)))
def test_a_failing_model_builder_is_one_line_naming_its_file(i, tmp_path, capsys, monkeypatch):
    from tff_lab.cli import main

    monkeypatch.chdir(tmp_path)
    name = f"usermodel_{i}"
    exp = _experiment(tmp_path, name, RAISES[i])
    code = main(["run", str(exp), "--out", str(tmp_path / "run"), "--quiet", *_sets()])
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("WARNING")]
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("tff-lab: error:"), err
    assert "Traceback" not in err[0]
    assert "model" in err[0] or f"{name}.py" in err[0], err
    assert not (tmp_path / "run").exists()  # nothing left behind


@pytest.mark.parametrize("i", range(len(AT_IMPORT)))
def test_a_module_that_fails_or_exits_at_import_is_one_line(i, tmp_path, capsys, monkeypatch):
    from tff_lab.cli import main

    monkeypatch.chdir(tmp_path)
    name = f"userimport_{i}"
    exp = _experiment(tmp_path, name, module_top=AT_IMPORT[i])
    code = main(["run", str(exp), "--out", str(tmp_path / "run"), "--quiet", *_sets()])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "usage:" not in line]
    assert code == 2, (code, err)
    assert len(err) == 1 and "model.builder" in err[0] and name in err[0], err


def test_the_real_cli_for_a_few_generated_cases(tmp_path):
    for i, body in itertools.islice(enumerate(RAISES), 0, len(RAISES), 6):
        exp = _experiment(tmp_path, f"clicase_{i}", body)
        proc = run_cli("run", exp, "--out", tmp_path / f"run{i}", "--quiet", *_sets(), cwd=tmp_path, timeout=300)
        assert_user_error(proc)
    exp = _experiment(tmp_path, "cliargv", module_top=AT_IMPORT[4])
    assert_user_error(
        run_cli("run", exp, "--out", tmp_path / "runa", "--quiet", *_sets(), cwd=tmp_path, timeout=300), "sys.exit"
    )


def _c_level_failures():
    """Callables (C or stdlib code, no frame of a user's file) and the argument that makes them raise."""
    import json
    import operator
    import os

    return [
        (json.loads, "{not json", "JSONDecodeError"),
        ({}.__getitem__, "missing", "KeyError"),
        (operator.attrgetter("nope"), object(), "AttributeError"),
        (len, 5, "TypeError"),
        (functools.partial(operator.truediv, 1), 0, "ZeroDivisionError"),
        (os.close, -1, "OSError"),
        (functools.partial(int, base=10), "twelve", "ValueError"),
        ([].pop, 0, "IndexError"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_a_failure_inside_tff_lab_is_exit_1_with_a_please_report_line(case, capsys):
    """A bug of ours (no user frame on the stack): exit 1, one line, 'please report', no traceback."""
    from tff_lab.cli import run_command

    func, arg, name = _c_level_failures()[case]
    assert run_command(func, arg) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"internal error: {name}" in err[0] and "please report" in err[0], err


def test_user_and_environment_failures_around_the_boundary(tmp_path, capsys, monkeypatch):
    from tff_lab.cli import run_command

    def full_disk(_):
        raise OSError(28, "No space left on device", str(tmp_path / "x"))

    assert run_command(full_disk, None) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert run_command(bytearray, 1 << 62) == 2  # a MemoryError of no user's code: too large an ask
    assert "out of memory" in capsys.readouterr().err
    monkeypatch.setenv("TFF_LAB_DEBUG", "1")
    with pytest.raises(KeyError):
        run_command({}.__getitem__, "x")
