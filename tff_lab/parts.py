"""User parts (model builders, data, learning-process builders, aggregator factories): names,
resolution and provenance.

A part is named in YAML by an import path ``package.module:attribute`` and resolved with
importlib (never ``eval``). A part passed from Python is recorded as the object it is: any
callable or factory (functions, lambdas, closures, ``functools.partial``, bound methods, callable
instances, ``tff.aggregators`` factories). Its name is its import path when another process can
import exactly that object, else ``python:<kind>:<qualname>`` (resolvable only in the process that
registered it). Provenance records the part's type, qualified name, source file and sha256, and a
digest of what it builds (the model's architecture and weight shapes, the aggregator's type
signature and settings, the data's arrays; an algorithm builder's code and bound arguments).
``parts.json`` and the checkpoints carry those digests: a resumed run refuses a part that builds
something else.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from tff_lab.errors import ConfigError

# Python objects registered for this process, by the name the config records, and what they are.
_OBJECTS: dict[str, Any] = {}
_DESCRIPTIONS: dict[str, dict] = {}


def object_name(obj: Any) -> str:
    """``module:qualname`` of a function/class, or of an instance's class plus its id."""
    target = obj if (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)) else None
    if target is not None:
        mod = getattr(target, "__module__", None) or "__main__"
        qual = getattr(target, "__qualname__", getattr(target, "__name__", "part"))
        return f"{mod}:{qual}"
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}@{id(obj):x}"


def register_object(obj: Any, name: Optional[str] = None, *, description: Optional[dict] = None) -> str:
    """Makes a Python object resolvable by name in this process; returns the name.
    ``description``: what the user passed (:func:`describe`), when ``obj`` wraps it."""
    name = name or object_name(obj)
    _OBJECTS[name] = obj
    if description is not None:
        _DESCRIPTIONS[name] = dict(description)
    else:
        _DESCRIPTIONS.pop(name, None)
    return name


def registered_description(name: Optional[str]) -> Optional[dict]:
    """What the object registered under ``name`` in this process is (None if not registered)."""
    return _DESCRIPTIONS.get(name) if name else None


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
    if is_python_name(path):
        raise ConfigError(
            field,
            f"{path!r} names a Python object passed to the process that wrote this config "
            "(a lambda, closure, instance or other object no import path reaches); it cannot be "
            "imported here: pass it again from Python (tff_lab.run_experiment(..., "
            f"{path.split(':')[1]}=...)) or give an import path 'module:attribute'",
        )
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
            raise ConfigError(
                field,
                f"importing '{mod_name}' of {path!r} failed: it imports "
                f"'{e.name}', which is not installed ({_first_line(e)})",
            ) from None
        raise ConfigError(
            field,
            f"cannot import module '{mod_name}' of {path!r} ({type(e).__name__}: "
            f"{_first_line(e)}); is it on PYTHONPATH (the current directory is searched)?",
        ) from None
    except SystemExit as e:  # a script's sys.exit() / argparse error at import
        lines = [ln.strip() for ln in said.getvalue().splitlines() if ln.strip()]
        printed = f" after printing {lines[-1][:200]!r}" if lines else ""
        raise ConfigError(
            field,
            f"importing '{mod_name}' of {path!r} called sys.exit({e.code!r}){printed}; a "
            "module used as a part must not exit or parse the command line when imported (guard "
            "it with if __name__ == '__main__')",
        ) from None
    except KeyboardInterrupt:
        raise ConfigError(field, f"importing '{mod_name}' of {path!r} was interrupted (KeyboardInterrupt)") from None
    except Exception as e:  # the user's module raised while importing
        raise ConfigError(
            field, f"importing '{mod_name}' of {path!r} failed: {type(e).__name__}: {_first_line(e)}"
        ) from None
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
    """Where a part comes from: its name, type, qualified name, source file and the file's sha256
    (and for callables that are not built in, ``code_sha256``: the digest of the code they run)."""
    out = {"kind": kind, "name": name, "builtin": bool(builtin)}
    out.update(describe(obj))
    if not builtin and callable(obj) and part_type(obj) != "ModelSpec":
        out["code_sha256"] = code_digest(obj)
    return out


def is_importable_elsewhere(name: str) -> bool:
    """Whether another process (``tff-lab export``, a resumed CLI run) can import ``name``."""
    mod = name.partition(":")[0]
    return bool(mod) and mod != "__main__" and "@" not in name and "<" not in name and mod in sys.modules


# ----------------------------------------------------------------------------------------------
# Parts as objects: names, descriptions and digests of what they build
# ----------------------------------------------------------------------------------------------
PYTHON_PREFIX = "python:"
KIND_FIELDS = {
    "model": "model.builder",
    "data": "data.source",
    "algorithm": "algorithm.builder",
    "aggregator": "aggregation.builder",
}


def _callable_target(obj: Any) -> Any:
    """The function/class whose code an object runs (a partial's function, a bound method's
    function, a callable instance's class)."""
    import functools

    for _ in range(8):
        if isinstance(obj, functools.partial):
            obj = obj.func
        elif inspect.ismethod(obj):
            obj = obj.__func__
        else:
            break
    if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj):
        return obj
    return type(obj)


def part_type(obj: Any) -> str:
    """What kind of Python object a part is, in words."""
    import functools

    if isinstance(obj, functools.partial):
        return "functools.partial"
    if inspect.ismethod(obj):
        return "bound method"
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj):
        if obj.__name__ == "<lambda>":
            return "lambda"
        if obj.__closure__ or "<locals>" in obj.__qualname__:
            return "closure"
        return "function"
    try:
        import tensorflow_federated as tff

        if isinstance(obj, (tff.aggregators.UnweightedAggregationFactory, tff.aggregators.WeightedAggregationFactory)):
            return "tff.aggregators factory"
    except ImportError:  # pragma: no cover - TFF is a dependency
        pass
    if type(obj).__name__ == "ModelSpec":
        return "ModelSpec"
    return "callable instance" if callable(obj) else "object"


def importable_name(obj: Any) -> Optional[str]:
    """``module:qualname`` when another process can import exactly this object (a module-level
    function or class, not ``__main__``); None otherwise (lambdas, closures, partials, bound
    methods, instances)."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return None
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not mod or mod == "__main__" or "<" in qual or mod not in sys.modules:
        return None
    target: Any = sys.modules[mod]
    for part in qual.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return f"{mod}:{qual}" if target is obj else None


def part_name(obj: Any, kind: str) -> str:
    """The name a config records for a part passed as a Python object: its import path when
    another process can import exactly it, else ``python:<kind>:<label>`` (a name of this
    process only; the part is identified by the digest of what it builds)."""
    name = importable_name(obj)
    if name is not None:
        return name
    target = _callable_target(obj)
    label = getattr(target, "__qualname__", None) or type(obj).__qualname__
    label = "".join(c if c.isprintable() and not c.isspace() else "_" for c in label)[:120] or "part"
    return f"{PYTHON_PREFIX}{kind}:{label}"


def is_python_name(name: Optional[str]) -> bool:
    return isinstance(name, str) and name.startswith(PYTHON_PREFIX)


def _stable(value: Any, depth: int = 0) -> Any:
    """A JSON-able, process-independent description of a value (no ids, no addresses): numbers,
    strings, containers, arrays (by digest), functions (by their own source and bound values),
    other objects (their class and attributes, a few levels deep)."""
    import functools

    import numpy as np

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if depth > 4:
        return f"<{type(value).__module__}.{type(value).__qualname__}>"
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [_stable(v, depth + 1) for v in value]]
    if isinstance(value, dict):
        return ["dict", sorted(([str(k), _stable(v, depth + 1)] for k, v in value.items()), key=lambda kv: kv[0])]
    if isinstance(value, np.ndarray) or type(value).__module__.startswith(("numpy", "tensorflow.python.framework")):
        try:
            arr = np.asarray(value)
            return [
                "array",
                str(arr.dtype),
                list(arr.shape),
                hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(),
            ]
        except Exception:  # noqa: BLE001 - a symbolic tensor: its type is what is stable
            return f"<{type(value).__qualname__}>"
    if isinstance(value, functools.partial):
        return [
            "partial",
            _stable(value.func, depth + 1),
            _stable(value.args, depth + 1),
            _stable(value.keywords, depth + 1),
        ]
    if inspect.ismethod(value):
        return ["method", _stable(value.__func__, depth + 1), _stable(value.__self__, depth + 1)]
    if inspect.isfunction(value):
        try:
            src = inspect.getsource(value)
        except (OSError, TypeError):
            src = getattr(value.__code__, "co_code", b"").hex()
        cells = []
        for cell in value.__closure__ or ():
            try:
                cells.append(_stable(cell.cell_contents, depth + 1))
            except ValueError:  # an empty cell
                cells.append(None)
        return [
            "function",
            f"{value.__module__}:{value.__qualname__}",
            src,
            _stable(value.__defaults__, depth + 1),
            _stable(value.__kwdefaults__, depth + 1),
            cells,
        ]
    if inspect.isclass(value) or inspect.ismodule(value) or inspect.isbuiltin(value):
        return f"<{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', getattr(value, '__name__', ''))}>"
    attrs = getattr(value, "__dict__", None)
    cls = type(value)
    out = [f"{cls.__module__}.{cls.__qualname__}"]
    if isinstance(attrs, dict):
        out.append(_stable({k: v for k, v in attrs.items() if not k.startswith("__")}, depth + 1))
    if "<locals>" in cls.__qualname__:  # a class made by a factory function keeps its settings in closures
        out.append(_stable({k: v for k, v in vars(cls).items() if inspect.isfunction(v) and v.__closure__}, depth + 1))
    return out


def code_digest(obj: Any) -> str:
    """sha256 of what a callable runs: its own source and the values it binds (defaults, closure
    cells, a partial's arguments, a bound method's instance, an instance's attributes)."""
    import json

    return hashlib.sha256(json.dumps(_stable(obj), sort_keys=True, default=str).encode()).hexdigest()


def describe(obj: Any) -> dict:
    """Type, qualified name, module, source file and its sha256 of a Python part."""
    target = _callable_target(obj)
    out = {
        "type": part_type(obj),
        "qualname": getattr(target, "__qualname__", type(obj).__qualname__),
        "module": getattr(target, "__module__", None),
    }
    try:
        src = inspect.getsourcefile(target)
    except TypeError:
        src = None
    if src:
        p = Path(src).resolve()
        out["source_file"] = str(p)
        out["source_sha256"] = _sha256_file(p)
    return out


def model_builds(model) -> dict:
    """What a model builder builds (a probe model): the architecture (Keras config with layer
    names canonicalised, so two builds of one architecture agree) and the weights' shapes."""
    import json

    names: dict[str, str] = {}
    for i, layer in enumerate([model, *getattr(model, "submodules", ())]):
        nm = getattr(layer, "name", None)
        if isinstance(nm, str):
            names.setdefault(nm, f"L{len(names)}")

    def canon(v):
        if isinstance(v, dict):
            return {k: canon(x) for k, x in v.items()}
        if isinstance(v, list):
            return [canon(x) for x in v]
        if isinstance(v, str):
            return names.get(v, v)
        return v

    try:
        arch = canon(json.loads(model.to_json()))
        arch_kind = "keras config"
    except Exception:  # noqa: BLE001 - a subclassed model has no config: its class and layers
        arch = {
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "layers": [type(l).__qualname__ for l in getattr(model, "submodules", ())],
        }
        arch_kind = "class and layer types (subclassed model)"
    shapes = [
        [list(map(int, w.shape)), str(w.dtype.name if hasattr(w.dtype, "name") else w.dtype)] for w in model.weights
    ]
    blob = json.dumps({"architecture": arch, "weights": shapes}, sort_keys=True, default=str).encode()
    return {
        "builds_sha256": hashlib.sha256(blob).hexdigest(),
        "builds": {
            "what": f"model architecture ({arch_kind}) and weight shapes",
            "weight_shapes": [s[0] for s in shapes],
            "parameters": int(sum(int(math.prod(s[0])) for s in shapes)),
        },
    }


def aggregator_builds(factory, record_specs) -> dict:
    """What an aggregation factory builds for the model's weights: the type signature of the
    process it creates, plus its settings (a process-independent description of the factory)."""
    import json

    import numpy as np
    import tensorflow_federated as tff

    vt = tff.types.to_type([tff.TensorType(np.dtype(s.dtype.as_numpy_dtype), tuple(s.shape)) for s in record_specs])
    if isinstance(factory, tff.aggregators.WeightedAggregationFactory):
        proc = factory.create(vt, tff.TensorType(np.float32))
    else:
        proc = factory.create(vt)
    sig = f"initialize: {proc.initialize.type_signature}\nnext: {proc.next.type_signature}"
    blob = json.dumps({"type_signature": sig, "settings": _stable(factory)}, sort_keys=True, default=str).encode()
    return {
        "builds_sha256": hashlib.sha256(blob).hexdigest(),
        "builds": {
            "what": "aggregation process type signature and factory settings",
            "type_signature": sig,
            "factory": f"{type(factory).__module__}.{type(factory).__qualname__}",
        },
    }


def data_builds(data) -> dict:
    """The identity of a run's data: a sha256 over every client's arrays and the test set."""
    import numpy as np

    h = hashlib.sha256()
    for cid in data.client_ids:
        for arr in (*data.train[cid], *data.eval[cid]):
            h.update(cid.encode())
            h.update(str(arr.shape).encode() + str(arr.dtype).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    for arr in data.test:
        h.update(str(arr.shape).encode() + str(arr.dtype).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return {
        "builds_sha256": h.hexdigest(),
        "builds": {
            "what": "the clients' arrays and the test set",
            "clients": len(data.client_ids),
            "input_shape": list(data.input_shape),
            "num_classes": int(data.num_classes),
        },
    }


def identity(prov: dict) -> Optional[str]:
    """The digest a resumed run must match for a part: what it builds where known, else the
    code it runs, else its source file."""
    for key in ("builds_sha256", "code_sha256", "source_sha256", "content_hash"):
        if prov.get(key):
            return f"{key.split('_')[0]}:{prov[key]}"
    return None


IDENTITY_WHAT = {
    "builds": "what it builds",
    "code": "its code and bound arguments",
    "source": "its source file",
    "content": "its content",
}
