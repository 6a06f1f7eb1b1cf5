"""The TFF execution context: set once per process, with its C++ worker cleaned up.

TFF's local C++ context starts a ``worker_binary`` subprocess and only stops it from a
``__del__`` that often does not run at interpreter exit, leaving an orphan process
that holds a port and the parent's stdout. We stop it ourselves.
"""

from __future__ import annotations

import atexit
import os
import signal

_configured: tuple | None = None


def ensure_context(client_concurrency: int = 0, *, secure: bool = False) -> None:
    """Installs TFF's sync local C++ context (idempotent for the same settings).

    ``client_concurrency``: the most client computations the executor runs at once
    (``max_concurrent_computation_calls``); 0 means no limit.
    ``secure``: the computation uses secure-sum intrinsics. TFF's native runtime refuses
    them; its test runtime compiles them to plain sums (all a simulation can do).
    """
    global _configured
    key = (client_concurrency, secure)
    if _configured == key:
        return
    import tensorflow_federated as tff

    if _configured is not None:
        shutdown()
    limit = client_concurrency if client_concurrency > 0 else -1
    if secure:
        tff.backends.test.set_sync_test_cpp_execution_context(max_concurrent_computation_calls=limit)
    else:
        tff.backends.native.set_sync_local_cpp_execution_context(max_concurrent_computation_calls=limit)
    _configured = key


def worker_pids() -> list[int]:
    """PIDs of TFF worker_binary processes started by this process."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the lock file
        return []
    me = psutil.Process(os.getpid())
    pids = []
    for child in me.children(recursive=True):
        try:
            if "worker_binary" in " ".join(child.cmdline()[:1]) or child.name() == "worker_binary":
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def shutdown() -> None:
    """Stops this process's TFF C++ workers and forgets the context."""
    global _configured
    for pid in worker_pids():
        try:
            # Not reaped here: TFF's own __del__ may still signal and wait() on this pid,
            # which must then find the zombie instead of raising ProcessLookupError.
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _configured = None


atexit.register(shutdown)
