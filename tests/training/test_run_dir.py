"""The one owner of RUN_DIR (tff_lab.run_dir): one writer, a marker, replacement as a transaction,
files read back checked against the digests recorded when they were written.

Each mechanism is fed many generated inputs of its class; the library functions carry most cases
(milliseconds each), the real CLI a few per class.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import REPO, assert_user_error, cli_env, run_cli

from tff_lab import run_dir as rd
from tff_lab.errors import ConfigError
from tff_lab.training import checkpoint as ckpt

BASE = [
    "training.rounds=2",
    "training.clients_per_round=3",
    "data.num_clients=6",
    "training.eval_every_rounds=2",
    "training.rounds_per_checkpoint=1",
    "centralized.enabled=false",
]


def _sets(extra=()):
    return sum((["--set", o] for o in [*BASE, *extra]), [])


def _snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# one writer
# ---------------------------------------------------------------------------------------------
_HOLD = textwrap.dedent("""
    import sys, time
    from tff_lab import run_dir
    o = run_dir.acquire(sys.argv[1], kind="run")
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _hold(path, seconds=60):
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=REPO,
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_owner_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    d = tmp_path / "run"
    p = _hold(d)
    try:
        with pytest.raises(ConfigError, match=rf"in use by process {p.pid} "):
            rd.acquire(d, kind="run")
        proc = run_cli("run", "--out", d, "--quiet", *_sets(), timeout=300)
        assert_user_error(proc, "in use by process", str(p.pid))
        assert sorted(x.name for x in d.iterdir()) == [rd.OWNER]  # nothing written by the refused run
    finally:
        p.kill()
        p.wait()
    # The holder died (SIGKILL): the kernel dropped its lock; its record is reported and taken over.
    o = rd.acquire(d, kind="run")
    assert "ended without releasing it" in capsys.readouterr().err
    assert o.took_over["pid"] == p.pid
    o.release()
    assert not (d / rd.OWNER).exists()


def test_two_resumes_of_one_run_dir_at_once_one_is_refused(tmp_path):
    d = tmp_path / "run"
    run_cli("run", "--out", d, "--quiet", *_sets(), check=True, timeout=300)
    before = (d / "metrics.jsonl").read_text()
    extend = _sets(["training.rounds=12"])
    cmd = [sys.executable, "-m", "tff_lab.cli", "run", "--out", str(d), "--quiet", "--resume", *extend]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    refused = next(err for c, err in results if c == 2)
    assert "in use by process" in refused and "Traceback" not in refused
    rows = [json.loads(line)["round"] for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 13)), rows  # every round once
    assert (d / "metrics.jsonl").read_text().startswith(before)
    assert len(list((d / "tb").glob("events*"))) >= 1


# ---------------------------------------------------------------------------------------------
# recognised by a marker; --overwrite never deletes what is not ours
# ---------------------------------------------------------------------------------------------
def _foreign_trees(n=24, seed=0):
    rng = random.Random(seed)
    names = [
        "metrics.csv",
        "model/weights.h5",
        "notes.md",
        "summary.json",
        "config.yaml",
        "checkpoints/x.npz",
        "tb/events.out",
        "a/b/c.txt",
        ".hidden",
        "plots/fig.png",
        "privacy.json",
        "export/model.tflite",
    ]
    for i in range(n):
        files = rng.sample(names, rng.randint(1, 4))
        contents = {f: os.urandom(rng.randint(0, 64)) for f in files}
        if "config.yaml" in contents and rng.random() < 0.5:
            contents["config.yaml"] = b"name: someone else's config\nseed: 3\n"
        yield i, contents


def test_overwrite_refuses_every_folder_without_the_marker(tmp_path):
    for i, contents in _foreign_trees():
        d = tmp_path / f"f{i}"
        for name, data in contents.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
        before = _snapshot(d)
        o = rd.acquire(d, kind="run")
        try:
            assert not o.is_ours()
            with pytest.raises(ConfigError, match="holds no tff_lab output"):
                o.begin_replace()
        finally:
            o.release()
        assert _snapshot(d) == before, contents
    # The real CLI, a few of them, with and without --overwrite: exit 2, byte for byte unchanged.
    for i in (0, 1, 2):
        d = tmp_path / f"f{i}"
        before = _snapshot(d)
        for flags in (["--overwrite"], [], ["--resume"]):
            proc = run_cli("run", "--out", d, "--quiet", *flags, *_sets(), timeout=300)
            assert_user_error(proc, str(d))
            assert _snapshot(d) == before


def test_privacy_audit_never_replaces_another_run_without_overwrite(tmp_path):
    d = tmp_path / "run"
    run_cli("run", "--out", d, "--quiet", *_sets(), check=True, timeout=300)
    before = _snapshot(d)
    proc = run_cli("privacy", "audit", "experiments/privacy_audit.yaml", "--out", d, *_sets(), timeout=300)
    assert_user_error(proc, "different experiment")
    assert _snapshot(d) == before


# ---------------------------------------------------------------------------------------------
# replacement is a transaction
# ---------------------------------------------------------------------------------------------
def test_replacement_rolls_back_on_failure_and_after_a_crash(tmp_path):
    d = tmp_path / "run"
    o = rd.acquire(d, kind="run")
    o.mark(experiment="old")
    o.write_text("config.yaml", "old config\n")
    (d / "notes.txt").write_text("mine")
    o.release()
    before = _snapshot(d)
    # In-process failure: rolled back by own()'s exit.
    with pytest.raises(RuntimeError):
        with rd.own(d, kind="run") as o:
            o.begin_replace(["config.yaml", "metrics.jsonl"])
            o.write_text("config.yaml", "new config\n")
            (d / "metrics.jsonl").write_text("new rows")
            raise RuntimeError("the new run failed")
    assert _snapshot(d) == before
    # A crash in the middle (the process dies with the old run aside): the next owner rolls back.
    script = textwrap.dedent("""
        import os, sys
        from tff_lab import run_dir
        o = run_dir.acquire(sys.argv[1], kind="run")
        o.begin_replace(["config.yaml", "metrics.jsonl"])
        o.write_text("config.yaml", "half-written new run\\n")
        os._exit(9)
    """)
    assert subprocess.run([sys.executable, "-c", script, str(d)], cwd=REPO, env=cli_env()).returncode == 9
    assert (d / "config.yaml").read_text() == "half-written new run\n"
    o = rd.acquire(d, kind="run")
    o.release()
    assert _snapshot(d) == before
    # Committed: the old files are gone for good, the user's own file stays.
    with rd.own(d, kind="run") as o:
        o.begin_replace(["config.yaml"])
        o.write_text("config.yaml", "new\n")
        o.commit()
    assert (d / "config.yaml").read_text() == "new\n" and (d / "notes.txt").read_text() == "mine"
    assert not [p for p in d.iterdir() if p.name.startswith(".replaced")]


# ---------------------------------------------------------------------------------------------
# output locations checked before any work
# ---------------------------------------------------------------------------------------------
def _bad_locations(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    yield "/proc/tff_lab_run", "virtual file system"
    yield "/proc/self/x/y", "virtual file system"
    yield "/sys/kernel/x", "virtual file system"
    yield "/dev/null", "a character device; expected a folder"
    yield str(f), "a file; expected a folder"
    yield str(f / "sub"), "not a directory"
    yield str(f / "a" / "b" / "c"), "not a directory"
    yield "x" * 300, "too long"
    yield "a\x00b", "NUL byte"
    if os.geteuid() != 0:  # root writes anywhere
        yield str(ro / "run"), "cannot be written"


def test_unwritable_output_locations_are_refused_before_any_work(tmp_path):
    cases = list(_bad_locations(tmp_path))
    for path, why in cases:
        with pytest.raises(ConfigError, match=why):
            rd.check_creatable(path, "--out")
    for path, why in cases[:5:2]:
        t0 = time.time()
        proc = run_cli("run", "--out", path, "--quiet", *_sets(), timeout=300)
        assert_user_error(proc, why)
        assert time.time() - t0 < 60


# ---------------------------------------------------------------------------------------------
# what is read back was written by us
# ---------------------------------------------------------------------------------------------
def _manifest_mutations(meta):
    """Every way a hand edit can change a manifest: each field to values of the wrong type, range
    or meaning, fields removed, unknown values."""
    values = [None, True, -1, 0, 1, 1_000_000, 2**63, 1.5, float("inf"), "4", "", [], {}, ["x"], {"a": 1}]
    for key, v in itertools.product(list(meta), values):
        if meta[key] != v:
            m = dict(meta)
            m[key] = v
            yield f"{key}={v!r}", m
    for key in meta:
        m = dict(meta)
        del m[key]
        yield f"-{key}", m


def test_every_hand_edited_manifest_is_refused_and_the_previous_checkpoint_used(tmp_path):
    import numpy as np

    d = tmp_path / "checkpoints"
    state = [np.arange(6, dtype=np.float32).reshape(2, 3), np.float32(1.0)]
    meta = {
        "config_hash": "abc",
        "extension_hash": "def",
        "counters": {"example_passes": 10, "train_seconds": 0.5},
        "stop_reason": None,
        "hooks": {"privacy": {"rounds": 2}},
        "parts": {},
        "engine": "tff",
    }
    ckpt.save(d, 2, state, meta, keep=5)
    ckpt.save(d, 4, state, meta, keep=5)
    good = json.loads((d / "ckpt_000004.json").read_text())
    assert ckpt.check_manifest(good, 4) is None
    n = 0
    for label, m in _manifest_mutations(good):
        (d / "ckpt_000004.json").write_text(json.dumps(m))
        assert ckpt.check_manifest(m, 4) is not None, label
        assert ckpt.latest(d) == 2, label
        n += 1
    assert n > 150
    # Text that is not JSON at all, or a huge nesting: unreadable, never a traceback.
    for text in ["", "{", "[]", "null", "1", "[" * 100000, '{"round": 4' + "}" * 3]:
        (d / "ckpt_000004.json").write_text(text)
        assert ckpt.latest(d) == 2, text[:20]


def test_edited_run_files_are_refused_on_resume(tmp_path):
    from tff_lab.cli import main

    d = tmp_path / "run"
    assert main(["run", "--out", str(d), "--quiet", *_sets()]) == 0
    marker = json.loads((d / rd.MARKER).read_text())
    assert {"config.yaml", "parts.json", "summary.json"} <= set(marker["files"])
    text = (d / "config.yaml").read_text()
    (d / "config.yaml").write_text(text.replace("rounds: 2", "rounds: 1000000"))
    proc = run_cli("run", "--out", d, "--quiet", "--resume", *_sets(), timeout=300)
    assert_user_error(proc, "config.yaml", "changed after tff_lab wrote it")
    # metrics.jsonl is read back on resume: every row that is not one tff-lab wrote is refused, naming it.
    (d / "config.yaml").write_text(text)
    rows = (d / "metrics.jsonl").read_text().splitlines()
    for bad in [
        "5",
        '"x"',
        "[]",
        "null",
        '{"round": "1"}',
        '{"round": 0}',
        '{"round": true}',
        '{"no": 1}',
        '{"round": 2}',
        '{"round": 1.5}',
    ]:
        (d / "metrics.jsonl").write_text("\n".join([bad, *rows[1:]]) + "\n")
        before = _snapshot(d)
        assert main(["run", "--out", str(d), "--quiet", "--resume", *_sets()]) == 2, bad
        assert _snapshot(d) == before
    (d / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    # A marker edited into nonsense is refused too, naming it.
    for bad in ["[]", '{"format": 7}', '{"format": 1, "kind": "x"}', '{"format": 1, "kind": "run", "files": []}']:
        (d / rd.MARKER).write_text(bad)
        with pytest.raises(ConfigError, match=rd.MARKER):
            rd.read_verified(d, "config.yaml")


# ---------------------------------------------------------------------------------------------
# extending a finished run
# ---------------------------------------------------------------------------------------------
def test_a_finished_run_extends_to_more_rounds_exactly_as_a_longer_run(tmp_path, capsys):
    import numpy as np

    from tff_lab.cli import main

    short, long_ = tmp_path / "short", tmp_path / "long"
    args = ["run", "--quiet", *_sets()]
    assert main([*args, "--out", str(short)]) == 0
    assert main([*args, "--out", str(short), "--resume", "--set", "training.rounds=4"]) == 0
    assert main([*args, "--out", str(long_), "--set", "training.rounds=4"]) == 0
    rows = [json.loads(line)["round"] for line in (short / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4]
    a = np.load(short / "checkpoints" / "ckpt_000004.npz")
    b = np.load(long_ / "checkpoints" / "ckpt_000004.npz")
    assert all(np.array_equal(a[k], b[k]) for k in b.files)
    assert json.loads((short / "summary.json").read_text())["rounds"] == 4
    capsys.readouterr()
    # Anything else changed, or fewer rounds than trained, or no --resume: refused, naming it.
    for extra, needle in (
        (["training.rounds=3"], "training.rounds"),
        (["training.rounds=6", "seed=5"], "different experiment"),
    ):
        before = _snapshot(short)
        assert main([*args, "--out", str(short), "--resume", *sum((["--set", e] for e in extra), [])]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert _snapshot(short) == before
    assert main([*args, "--out", str(short), "--set", "training.rounds=6"]) == 2
    assert "pass --resume" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# output files: one writer too (predict --out, predict-merge --out)
# ---------------------------------------------------------------------------------------------
_HOLD_FILE = textwrap.dedent("""
    import sys, time
    from tff_lab import run_dir
    with run_dir.own_file(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def test_an_output_file_has_one_writer(tmp_path, capsys):
    import numpy as np

    from tff_lab.cli import main

    out = tmp_path / "pred.npz"
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 64), np.float32))
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLD_FILE, str(out), "60"], stdout=subprocess.PIPE, text=True, env=cli_env(), cwd=REPO
    )
    assert p.stdout.readline().strip() == "held"
    try:
        for argv in (
            ["predict", "m.keras", str(x), "--out", str(out)],
            ["predict-merge", str(tmp_path), "--num-shards", "2", "--out", str(out)],
        ):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "--out" in err[0] and f"process {p.pid}" in err[0], err
    finally:
        p.kill()
        p.wait()
    # The holder died: its lock went with it; the next writer takes over and cleans up after itself.
    with rd.own_file(out):
        pass
    assert not list(tmp_path.glob(".pred.npz.tff-lab-lock"))
    assert not out.exists()
