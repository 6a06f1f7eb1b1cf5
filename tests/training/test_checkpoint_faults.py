"""Checkpoint faults: a failing disk keeps the previous checkpoint; a damaged one is named and skipped."""

import errno
import json
import os

import numpy as np
import pytest

from tff_lab.training import checkpoint as ckpt


def _state(v: float):
    return [np.full((3, 2), v, np.float32), np.arange(4, dtype=np.int64) + int(v), np.float32(v)]


def _assert_state(restored, v):
    for got, want in zip(restored, _state(v), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.fixture
def two(tmp_path):
    d = tmp_path / "checkpoints"
    ckpt.save(d, 2, _state(2.0), {"k": 2})
    ckpt.save(d, 4, _state(4.0), {"k": 4})
    return d


def _names(d):
    return sorted(p.name for p in d.iterdir())


def test_manifest_records_the_arrays_digest(two):
    meta = json.loads((two / "ckpt_000004.json").read_text())
    assert meta["npz_bytes"] == (two / "ckpt_000004.npz").stat().st_size
    assert len(meta["npz_sha256"]) == 64
    state, meta = ckpt.load(two, 4, _state(0.0))
    _assert_state(state, 4.0)
    assert meta["k"] == 4


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_failing_array_write_keeps_the_previous_checkpoint(two, monkeypatch, code):
    real_savez = np.savez

    def savez_then_fail(path, *arrays):
        real_savez(path, *arrays)  # bytes reach the temp file, then the disk gives up
        with open(path, "r+b") as f:
            f.truncate(100)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ckpt.np, "savez", savez_then_fail)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.save(two, 6, _state(6.0), {"k": 6})
    msg = str(e.value)
    assert "ckpt_000006.npz" in msg and os.strerror(code) in msg and errno.errorcode[code] in msg
    assert "previous checkpoint (round 4) is kept" in msg and "\n" not in msg
    assert _names(two) == ["ckpt_000002.json", "ckpt_000002.npz", "ckpt_000004.json", "ckpt_000004.npz"]
    assert ckpt.latest(two) == 4
    _assert_state(ckpt.load(two, 4, _state(0.0))[0], 4.0)


def test_failing_manifest_write_leaves_no_half_checkpoint(two, monkeypatch):
    def fail(path, text):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(ckpt, "atomic_write_text", fail)
    with pytest.raises(ckpt.CheckpointError, match=r"ckpt_000006\.json: .*Input/output error \(EIO\)"):
        ckpt.save(two, 6, _state(6.0), {})
    assert not (two / "ckpt_000006.npz").exists()  # arrays without a manifest are no checkpoint
    assert ckpt.latest(two) == 4
    _assert_state(ckpt.load(two, 4, _state(0.0))[0], 4.0)


def test_os_replace_failure_is_reported_too(two, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("ckpt_000006.npz"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ckpt.CheckpointError, match="No space left on device"):
        ckpt.save(two, 6, _state(6.0), {})
    assert [n for n in _names(two) if n.startswith(".")] == []  # no temp files left behind
    assert ckpt.latest(two) == 4


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size: only the digest can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: _truncate(d / "ckpt_000004.npz"),
        lambda d: _flip_a_byte(d / "ckpt_000004.npz"),
        lambda d: (d / "ckpt_000004.npz").unlink(),
        lambda d: _truncate(d / "ckpt_000004.json"),
    ],
    ids=["truncated-npz", "flipped-byte", "missing-npz", "truncated-manifest"],
)
def test_damaged_newest_checkpoint_is_named_and_the_previous_one_used(two, capsys, damage):
    damage(two)
    assert ckpt.latest(two) == 2
    warning = capsys.readouterr().err
    assert "ckpt_000004." in warning and "using the previous checkpoint (round 2)" in warning
    _assert_state(ckpt.load(two, 2, _state(0.0))[0], 2.0)
    with pytest.raises(ckpt.CheckpointError, match=r"ckpt_000004\.(npz|json)"):
        ckpt.load(two, 4, _state(0.0))


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    d = tmp_path / "checkpoints"
    ckpt.save(d, 2, _state(2.0), {})
    _truncate(d / "ckpt_000002.npz", 0.9)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.latest(d)
    assert "ckpt_000002.npz" in str(e.value) and "no earlier intact checkpoint" in str(e.value)
    assert ckpt.latest(tmp_path / "nothing") is None


def test_legacy_checkpoint_without_digest_is_still_checked(two):
    meta = json.loads((two / "ckpt_000004.json").read_text())
    del meta["npz_sha256"], meta["npz_bytes"], meta["manifest_sha256"]  # as written before digests
    (two / "ckpt_000004.json").write_text(json.dumps(meta))
    assert ckpt.latest(two) == 4
    _truncate(two / "ckpt_000004.npz")
    assert ckpt.latest(two) == 2


def test_keep_prunes_only_after_a_successful_write(two):
    ckpt.save(two, 6, _state(6.0), {})
    assert _names(two) == ["ckpt_000004.json", "ckpt_000004.npz", "ckpt_000006.json", "ckpt_000006.npz"]
