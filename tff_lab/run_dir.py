"""The one owner of a directory that tff_lab writes (RUN_DIR, an export, a rendered k8s tree).

Every command that writes a directory goes through :func:`own`, which gives four guarantees by
construction, whatever the command:

- **one writer**: an exclusive ``flock`` on the directory itself, held for the whole process. A
  second process is refused in one line naming the holder (pid, command, start time). The kernel
  drops the lock when its holder dies, so no lock is ever stale; the owner record a dead holder
  left behind is reported and taken over.
- **recognised, never guessed**: a directory is tff_lab's when it holds the marker
  ``.tff-lab.json`` (written by tff_lab, never by a user). ``replace`` (``--overwrite``) refuses a
  non-empty directory without it, so another program's files are never deleted; a directory
  made before markers existed is recognised by its resolved ``config.yaml`` header.
- **replacement is a transaction**: ``begin_replace`` moves the earlier run's files aside into
  ``.replaced-<pid>``; :meth:`Owner.commit` deletes them once the new run has something to put in
  their place (its first checkpoint); on any failure :meth:`Owner.rollback` puts them back. A
  process killed in between leaves the aside folder, and the next owner rolls it back first.
- **what is read back was written by us**: :meth:`Owner.write_text` records each file's sha256
  in the marker; :meth:`Owner.read_verified` refuses a file changed since (one line, exit 2).

Imports nothing of tff_lab but :mod:`tff_lab.errors` and :mod:`tff_lab.fileio`.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from tff_lab.errors import ConfigError
from tff_lab.fileio import atomic_write_bytes

MARKER = ".tff-lab.json"
OWNER = ".tff-lab.owner"
_ASIDE_PREFIX = ".replaced-"
_NAMES = ".names.json"  # inside an aside folder: the names the replacement owns
_LEGACY_HEADER = b"# resolved config; rerun with: tff-lab run"
FORMAT = 1
KINDS = ("run", "export", "k8s", "predict")

PathLike = Union[str, os.PathLike]


class RunDirError(ConfigError):
    """RUN_DIR cannot be used as asked (in use, not ours, not writable, changed behind our back)."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _probe_writable(folder: Path, where: str) -> None:
    """Creates and removes a temp file in ``folder`` (the real test: permissions, read-only
    mounts, /proc, a full disk all answer here)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tff-lab-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RunDirError(where, f"cannot write in {folder}: {os.strerror(e.errno) if e.errno else e}") from None


def check_creatable(path: PathLike, where: str) -> Path:
    """Checks, before any work, that ``path`` is or can become a writable directory.

    Refuses a regular file (or anything else that is not a directory) at ``path`` or at any of its
    ancestors, and a location nobody can write (read-only file systems, ``/proc``, permissions)."""
    path = Path(os.path.abspath(os.fspath(path)))
    where = where or str(path)
    probe = path
    while True:
        if probe.exists() or probe.is_symlink():
            if not probe.is_dir():
                what = "a regular file" if probe.is_file() else "not a directory"
                if probe == path:
                    raise RunDirError(where, f"{path} exists and is {what}; expected a directory")
                raise RunDirError(where, f"{path} cannot be created: {probe} is {what}")
            break
        if probe.parent == probe:
            break
        probe = probe.parent
    if str(probe).startswith(("/proc", "/sys")) or probe == Path("/dev") or str(probe).startswith("/dev/"):
        raise RunDirError(where, f"{path} is on a virtual file system ({probe}); choose a normal directory")
    _probe_writable(probe, where)
    return path


def is_tff_lab_dir(path: PathLike) -> bool:
    """Whether ``path`` holds tff_lab's marker (or a resolved config.yaml of a run made before markers)."""
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    cfg = path / "config.yaml"
    try:
        with open(cfg, "rb") as f:
            return cfg.is_file() and f.read(len(_LEGACY_HEADER)) == _LEGACY_HEADER
    except OSError:
        return False


def _visible_entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name not in (OWNER,))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_marker(path: Path, where: str) -> dict:
    f = path / MARKER
    if not f.exists():
        return {"format": FORMAT, "kind": None, "files": {}}
    try:
        raw = f.read_bytes()
        if len(raw) > 1 << 20:
            raise ValueError("larger than 1 MiB")
        m = json.loads(raw)
    except (OSError, ValueError) as e:
        raise RunDirError(where, f"{f} is unreadable ({str(e).splitlines()[0][:100]}); it is tff_lab's marker "
                                 "of this directory: restore it or choose a new directory") from None
    ok = (isinstance(m, dict) and m.get("format") == FORMAT and (m.get("kind") is None or m.get("kind") in KINDS)
          and isinstance(m.get("files", {}), dict)
          and all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in m.get("files", {}).items()))
    if not ok:
        raise RunDirError(where, f"{f} does not have the layout tff_lab writes (format {FORMAT}, kind one of "
                                 f"{', '.join(KINDS)}, files name -> sha256); restore it or choose a new directory")
    m.setdefault("files", {})
    return m


class Owner:
    """The process's hold on one directory (see the module docstring). Use :func:`own`."""

    def __init__(self, path: Path, kind: str, where: str, fd: int, took_over: Optional[dict]):
        self.path = path
        self.kind = kind
        self.where = where
        self._fd = fd
        self.took_over = took_over
        self.created = False
        self.aside: Optional[Path] = None
        self._marker = _read_marker(path, where)

    # --- state of the directory -------------------------------------------------------------
    def is_ours(self) -> bool:
        return is_tff_lab_dir(self.path)

    def is_empty(self) -> bool:
        return not _visible_entries(self.path)

    # --- transaction --------------------------------------------------------------------------
    def begin_replace(self, names: Optional[Sequence[str]] = None) -> Optional[Path]:
        """Moves the earlier contents (all of them, or ``names``) aside; :meth:`commit` deletes them,
        :meth:`rollback` restores them. Refuses a non-empty directory that is not tff_lab's."""
        if self.is_empty():
            return None
        if not self.is_ours():
            raise RunDirError(self.where, f"{self.path} is not empty and holds no tff_lab output (no {MARKER}); "
                                          "it is never overwritten: choose a new directory")
        wanted = list(names or _visible_entries(self.path))
        if MARKER not in wanted:
            wanted.append(MARKER)  # the marker (and its digests) belongs to the transaction
        present = [n for n in wanted if (self.path / n).exists() and not n.startswith(_ASIDE_PREFIX) and n != OWNER]
        aside = self.path / f"{_ASIDE_PREFIX}{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir()
        # What a rollback may remove: the names being replaced (a user's other files stay untouched).
        atomic_write_bytes(aside / _NAMES, json.dumps(sorted(set(names or present) | {MARKER})).encode())
        for n in present:
            os.replace(self.path / n, aside / n)
        if (aside / MARKER).exists():
            self._marker = {"format": FORMAT, "kind": None, "files": {}}
        self.aside = aside
        return aside

    def commit(self) -> None:
        """The new contents stand on their own: the earlier ones are deleted."""
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def rollback(self) -> None:
        """Puts the earlier contents back (after removing what the new attempt wrote)."""
        if self.aside is None:
            return
        _restore(self.path, self.aside)
        self.aside = None
        self._marker = _read_marker(self.path, self.where)

    # --- files covered by a digest ------------------------------------------------------------
    def mark(self, **info) -> None:
        """Writes the marker (kind and any extra facts), keeping the recorded digests."""
        self._marker.update({k: v for k, v in info.items() if k not in ("files", "format")})
        self._marker["format"] = FORMAT
        self._marker["kind"] = self.kind
        self._marker.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        atomic_write_bytes(self.path / MARKER, json.dumps(self._marker, indent=1, sort_keys=True).encode())

    def write_text(self, name: str, text: str) -> Path:
        """Writes ``name`` atomically and records its sha256 in the marker."""
        data = text.encode()
        target = self.path / name
        atomic_write_bytes(target, data)
        self._marker.setdefault("files", {})[name] = _sha256(data)
        self.mark()
        return target

    def read_verified(self, name: str, max_bytes: int = 64 << 20) -> str:
        return read_verified(self.path, name, where=self.where, max_bytes=max_bytes)

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                (self.path / OWNER).unlink()
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def read_verified(path: PathLike, name: str, *, where: Optional[str] = None, max_bytes: int = 64 << 20) -> str:
    """A file of a tff_lab directory, checked against the sha256 recorded when tff_lab wrote it.

    Files written before digests existed (no record) are read as they are."""
    path = Path(path)
    where = where or str(path / name)
    f = path / name
    try:
        st = f.stat()
        if not f.is_file():
            raise RunDirError(where, f"{f} is not a regular file")
        if st.st_size > max_bytes:
            raise RunDirError(where, f"{f} is {st.st_size} bytes; tff_lab wrote at most {max_bytes}")
        data = f.read_bytes()
    except FileNotFoundError:
        raise RunDirError(where, f"{f} is missing") from None
    except OSError as e:
        raise RunDirError(where, f"{f} is unreadable: {os.strerror(e.errno) if e.errno else e}") from None
    recorded = _read_marker(path, where).get("files", {}).get(name)
    if recorded is not None and _sha256(data) != recorded:
        raise RunDirError(where, f"{f} was changed after tff_lab wrote it (sha256 differs from the one recorded "
                                 f"in {MARKER}); restore it, or start a new run")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise RunDirError(where, f"{f} is not UTF-8 text") from None


def _restore(path: Path, aside: Path) -> None:
    try:
        owned = set(json.loads((aside / _NAMES).read_text()))
    except (OSError, ValueError, TypeError):
        owned = {p.name for p in aside.iterdir()}
    (aside / _NAMES).unlink(missing_ok=True)
    for child in list(path.iterdir()):
        if child == aside or child.name not in owned:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()
    for child in aside.iterdir():
        os.replace(child, path / child.name)
    shutil.rmtree(aside, ignore_errors=True)


def _recover_interrupted(path: Path) -> Optional[str]:
    """A replacement whose process died: its aside folder still holds the earlier run. Roll back."""
    notes = []
    for aside in sorted(path.glob(f"{_ASIDE_PREFIX}*")):
        if not aside.is_dir():
            continue
        try:
            pid = int(aside.name[len(_ASIDE_PREFIX):])
        except ValueError:
            continue
        if pid != os.getpid() and _pid_alive(pid) and pid != 1:
            continue  # cannot happen while we hold the lock, unless pid reuse: leave it
        _restore(path, aside)
        notes.append(f"restored the earlier contents that an interrupted replacement (pid {pid}) had moved aside")
    return "; ".join(notes) or None


def _owner_record() -> dict:
    return {"pid": os.getpid(), "host": os.uname().nodename,
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def acquire(path: PathLike, *, kind: str, where: Optional[str] = None, create: bool = True) -> Owner:
    """Takes the exclusive hold on ``path`` (created if needed). See :func:`own`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    where = where or str(path)
    path = check_creatable(path, where)
    created = False
    if not path.exists():
        if not create:
            raise RunDirError(where, f"{path} does not exist")
        try:
            path.mkdir(parents=True)
            created = True
        except FileExistsError:
            pass
        except OSError as e:
            raise RunDirError(where, f"cannot create {path}: {os.strerror(e.errno) if e.errno else e}") from None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunDirError(where, f"cannot lock {path}: {os.strerror(e.errno)}") from None
        holder = _read_owner(path)
        who = (f"process {holder.get('pid')} on {holder.get('host')} ('{holder.get('command')}', since "
               f"{holder.get('since')})") if holder else "another process"
        raise RunDirError(where, f"{path} is in use by {who}; wait for it to finish or choose another "
                                 "directory") from None
    stale = _read_owner(path)
    took_over = None
    if stale and not (stale.get("pid") == os.getpid()):
        took_over = stale
        print(f"tff-lab: warning: {path}: the previous owner (process {stale.get('pid')}, "
              f"'{stale.get('command')}', since {stale.get('since')}) ended without releasing it; taking over",
              file=sys.stderr)
    try:
        atomic_write_bytes(path / OWNER, json.dumps(_owner_record()).encode())
        note = _recover_interrupted(path)
        if note:
            print(f"tff-lab: warning: {path}: {note}", file=sys.stderr)
        owner = Owner(path, kind, where, fd, took_over)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    owner.created = created
    return owner


def _read_owner(path: Path) -> Optional[dict]:
    try:
        rec = json.loads((path / OWNER).read_text()[:4096])
        return rec if isinstance(rec, dict) else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def own(path: PathLike, *, kind: str, where: Optional[str] = None, create: bool = True) -> Iterator[Owner]:
    """Holds ``path`` exclusively for the block. On an exception a replacement in progress is rolled
    back, and a directory this call created and left empty is removed (a refused command leaves
    nothing behind)."""
    owner = acquire(path, kind=kind, where=where, create=create)
    try:
        yield owner
    except BaseException:
        with contextlib.suppress(Exception):
            owner.rollback()
        raise
    finally:
        owner.release()
        if owner.created:
            with contextlib.suppress(OSError):
                if not any(owner.path.iterdir()):
                    owner.path.rmdir()
