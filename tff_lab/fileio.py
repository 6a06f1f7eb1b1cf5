"""Atomic file writes for the whole package: a reader (or a crash) never sees a half-written file.

Every artifact tff_lab writes (configs, metrics, checkpoints, exports, manifests) goes through
here: the bytes land in a temp file in the same directory, are fsynced, then renamed over the
target. A failure (ENOSPC, EIO, a signal) removes the temp file and leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike[str]], suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temp path beside ``path``; on success it is fsynced and renamed onto ``path``.

    For writers that want a file name (``np.savez``, ``fig.savefig``, Keras' ``save``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Union[str, os.PathLike[str]], data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Union[str, os.PathLike[str]], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write(path: Union[str, os.PathLike[str]], data: Union[bytes, str]) -> None:
    atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Moves a freshly written directory into place, replacing an older one."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
