"""Data sources: one registry for the built-in sources, the tasks' and a user's loaders.

A loader is ``loader(cfg, rng, **data.kwargs)`` returning a :class:`FederatedData` or anything
:func:`tff_lab.data.adapters.federated_data` accepts (a TFF ``ClientData``, a mapping of client id
to arrays or to ``tf.data.Dataset``). ``data.source`` is a registered name or an import path
``module:attribute`` of a loader (or of a ready ``ClientData``/mapping object).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from tff_lab import parts as parts_lib
from tff_lab.errors import ConfigError

_LOADERS: dict[str, Callable[..., Any]] = {}


def register_source(name: str, loader: Callable[..., Any], *, replace: bool = False) -> None:
    """Registers ``loader(cfg, rng, **kwargs)`` as ``data.source: name``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"source name must be a non-empty string without ':', got {name!r}")
    if name in _LOADERS and not replace:
        raise ValueError(f"data source '{name}' is already registered")
    if not callable(loader):
        raise TypeError(f"a data source loader must be callable, got {type(loader).__name__}")
    _LOADERS[name] = loader


def available_sources() -> list[str]:
    _load_builtin()
    return sorted(_LOADERS)


def _load_builtin() -> None:
    from tff_lab.data import sources

    for name, fn in sources.BUILTIN_LOADERS.items():
        _LOADERS.setdefault(name, fn)
    try:
        import tff_lab.tasks  # noqa: F401  (registers the tasks' sources)
    except ImportError as e:
        if getattr(e, "name", None) != "tff_lab.tasks":
            raise


def source_part(cfg) -> tuple[Any, dict]:
    """(loader or data object, provenance) for ``cfg.data.source``."""
    _load_builtin()
    src = cfg.data.source
    if src in _LOADERS:
        fn = _LOADERS[src]
        builtin = getattr(fn, "__module__", "").startswith("tff_lab.")
        return fn, parts_lib.provenance(fn, name=src, kind="data", builtin=builtin)
    if ":" in src:
        obj = parts_lib.resolve(src, "data.source")
        return obj, parts_lib.provenance(obj, name=src, kind="data")
    raise ConfigError(
        "data.source",
        f"unknown value {src!r}; expected one of: {', '.join(available_sources())}; "
        "or an import path 'module:attribute' of your own loader",
    )


def load_source(cfg, rng):
    """Runs the configured source and returns a :class:`FederatedData`."""
    from tff_lab.data.adapters import federated_data
    from tff_lab.data.sources import FederatedData

    obj, _ = source_part(cfg)
    kwargs = dict(cfg.data.kwargs)
    if callable(obj) and not _is_data_object(obj):
        try:
            inspect.signature(obj).bind(cfg, rng, **kwargs)
        except TypeError as e:
            raise ConfigError(
                "data.kwargs" if kwargs else "data.source",
                f"loader {cfg.data.source!r} cannot be called as loader(cfg, rng"
                f"{', **data.kwargs' if kwargs else ''}): {e}",
            ) from None
        except ValueError:
            pass
        out = obj(cfg, rng, **kwargs)
    else:
        if kwargs:
            raise ConfigError(
                "data.kwargs", f"data.source {cfg.data.source!r} is a data object, not a loader; it takes no kwargs"
            )
        out = obj
    if isinstance(out, FederatedData):
        return out
    return federated_data(out, cfg=cfg, rng=rng, where=f"data.source {cfg.data.source!r}")


def _is_data_object(obj) -> bool:
    return hasattr(obj, "create_tf_dataset_for_client") or isinstance(obj, dict)
