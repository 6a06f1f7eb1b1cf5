"""Inputs checked where they enter: files read, output paths, numbers given as CLI flags.

Every place where something from outside enters tff_lab goes through one of these checks, which
raise a one-line :class:`~tff_lab.errors.UserError` naming the file/flag/field and what was expected
(the CLI prints it and exits 2) *before* anything is opened for real, allocated or computed:

- :func:`regular_file`: a file to read must be a regular file of bounded size (stat before open; a
  directory, a FIFO, a device such as ``/dev/zero``, a socket, a missing or unreadable file is
  refused; the file is opened with ``O_NONBLOCK``, so even a FIFO swapped in after the stat cannot
  block, and re-checked on the open descriptor).
- :func:`output_file` / :func:`check_output_dir`: a path to write must be creatable and writable,
  probed for real (a temp file created and removed in its deepest existing folder): not an existing
  directory where a file goes, not under a regular file, not on a read-only or virtual file system
  (``/proc``, ``/sys``).
- :func:`int_in` / :func:`float_in` (and :data:`positive_int`, :data:`positive_float`, ...):
  argparse ``type=`` callables, so argparse reports the flag itself (``argument --dim: expected an
  integer >= 1 ...``), and NaN, inf and out-of-range values never reach a computation.
- :func:`check_int` / :func:`check_float`: the same bounds for values from Python.

This module imports nothing of tff_lab except :mod:`tff_lab.errors`.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Optional, Union

from tff_lab.errors import ConfigError, DataError, UserError

PathLike = Union[str, os.PathLike]

INT32_MAX = 2**31 - 1
MiB = 1 << 20
GiB = 1 << 30
# A data file (client .npz/.csv, predict input) larger than this is refused before it is read.
MAX_DATA_FILE_BYTES = 4 * GiB
# A text file tff_lab parses whole (YAML, JSON sidecars).
MAX_TEXT_FILE_BYTES = 16 * MiB
# Virtual file systems: nothing tff_lab writes belongs there (writes fail or do something else).
_VIRTUAL_ROOTS = ("/proc", "/sys")


def _kind(mode: int) -> Optional[str]:
    """What a non-regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _error(error: type[UserError], where: str, path: PathLike, message: str) -> UserError:
    """``where: message`` when ``where`` is the path itself, else ``where: PATH message``."""
    p = os.fspath(path)
    if where == p or not where:
        return error(where or _short(p), message)
    return error(where, f"{_short(p)}: {message}")


def _short(p: str) -> str:
    """A path as messages show it: whole, unless absurdly long."""
    return p if len(p) <= 160 else f"{p[:80]}...{p[-60:]}"


def _oserror_text(e: OSError) -> str:
    return {
        errno.ENOENT: "not found",
        errno.ENOTDIR: "not found (a part of the path is a file, not a directory)",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ELOOP: "too many levels of symbolic links",
        errno.ENAMETOOLONG: "file name too long",
        errno.EROFS: "on a read-only file system",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EISDIR: "is a directory",
    }.get(e.errno, e.strerror or str(e))


def _size_text(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def regular_file(
    path: PathLike,
    where: Optional[str] = None,
    max_bytes: int = MAX_DATA_FILE_BYTES,
    *,
    what: str = "file",
    error: type[UserError] = DataError,
) -> Path:
    """``path`` as a :class:`~pathlib.Path` once it is known to be a readable regular file of at most
    ``max_bytes`` bytes; else ``error(where, ...)`` (``where`` defaults to the path).

    Stat before open (a FIFO would block the open, ``/dev/zero`` would fill memory), then an
    ``O_NONBLOCK`` open (a FIFO swapped in after the stat still cannot block) whose descriptor is
    checked again: the same file, still regular, still within the bound."""
    if path is None or os.fspath(path) == "":
        raise error(where or "path", f"expected a {what} path, got an empty one")
    p = Path(os.path.expanduser(os.fspath(path)))
    where = where if where is not None else os.fspath(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise _error(error, where, path, f"cannot read the {what}: {_oserror_text(e)}") from None
    except ValueError as e:  # an embedded NUL byte
        raise _error(error, where, path, f"not a valid path ({e})") from None
    kind = _kind(st.st_mode)
    if kind is not None:
        raise _error(error, where, path, f"is {kind}; expected a regular {what}")
    if st.st_size > max_bytes:
        raise _error(error, where, path, f"is {_size_text(st.st_size)}; at most {_size_text(max_bytes)} is read")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _error(error, where, path, f"cannot read the {what}: {_oserror_text(e)}") from None
    try:
        st2 = os.fstat(fd)
    finally:
        os.close(fd)
    kind = _kind(st2.st_mode)
    if kind is not None:
        raise _error(error, where, path, f"is {kind}; expected a regular {what}")
    if st2.st_size > max_bytes:
        raise _error(error, where, path, f"is {_size_text(st2.st_size)}; at most {_size_text(max_bytes)} is read")
    return p


def read_text_file(
    path: PathLike,
    where: Optional[str] = None,
    max_bytes: int = MAX_TEXT_FILE_BYTES,
    *,
    what: str = "file",
    error: type[UserError] = ConfigError,
) -> str:
    """The UTF-8 text of a checked :func:`regular_file` (never more than ``max_bytes`` bytes read)."""
    p = regular_file(path, where, max_bytes, what=what, error=error)
    where = where if where is not None else os.fspath(path)
    try:
        with open(p, "rb", buffering=0) as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise _error(error, where, path, f"cannot read the {what}: {_oserror_text(e)}") from None
    if len(data) > max_bytes:  # grew after the stat
        raise _error(error, where, path, f"is larger than {_size_text(max_bytes)}; at most that is read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error(error, where, path, f"not a UTF-8 text file (byte {e.start})") from None


# -- outputs --------------------------------------------------------------------------------------
def _virtual(p: Path) -> Optional[str]:
    real = os.path.realpath(p)
    for root in _VIRTUAL_ROOTS:
        if real == root or real.startswith(root + "/"):
            return root
    return None


def _deepest_existing(p: Path, where: str, path: PathLike, error) -> Path:
    """The deepest existing ancestor of ``p`` (which does not exist), checked to be a directory."""
    anc = p.parent
    while True:
        try:
            st = os.stat(anc)
        except FileNotFoundError:
            if anc.parent == anc:
                raise _error(error, where, path, "no existing folder above it") from None
            anc = anc.parent
            continue
        except OSError as e:
            raise _error(error, where, path, f"cannot be created: {anc}: {_oserror_text(e)}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise _error(
                error, where, path, f"cannot be created: {anc} is {_kind(st.st_mode) or 'a file'}, not a directory"
            )
        return anc


def _name_lengths(p: Path, anc: Path, where: str, path: PathLike, error) -> None:
    try:
        name_max = os.pathconf(anc, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for part in p.relative_to(anc).parts:
        if len(os.fsencode(part)) > name_max:
            raise _error(
                error,
                where,
                path,
                f"cannot be created: the name {part[:40]!r}... is too long (more than {name_max} bytes)",
            )


def _probe_dir(d: Path, where: str, path: PathLike, error) -> None:
    """Creates and removes a temp file in the existing directory ``d``: writable for real."""
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tff-lab-probe-")
    except OSError as e:
        raise _error(error, where, path, f"cannot be written: {d}: {_oserror_text(e)}") from None
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _output_path(path: PathLike, where: Optional[str], error, kind: str) -> tuple[Path, str]:
    """The checks every output path gets first: not empty, no NUL byte, not on /proc or /sys."""
    if path is None or os.fspath(path) == "":
        raise error(where or "--out", f"expected an output {kind} path, got an empty one")
    p = Path(os.path.expanduser(os.fspath(path)))
    where = where if where is not None else os.fspath(path)
    if "\x00" in os.fspath(p):
        raise _error(error, where, path, "not a valid path (it holds a NUL byte)")
    root = _virtual(p)
    if root is not None:
        raise _error(error, where, path, f"is under {root}, a virtual file system; choose a path on a real disk")
    return p, where


def output_file(path: PathLike, where: Optional[str] = None, *, error: type[UserError] = ConfigError) -> Path:
    """``path`` as a Path once a file can be written there (created, or replaced atomically).

    Refuses, naming ``where`` (default: the path): an empty path, an existing directory or other
    non-regular file, a path under a regular file, a virtual file system (/proc, /sys), a folder
    that cannot be written (permission, read-only file system: probed by creating and removing a
    temp file in the deepest existing folder), a name longer than the file system allows.
    Nothing is left behind."""
    p, where = _output_path(path, where, error, "file")
    if os.fspath(path).endswith(("/", os.sep)):
        raise _error(error, where, path, "names a folder (ends in '/'); expected a file path")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None  # a part of the path is a file: reported by _deepest_existing
    except OSError as e:
        raise _error(error, where, path, f"cannot be written: {_oserror_text(e)}") from None
    if st is not None:
        kind = _kind(st.st_mode)
        if kind is not None:
            raise _error(error, where, path, f"is {kind}; expected a file path to write")
        _probe_dir(p.parent, where, path, error)  # replaced by rename: its folder must be writable
        return p
    anc = _deepest_existing(p, where, path, error)
    _name_lengths(p, anc, where, path, error)
    _probe_dir(anc, where, path, error)
    return p


def check_output_dir(path: PathLike, where: Optional[str] = None, *, error: type[UserError] = ConfigError) -> Path:
    """``path`` as a Path once a directory can be created or written there (not RUN_DIR: that has
    its own owner). Refuses an existing non-directory, a path under a regular file, a virtual file
    system, a folder that cannot be written (probed for real)."""
    p, where = _output_path(path, where, error, "folder")
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as e:
        raise _error(error, where, path, f"cannot be written: {_oserror_text(e)}") from None
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise _error(error, where, path, f"is {_kind(st.st_mode) or 'a file'}; expected a folder")
        _probe_dir(p, where, path, error)
        return p
    anc = _deepest_existing(p, where, path, error)
    _name_lengths(p, anc, where, path, error)
    _probe_dir(anc, where, path, error)
    return p


# -- numbers --------------------------------------------------------------------------------------
def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _bounds_text(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {_num(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {_num(hi)}")
    return " and ".join(parts)


def _parse_int(text) -> int:
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, int):
        return text
    s = str(text).strip()
    if not s or len(s) > 40:
        raise ValueError(text)
    return int(s, 10)


def _parse_float(text) -> float:
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    if not s or len(s) > 64:
        raise ValueError(text)
    return float(s)


def int_in(lo: Optional[int] = 1, hi: Optional[int] = INT32_MAX, *, note: str = ""):
    """An argparse ``type=``: an integer in [lo, hi]; argparse names the flag in its error."""
    expected = f"an integer {_bounds_text(lo, hi)}".strip() + (f" ({note})" if note else "")

    def parse(text) -> int:
        try:
            v = _parse_int(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {str(text)[:40]!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {v}")
        return v

    parse.__name__ = "integer"
    parse.expected = expected
    parse.kind, parse.lo, parse.hi, parse.lo_open, parse.hi_open = "int", lo, hi, False, False
    return parse


def float_in(
    lo: Optional[float] = None,
    hi: Optional[float] = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    note: str = "",
):
    """An argparse ``type=``: a finite number in the interval (open/closed ends as asked)."""
    bounds = _bounds_text(lo, hi, lo_open, hi_open)
    expected = (f"a finite number {bounds}" if bounds else "a finite number") + (f" ({note})" if note else "")

    def parse(text) -> float:
        try:
            v = _parse_float(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {str(text)[:40]!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {v}")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {v:g}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {v:g}")
        return v

    parse.__name__ = "number"
    parse.expected = expected
    parse.kind, parse.lo, parse.hi, parse.lo_open, parse.hi_open = "float", lo, hi, lo_open, hi_open
    return parse


positive_int = int_in(1, INT32_MAX)
non_negative_int = int_in(0, INT32_MAX)
positive_float = float_in(0.0, None, lo_open=True)
non_negative_float = float_in(0.0, None)
finite_float = float_in()
probability = float_in(0.0, 1.0, lo_open=True)  # (0, 1]
open_fraction = float_in(0.0, 1.0, lo_open=True, hi_open=True)  # (0, 1)


def check_int(
    value, where: str, lo: Optional[int] = 1, hi: Optional[int] = INT32_MAX, *, error: type[UserError] = ConfigError
) -> int:
    """``value`` as an int within [lo, hi], else ``error(where, ...)`` (for values from Python)."""
    try:
        return int_in(lo, hi)(value)
    except argparse.ArgumentTypeError as e:
        raise error(where, str(e)) from None


def check_float(
    value,
    where: str,
    lo: Optional[float] = None,
    hi: Optional[float] = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    error: type[UserError] = ConfigError,
) -> float:
    """``value`` as a finite float within the interval, else ``error(where, ...)``."""
    try:
        return float_in(lo, hi, lo_open=lo_open, hi_open=hi_open)(value)
    except argparse.ArgumentTypeError as e:
        raise error(where, str(e)) from None


# -- arrays (client data) -------------------------------------------------------------------------
# An example is at most 4-dimensional (height, width, channels, and one more: e.g. a time axis).
MAX_EXAMPLE_DIMS = 4
MAX_FEATURES_PER_EXAMPLE = 1 << 24  # 16.7 M values per example (a 4096 x 4096 image)
MAX_ARRAY_BYTES = 8 * GiB  # one client's features as stored
# Class ids are 0..MAX_CLASSES-1: the model's output layer, the label names and per-class tables are
# sized by the largest label, so it is bounded before anything is allocated from it.
MAX_CLASSES = 100_000


def check_example_shape(
    shape,
    where: str,
    *,
    name: str = "x",
    itemsize: int = 4,
    allow_empty: bool = False,
    error: type[UserError] = DataError,
) -> None:
    """Refuses, from the shape alone (nothing allocated yet): no examples (unless ``allow_empty``),
    zero features, more than MAX_EXAMPLE_DIMS dimensions per example, more than
    MAX_FEATURES_PER_EXAMPLE values per example, more than MAX_ARRAY_BYTES in all."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise error(where, f"expected {name} of shape (examples, features...), got shape {shape}")
    if shape[0] == 0 and not allow_empty:
        raise error(where, f"holds no examples ({name} has shape {shape})")
    per = shape[1:]
    if any(d == 0 for d in per):
        raise error(where, f"{name} has zero features (shape {shape}); expected at least one value per example")
    if len(per) > MAX_EXAMPLE_DIMS:
        raise error(
            where,
            f"examples of {len(per)} dimensions ({name} has shape {shape}); at most "
            f"{MAX_EXAMPLE_DIMS} are supported (e.g. height, width, channels)",
        )
    n_feat = math.prod(per)
    if n_feat > MAX_FEATURES_PER_EXAMPLE:
        raise error(
            where,
            f"examples of {n_feat:,} values ({name} has shape {shape}); at most "
            f"{MAX_FEATURES_PER_EXAMPLE:,} per example",
        )
    total = shape[0] * n_feat * max(1, int(itemsize))
    if total > MAX_ARRAY_BYTES:
        raise error(
            where,
            f"{name} of shape {shape} would take {_size_text(total)}; at most "
            f"{_size_text(MAX_ARRAY_BYTES)} per file or client",
        )


def check_labels(
    y, where: str, num_classes: Optional[int] = None, *, name: str = "labels y", error: type[UserError] = DataError
) -> int:
    """Refuses labels that are not finite integer class ids in [0, num_classes) (and below
    MAX_CLASSES): checked on the array as given, before anything is sized by a label. Names the
    first bad example. Returns the largest label (-1 for no labels)."""
    import numpy as np

    y = np.asarray(y)
    if y.dtype.kind not in "iuf" or y.dtype.hasobject:
        raise error(where, f"{name} must be integer class ids, got dtype {y.dtype}")
    if y.size == 0:
        return -1
    flat = y.reshape(-1)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(flat)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise error(where, f"{name} must be integer class ids, got {flat[i]} at example {i}")
        bad = flat != np.floor(flat)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise error(where, f"{name} must be integer class ids, got {flat[i]:g} at example {i}")
    lo = flat.min()
    if lo < 0:
        i = int(np.argmin(flat))
        raise error(where, f"{name} must be class ids >= 0, got {lo:g} at example {i}")
    hi = flat.max()
    limit = MAX_CLASSES if num_classes is None else min(int(num_classes), MAX_CLASSES)
    if hi >= limit:
        i = int(np.argmax(flat))
        what = (
            f"below num_classes={num_classes}"
            if num_classes is not None and num_classes <= MAX_CLASSES
            else f"below {MAX_CLASSES:,} (at most {MAX_CLASSES:,} classes)"
        )
        raise error(where, f"{name} must be class ids {what}, got {hi:.0f} at example {i}")
    return int(hi)


# -- argparse types for paths ---------------------------------------------------------------------
def readable_file_arg(max_bytes: int = MAX_DATA_FILE_BYTES, what: str = "file"):
    """An argparse ``type=``: :func:`regular_file` at parse time, so argparse names the flag."""

    def parse(text: str) -> str:
        try:
            regular_file(text, text, max_bytes, what=what)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    parse.__name__ = what
    return parse


def output_file_arg(text: str) -> str:
    """An argparse ``type=``: :func:`output_file` at parse time (before any work)."""
    try:
        output_file(text, text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


output_file_arg.__name__ = "output file"
