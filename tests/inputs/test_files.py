"""Files checked where they enter (tff_lab.inputs.regular_file, output_file, check_output_dir, and the
client-data readers built on them): every kind of non-regular or oversized file, every kind of
unwritable output path, every malformed .npz/.csv of the classes the readers refuse, generated in
many variants. Each case: a one-line UserError naming the file/flag, no hang, no large allocation.
A few go through the real CLI (exit 2, one line, no traceback)."""

from __future__ import annotations

import io
import itertools
import os
import socket
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, run_cli
from input_checks import one_line, small_peak, within

from tff_lab import inputs
from tff_lab.data.adapters import federated_data
from tff_lab.data.sources import _read_client_file
from tff_lab.errors import ConfigError, DataError, UserError

RNG = np.random.default_rng(15)


# -- regular_file ---------------------------------------------------------------------------------
def _non_regular(tmp: Path) -> list[tuple[Path, str]]:
    """(path, word the message must hold) for every kind of non-regular or unreadable path."""
    out = []
    for i in range(3):
        d = tmp / f"dir{i}.npz"
        d.mkdir()
        out.append((d, "directory"))
        f = tmp / f"fifo{i}.csv"
        os.mkfifo(f)
        out.append((f, "FIFO"))
    for dev in ("/dev/zero", "/dev/null", "/dev/urandom", "/dev/random", "/dev/full"):
        if os.path.exists(dev):
            out.append((Path(dev), "device"))
            link = tmp / f"link_{Path(dev).name}.npz"
            link.symlink_to(dev)
            out.append((link, "device"))
    s = socket.socket(socket.AF_UNIX)
    sock = tmp / "s.npz"
    s.bind(str(sock))
    out.append((sock, "socket"))
    for name in ("missing.npz", "a/b/c.npz", "x" * 300 + ".npz"):
        out.append((tmp / name, "cannot read"))
    loop = tmp / "loop.npz"
    loop.symlink_to(loop)
    out.append((loop, "symbolic links"))
    (tmp / "plain").write_text("x")
    out.append((tmp / "plain" / "under.npz", "cannot read"))
    return out


def test_regular_file_refuses_every_non_regular_kind(tmp_path):
    cases = _non_regular(tmp_path)
    assert len(cases) >= 15
    with small_peak():
        for path, word in cases:
            kind, err = within(5, inputs.regular_file, path, "--input")
            assert kind == "raised" and isinstance(err, DataError), (path, err)
            text = one_line(err)
            assert text.startswith("--input: ") and word in text, text


@pytest.mark.parametrize("size,limit", [(11, 10), (1000, 999), (4096, 1), (1 << 20, (1 << 20) - 1)])
def test_regular_file_refuses_oversized(tmp_path, size, limit):
    f = tmp_path / "big.csv"
    with open(f, "wb") as fh:
        fh.truncate(size)  # sparse: nothing written
    with pytest.raises(DataError, match="at most") as e:
        inputs.regular_file(f, max_bytes=limit)
    one_line(e.value)
    assert inputs.regular_file(f, max_bytes=size) == f


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_regular_file_refuses_unreadable(tmp_path):
    f = tmp_path / "secret.npz"
    f.write_bytes(b"x")
    f.chmod(0)
    with pytest.raises(DataError, match="permission denied"):
        inputs.regular_file(f)


def test_read_text_file_is_bounded_and_utf8(tmp_path):
    for i, raw in enumerate([b"\xff\xfe", b"ok\x80", "é".encode("latin-1")]):
        f = tmp_path / f"t{i}.yaml"
        f.write_bytes(raw)
        with pytest.raises(ConfigError, match="UTF-8"):
            inputs.read_text_file(f)
    f = tmp_path / "big.yaml"
    f.write_bytes(b"a" * 2000)
    with pytest.raises(ConfigError, match="at most"):
        inputs.read_text_file(f, max_bytes=1000)


# -- output paths ---------------------------------------------------------------------------------
def _bad_outputs(tmp: Path) -> list[tuple[Path, str]]:
    f = tmp / "regular.txt"
    f.write_text("x")
    d = tmp / "existing_dir"
    d.mkdir()
    fifo = tmp / "pipe"
    os.mkfifo(fifo)
    out = [
        (f / "x.npz", "not a directory"),
        (f / "a" / "b" / "c.csv", "not a directory"),
        (d, "directory"),
        (fifo, "FIFO"),
        (Path("/dev/null"), "device"),
        (tmp / ("n" * 300), "too long"),
        (tmp / "ok" / ("n" * 300) / "x.npz", "too long"),
    ]
    for root in ("/proc", "/sys"):
        for rel in ("x.npz", "self/x", "a/b/c/d.csv", ""):
            out.append((Path(root) / rel if rel else Path(root), "virtual"))
    link = tmp / "to_proc"
    link.symlink_to("/proc")
    out.append((link / "out.npz", "virtual"))
    return out


def test_output_file_refuses_every_unwritable_path(tmp_path):
    before = set(os.listdir(tmp_path))
    for path, word in _bad_outputs(tmp_path):
        kind, err = within(5, inputs.output_file, path, "--out")
        assert kind == "raised" and isinstance(err, ConfigError), (path, err)
        text = one_line(err)
        assert text.startswith("--out: ") and word in text, text
    # nothing created by the probes
    leftovers = {p for p in os.listdir(tmp_path) if p.startswith(".tff-lab-probe")}
    assert not leftovers and not (tmp_path / "ok").exists(), (before, leftovers)


def test_output_file_accepts_creatable_paths_and_leaves_nothing(tmp_path):
    for rel in ("a.npz", "deep/er/still/a.csv", "x" * 200):
        p = inputs.output_file(tmp_path / rel, "--out")
        assert p == tmp_path / rel and not p.exists()
    existing = tmp_path / "old.csv"
    existing.write_text("keep")
    assert inputs.output_file(existing) == existing and existing.read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["old.csv"]


def test_output_file_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(ro, os.W_OK) and os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        with pytest.raises(ConfigError, match="permission denied"):
            inputs.output_file(ro / "x.npz", "--out")
    finally:
        ro.chmod(0o755)


def test_check_output_dir(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for path, word in [
        (f, "expected a folder"),
        (f / "sub", "not a directory"),
        (Path("/proc/x"), "virtual"),
        (Path("/sys"), "virtual"),
        (Path("/dev/null"), "expected a folder"),
    ]:
        with pytest.raises(ConfigError, match=word) as e:
            inputs.check_output_dir(path, "--out")
        assert one_line(e.value).startswith("--out: ")
    assert inputs.check_output_dir(tmp_path / "new" / "tree") == tmp_path / "new" / "tree"
    assert not (tmp_path / "new").exists()
    assert inputs.check_output_dir(tmp_path) == tmp_path


# -- client .npz / .csv ---------------------------------------------------------------------------
def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _npz_with_header(path: Path, shapes: dict) -> Path:
    """An .npz whose .npy headers claim ``shapes`` (float64) with almost no data behind them."""
    with zipfile.ZipFile(path, "w") as z:
        for key, shape in shapes.items():
            b = io.BytesIO()
            np.lib.format.write_array_header_1_0(b, {"descr": "<f8", "fortran_order": False, "shape": shape})
            z.writestr(f"{key}.npy", b.getvalue() + b"\0" * 64)
    return path


def _bad_npz_cases(tmp: Path):
    """(file, words) for generated malformed client .npz files, many per class."""
    cases = []
    k = itertools.count()
    nxt = lambda: tmp / f"c{next(k)}.npz"  # noqa: E731
    for n in (1, 3, 17):  # zero features, in every position of the example shape
        for shape in [(n, 0), (n, 0, 3), (n, 4, 0), (n, 2, 2, 0)]:
            cases.append((_npz(nxt(), x=np.ones(shape), y=np.zeros(n, int)), ["zero features"]))
    for nd in (5, 6, 8):  # too many dimensions per example
        cases.append((_npz(nxt(), x=np.ones((2,) + (1,) * nd), y=np.zeros(2, int)), ["dimensions"]))
    for lab in (2**31 - 2, 2**31 - 1, 100_000, 10**12, 2**62):  # labels beyond MAX_CLASSES
        y = np.array([0, 1, lab], dtype=np.int64)
        cases.append((_npz(nxt(), x=np.ones((3, 2)), y=y), ["labels", "100,000", str(lab)]))
    for lab in (-1, -(2**31), -7):
        cases.append((_npz(nxt(), x=np.ones((3, 2)), y=np.array([0, lab, 1])), ["labels", ">= 0"]))
    for lab in (np.nan, np.inf, -np.inf, 0.5, 2.25):
        cases.append((_npz(nxt(), x=np.ones((3, 2)), y=np.array([0.0, 1.0, lab])), ["labels", "integer"]))
    for shapes in [
        {"x": (10**9, 1000), "y": (10**9,)},
        {"x": (10**6, 10**6), "y": (10**6,)},
        {"x": (4, 2**25), "y": (4,)},
        {"x": (2**40, 4), "y": (2**40,)},
    ]:
        cases.append((_npz_with_header(nxt(), shapes), ["x"]))  # absurd sizes, from the header alone
    cases.append((_npz_with_header(nxt(), {"x": (5, 3), "y": (4,)}), ["shape"]))
    cases.append((_npz_with_header(nxt(), {"x": (5,), "y": (5,)}), ["shape"]))
    cases.append((_npz(nxt(), x=np.array([[1], [2]], dtype=object), y=np.arange(2)), ["objects"]))
    cases.append((_npz(nxt(), x=np.ones((2, 2)), y=np.array(["a", "b"])), ["numeric"]))
    cases.append((_npz(nxt(), x=np.ones((2, 2))), ["'x' and 'y'"]))
    cases.append((_npz(nxt(), **{f"a{i}": np.zeros(1) for i in range(30)}), ["'x' and 'y'"]))
    cases.append((_npz(nxt(), x=np.zeros((0, 3)), y=np.zeros(0, int)), ["no examples"]))
    for raw in (b"", b"PK", b"not a zip at all", os.urandom(256)):
        p = nxt()
        p.write_bytes(raw)
        cases.append((p, ["npz"]))
    p = nxt()
    np.save(p.with_suffix(".npy"), np.ones((3, 3)))
    p.write_bytes(p.with_suffix(".npy").read_bytes())  # a bare .npy named .npz
    cases.append((p, ["npz"]))
    return cases


def test_bad_client_npz_files(tmp_path):
    cases = _bad_npz_cases(tmp_path)
    assert len(cases) >= 40
    with small_peak():
        for path, words in cases:
            kind, err = within(10, _read_client_file, path, "npz")
            assert kind == "raised" and isinstance(err, DataError), (path, err)
            text = one_line(err)
            assert text.startswith(str(path)), text
            for w in words:
                assert w in text, (w, text)


def test_bad_client_csv_files(tmp_path):
    bodies = {
        "": "no examples",
        "# only a comment\n": "no examples",
        "1\n2\n3\n": "feature column",
        "1,2,3\n1,2\n": "numeric CSV",
        "a,b,c\n": "numeric CSV",
        "1,2,0.5\n": "integer",
        "1,2,nan\n": "integer",
        "1,2,-1\n": "labels",
        "1,2,2147483646\n": "100,000",
        "1,nan,0\n": "finite",
        "1,1e39,0\n": "finite",
        "1,2,1e300\n": "100,000",
    }
    for i in range(6):  # generated ragged rows
        rows = [",".join(["1"] * int(RNG.integers(2, 6))) for _ in range(5)]
        if len({r.count(",") for r in rows}) > 1:
            bodies["\n".join(rows) + "\n"] = "numeric CSV"
    for i, (body, word) in enumerate(bodies.items()):
        p = tmp_path / f"c{i}.csv"
        p.write_text(body)
        with pytest.raises(DataError) as e:
            _read_client_file(p, "csv")
        assert word in one_line(e.value), (body, str(e.value))


def test_good_files_still_read(tmp_path):
    x = RNG.normal(size=(7, 2, 3)).astype(np.float32)
    y = RNG.integers(0, 5, 7)
    gx, gy = _read_client_file(_npz(tmp_path / "a.npz", x=x, y=y), "npz")
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)
    (tmp_path / "b.csv").write_text("0.5,1,3\n2,3,0\n")
    gx, gy = _read_client_file(tmp_path / "b.csv", "csv")
    np.testing.assert_array_equal(gy, [3, 0])
    assert gx.shape == (2, 2)


# -- arrays from Python ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "y_bad,word",
    [
        ([0, 1, 2**31 - 2], "100,000"),
        ([0, -1], ">= 0"),
        ([0.0, np.nan], "integer"),
        ([0.0, 1.5], "integer"),
        ([0, 10**15], "100,000"),
    ],
)
def test_python_arrays_labels_checked_before_any_allocation(y_bad, word):
    import tensorflow  # noqa: F401  (imported by federated_data; not under tracemalloc, which slows imports)

    y = np.asarray(y_bad)
    x = np.ones((len(y), 3), np.float32)
    with small_peak():
        with pytest.raises(UserError) as e:
            federated_data({"a": (x, y), "b": (x, np.zeros(len(y), int))}, test=(x, np.zeros(len(y), int)))
    text = one_line(e.value)
    assert "client 'a'" in text and word in text, text


@pytest.mark.parametrize(
    "shape,word", [((4, 0), "zero features"), ((4, 3, 0), "zero features"), ((2, 1, 1, 1, 1, 1), "dimensions")]
)
def test_python_arrays_shapes_checked(shape, word):
    x = np.ones(shape, np.float32)
    with pytest.raises(UserError, match=word):
        federated_data({"a": (x, np.zeros(shape[0], int))}, test=(x, np.zeros(shape[0], int)))


@pytest.mark.parametrize("k", [0, -3, 2**31, 10**6])
def test_python_num_classes_bounded(k):
    x = np.ones((4, 2), np.float32)
    with pytest.raises(UserError, match="num_classes"):
        federated_data({"a": (x, np.zeros(4, int))}, test=(x, np.zeros(4, int)), num_classes=k)


# -- the real CLI ----------------------------------------------------------------------------------
def _client_dir(tmp: Path, bad_name: str, make_bad) -> Path:
    d = tmp / "clients"
    d.mkdir()
    for i in range(3):
        np.savez(d / f"c{i}.npz", x=RNG.normal(size=(12, 4)), y=RNG.integers(0, 2, 12))
    make_bad(d / bad_name)
    return d


@pytest.mark.parametrize(
    "bad_name,make_bad,words",
    [
        ("fifo.npz", os.mkfifo, ["fifo.npz", "FIFO"]),
        (
            "label.npz",
            lambda p: np.savez(p, x=np.ones((3, 4)), y=np.array([0, 1, 2**31 - 2])),
            ["label.npz", "100,000"],
        ),
    ],
)  # the other classes are covered in-process above (each CLI run starts TensorFlow)
def test_cli_refuses_bad_client_files(tmp_path, bad_name, make_bad, words):
    d = _client_dir(tmp_path, bad_name, make_bad)
    proc = run_cli(
        "run",
        "--out",
        tmp_path / "r",
        "--set",
        "data.source=npz_dir",
        "--set",
        f"data.path={d}",
        "--set",
        "training.clients_per_round=2",
        "--set",
        "training.rounds=1",
        timeout=120,
    )
    assert_user_error(proc, *words)
    assert not (tmp_path / "r").exists()


def test_predict_paths_checked_at_parse_time(tmp_path, capsys):
    """predict's INPUT, --sidecar and --out go through the same checks, as argparse types (named)."""
    from tff_lab.cli import build_parser

    good = tmp_path / "x.npy"
    np.save(good, np.ones((2, 3)))

    def parse(argv):
        try:
            build_parser().parse_args(argv)
            return 0, ""
        except SystemExit as e:
            return e.code, capsys.readouterr().err.strip().splitlines()[-1]

    assert parse(["predict", "m.keras", str(good), "--out", str(tmp_path / "o.npz")])[0] == 0
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    for path, _ in _non_regular(tmp_path / "in"):
        code, line = within(5, parse, ["predict", "m.keras", str(path), "--out", str(tmp_path / "o.npz")])[1]
        assert code == 2 and "argument INPUT: " in line, (path, line)
        code, line = within(
            5, parse, ["predict", "m.keras", str(good), "--out", str(tmp_path / "o.npz"), "--sidecar", str(path)]
        )[1]
        assert code == 2 and "argument --sidecar: " in line, (path, line)
    from tff_lab.cli import main

    # --out is a file, or with --num-shards the parts' folder: checked when the command starts,
    # before the model is even opened (m.keras does not exist).
    for path, word in _bad_outputs(tmp_path / "out"):
        code = within(5, main, ["predict", "m.keras", str(good), "--out", str(path)])[1]
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and "--out: " in line and word in line, (path, line)
