"""User parts (model builders, data loaders, learning-process builders, aggregator factories):
resolution by import path and provenance.

A part is named in YAML by an import path ``package.module:attribute`` and resolved with
importlib (never ``eval``). A part passed as a Python object is registered under the same kind of
name (``module:qualname``), so the resolved config names it and every stage, built-in or not,
resolves parts the same way. Provenance (import path, source file, its sha256) goes into
``summary.json`` and the checkpoints: a resumed run refuses parts whose source changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from tff_lab.errors import ConfigError

# Python objects registered for this process, by the name the config records.
_OBJECTS: dict[str, Any] = {}


def object_name(obj: Any) -> str:
    """``module:qualname`` of a function/class, or of an instance's class plus its id."""
    target = obj if (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)) else None
    if target is not None:
        mod = getattr(target, "__module__", None) or "__main__"
        qual = getattr(target, "__qualname__", getattr(target, "__name__", "part"))
        return f"{mod}:{qual}"
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}@{id(obj):x}"


def register_object(obj: Any, name: Optional[str] = None) -> str:
    """Makes a Python object resolvable by name in this process; returns the name."""
    name = name or object_name(obj)
    _OBJECTS[name] = obj
    return name


def add_search_path(folder) -> None:
    """Makes modules in ``folder`` importable by import paths (the experiment file's folder)."""
    folder = str(Path(folder).resolve())
    if folder not in sys.path:
        sys.path.append(folder)


def resolve(path: str, field: str) -> Any:
    """The object behind ``module:attribute`` (or a name registered in this process).

    Modules are searched on ``sys.path`` plus the current directory and the experiment file's
    folder (as ``python -m`` would)."""
    if path in _OBJECTS:
        return _OBJECTS[path]
    add_search_path(Path.cwd())
    mod_name, sep, attr = path.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(field, f"expected an import path 'module:attribute', got {path!r}")
    argv = sys.argv
    # A module that parses argv at import (argparse in a script) must see no arguments of tff-lab's.
    sys.argv = [mod_name]
    said = io.StringIO()  # what the module prints to stderr while importing (argparse's complaint)
    try:
        with contextlib.redirect_stderr(said):
            module = importlib.import_module(mod_name)
    except ImportError as e:
        if getattr(e, "name", None) and e.name != mod_name and not mod_name.startswith(f"{e.name}."):
            raise ConfigError(field, f"importing '{mod_name}' of {path!r} failed: it imports "
                              f"'{e.name}', which is not installed ({_first_line(e)})") from None
        raise ConfigError(field, f"cannot import module '{mod_name}' of {path!r} ({type(e).__name__}: "
                          f"{_first_line(e)}); is it on PYTHONPATH (the current directory is searched)?") from None
    except SystemExit as e:  # a script's sys.exit() / argparse error at import
        lines = [ln.strip() for ln in said.getvalue().splitlines() if ln.strip()]
        printed = f" after printing {lines[-1][:200]!r}" if lines else ""
        raise ConfigError(field, f"importing '{mod_name}' of {path!r} called sys.exit({e.code!r}){printed}; a "
                          "module used as a part must not exit or parse the command line when imported (guard "
                          "it with if __name__ == '__main__')") from None
    except KeyboardInterrupt:
        raise ConfigError(field, f"importing '{mod_name}' of {path!r} was interrupted (KeyboardInterrupt)") from None
    except Exception as e:  # the user's module raised while importing
        raise ConfigError(field, f"importing '{mod_name}' of {path!r} failed: {type(e).__name__}: "
                          f"{_first_line(e)}") from None
    finally:
        sys.argv = argv
    obj: Any = module
    for part in attr.split("."):
        if "<" in part or not hasattr(obj, part):
            raise ConfigError(field, f"module '{mod_name}' has no attribute '{attr}' (import path {path!r})")
        obj = getattr(obj, part)
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def resolve_callable(path: str, field: str) -> Callable:
    obj = resolve(path, field)
    if not callable(obj):
        raise ConfigError(field, f"{path!r} is a {type(obj).__name__}, expected a callable")
    return obj


def _sha256_file(path: Path) -> Optional[str]:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def provenance(obj: Any, *, name: str, kind: str, builtin: bool = False) -> dict:
    """Where a part comes from: its name, source file and the file's sha256."""
    out = {"kind": kind, "name": name, "builtin": bool(builtin)}
    target = obj if (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)) else type(obj)
    try:
        src = inspect.getsourcefile(target)
    except TypeError:
        src = None
    if src:
        p = Path(src).resolve()
        out["source_file"] = str(p)
        out["source_sha256"] = _sha256_file(p)
    return out


def is_importable_elsewhere(name: str) -> bool:
    """Whether another process (``tff-lab export``, a resumed CLI run) can import ``name``."""
    mod = name.partition(":")[0]
    return bool(mod) and mod != "__main__" and "@" not in name and "<" not in name and mod in sys.modules
