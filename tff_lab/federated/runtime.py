"""The TFF execution context: TFF's C++ ``worker_binary`` processes, started, watched and stopped by us.

Three shapes, one code path (every context talks gRPC to ``worker_binary`` processes, as TFF's own
local context does):

- ``workers=0``: one local worker and a sync context, exactly what
  ``tff.backends.native.set_sync_local_cpp_execution_context`` builds (same binary, same compiler),
  except that we start the worker, so we can guarantee it dies with us.
- ``workers=N``: N local workers; each round's clients are split over them by
  ``tff.backends.native``'s mergeable-computation context (one async context per worker).
- ``worker_addresses=(host:port, ...)``: the same over workers someone else runs (e.g. pods).

Lifetime: TFF's own local context starts its worker with the parent's stdout and stops it only from a
``__del__`` that often does not run, so it survives the parent (and a SIGKILL of the parent always).
Workers started here get ``PR_SET_PDEATHSIG=SIGKILL`` (the kernel kills them when their parent goes,
however it goes) and are stopped explicitly by :func:`shutdown` (atexit, and the loop's ``finally``).
The death signal follows the *thread* that forked, so every worker is forked from one long-lived
spawner thread, never from a caller's thread that may end first.

Faults: TFF retries a failed remote call forever (``RetryableGRPCError``). Our executor factory
checks its worker before every (re)connection and raises :class:`~tff_lab.errors.WorkerLost`,
which TFF does not retry, when the worker process has exited or the address stays unreachable.
:func:`classify_failure` turns whatever a failed round raised into ``WorkerLost`` (naming the
worker) when a worker is gone; :func:`reset` restarts dead local workers / reconnects remote ones.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any, Optional, Sequence

from tff_lab.errors import ConfigError, WorkerLost

# Set in the environment of every worker we start (value: our pid), so that tests and operators
# can find them even after they were re-parented.
WORKER_ENV_MARKER = "TFF_LAB_WORKER_OF"
STARTUP_TIMEOUT_S = 60.0  # a 300 MB binary on a loaded 2-core machine: ~1 s, rarely 10 s
CONNECT_TIMEOUT_S = 20.0  # how long a remote worker may stay unreachable before the round is lost

_GRPC_OPTIONS = [
    # As TFF's local context (model weights and client data travel in one message).
    ("grpc.max_message_length", 2 * 1000 * 1000 * 1000),
    ("grpc.max_receive_message_length", 2 * 1000 * 1000 * 1000),
    ("grpc.max_send_message_length", 2 * 1000 * 1000 * 1000),
    # gRPC's default reconnect backoff grows to 120 s; a restarted pod should be found in seconds.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

_lock = threading.RLock()
_configured: Optional[tuple] = None
_endpoints: list[_Endpoint] = []
_context: Any = None  # the installed TFF context (TFF's context stack is per thread: see _use)
_spawner: Optional[concurrent.futures.ThreadPoolExecutor] = None


def worker_binary_path() -> str:
    """TFF's C++ executor service in the installed wheel (found without importing TensorFlow)."""
    import importlib.util

    spec = importlib.util.find_spec("tensorflow_federated")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - in the lock file
        raise RuntimeError("tensorflow_federated is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "worker_binary")
    if not os.path.isfile(path):  # pragma: no cover - part of the TFF wheel
        raise RuntimeError(f"TFF's worker_binary is missing: expected it at {path}")
    return path


# --------------------------------------------------------------------------- processes

# Runs in the child before the worker binary: the kernel SIGKILLs the worker when the thread that
# forked it ends (however the parent goes). A tiny Python exec wrapper rather than a preexec_fn: a
# preexec_fn forces fork() (gRPC's fork handlers then log to stderr and can deadlock), a wrapper lets
# subprocess use vfork. Linux only; elsewhere the wrapper just execs.
_DEATH_SIGNAL_WRAPPER = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl: nobody would ever stop this worker
        os._exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _spawn(args: list[str], env: dict, stderr) -> subprocess.Popen:
    """Popen from the one long-lived spawner thread (the death signal follows the forking thread)."""
    import sys

    global _spawner
    with _lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tff-lab-spawner")
        spawner = _spawner
    wrapped = [sys.executable, "-I", "-S", "-c", _DEATH_SIGNAL_WRAPPER, str(os.getpid()), *args]
    return spawner.submit(
        subprocess.Popen, wrapped, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env
    ).result()


class _Endpoint:
    """One TFF worker: its address, its gRPC channel, and (when we started it) its process."""

    def __init__(self, address: Optional[str] = None, *, max_concurrent_calls: int = -1):
        self.local = address is None
        self.max_concurrent_calls = max_concurrent_calls
        self.address = address or ""
        self.proc: Optional[subprocess.Popen] = None
        self._log = None
        self.channel = None
        self.stub = None
        if self.local:
            self._start_local()
        else:
            self._connect(CONNECT_TIMEOUT_S)

    # -- lifecycle
    def _start_local(self) -> None:
        import portpicker

        binary = worker_binary_path()
        env = dict(os.environ)
        env[WORKER_ENV_MARKER] = str(os.getpid())
        last_error = ""
        for _attempt in range(3):  # a picked port can be taken before the worker binds it
            port = portpicker.pick_unused_port()
            self.address = f"localhost:{port}"
            self._log = tempfile.TemporaryFile(prefix="tff-lab-worker-")
            self.proc = _spawn(
                [binary, f"--port={port}", f"--max_concurrent_computation_calls={self.max_concurrent_calls}"],
                env,
                self._log,
            )
            try:
                self._connect(STARTUP_TIMEOUT_S)
                return
            except WorkerLost as e:
                last_error = str(e)
                self.stop()
        raise WorkerLost(f"could not start a TFF worker: {last_error}")

    def _connect(self, timeout_s: float) -> None:
        import grpc
        import tensorflow_federated as tff

        # An old channel is dropped, not closed: TFF's stub polls it from a gRPC thread that raises
        # (and prints) when the channel is closed under it.
        self.channel = grpc.insecure_channel(self.address, _GRPC_OPTIONS)
        self.stub = tff.framework.RemoteExecutorGrpcStub(self.channel)
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        """Returns once the worker accepts connections; raises WorkerLost when it cannot."""
        import grpc

        deadline = time.monotonic() + timeout_s
        ready = grpc.channel_ready_future(self.channel)
        try:
            while True:
                self._raise_if_exited()
                try:
                    ready.result(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                    return
                except grpc.FutureTimeoutError:
                    if time.monotonic() >= deadline:
                        raise self.lost(f"not reachable for {timeout_s:.0f} s") from None
        finally:
            ready.cancel()

    def _raise_if_exited(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise self.lost(f"exited with code {self.proc.returncode}{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            self._log.seek(0)
            lines = [ln for ln in self._log.read().decode(errors="replace").splitlines() if ln.strip()]
        except (AttributeError, OSError, ValueError):
            return ""
        return f" (last log line: {lines[-1].strip()[:200]})" if lines else ""

    def lost(self, why: str) -> WorkerLost:
        pid = f", pid {self.proc.pid}" if self.proc is not None else ""
        err = WorkerLost(f"TFF worker {self.address}{pid} {why}")
        err.address = self.address
        return err

    def healthy(self) -> bool:
        if self.local:
            return self.proc is not None and self.proc.poll() is None
        import grpc

        try:
            grpc.channel_ready_future(self.channel).result(timeout=2.0)
            return True
        except grpc.FutureTimeoutError:
            return False

    def check(self) -> None:
        """Before TFF (re)connects to this worker: raise WorkerLost (which TFF does not retry) if it is gone."""
        self._raise_if_exited()
        if not self.local:
            self.wait_ready(CONNECT_TIMEOUT_S)

    def revive(self) -> None:
        """A dead local worker is started again (new port); a remote one gets a new channel."""
        if self.local:
            if not self.healthy():
                self.stop()
                self._start_local()
        else:
            self._connect(CONNECT_TIMEOUT_S)

    def stop(self) -> None:
        self.channel = self.stub = None  # dropped, not closed (see _connect)
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.kill()
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


# --------------------------------------------------------------------------- contexts


def _executor_factory(endpoint: _Endpoint, default_num_clients: int):
    import tensorflow_federated as tff
    from tensorflow_federated.python.core.impl.types import placements

    def stack_fn(cardinalities):
        if cardinalities.get(placements.CLIENTS) is None:
            cardinalities[placements.CLIENTS] = default_num_clients
        endpoint.check()
        executor = tff.framework.RemoteExecutor(endpoint.stub)
        executor.set_cardinalities(cardinalities)
        return executor

    return tff.framework.ResourceManagingExecutorFactory(stack_fn)


def _compiler(secure: bool):
    from tensorflow_federated.python.core.backends.native import compiler as native_compiler

    if not secure:
        return native_compiler.desugar_and_transform_to_native
    from tensorflow_federated.python.core.backends.test import compiler as test_compiler

    def compile_secure(comp):
        # TFF's native runtime refuses secure-sum intrinsics; its test runtime compiles them to
        # plain sums (all a simulation can do). Same pipeline as set_sync_test_cpp_execution_context.
        plain = test_compiler.replace_secure_intrinsics_with_bodies(comp)
        return native_compiler.desugar_and_transform_to_native(plain)

    return compile_secure


def _install(endpoints: Sequence[_Endpoint], *, secure: bool, mergeable: bool) -> None:
    import tensorflow_federated as tff
    from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

    transforms = dict(transform_args=tff.tensorflow.transform_args, transform_result=tff.tensorflow.transform_result)
    if not mergeable:
        context = tff.framework.SyncExecutionContext(
            _executor_factory(endpoints[0], 0), _compiler(secure), **transforms
        )
    else:
        asyncs = [
            tff.framework.AsyncExecutionContext(_executor_factory(e, 1), _compiler(secure), **transforms)
            for e in endpoints
        ]
        compile_mergeable = None
        if secure:
            from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
            from tensorflow_federated.python.core.backends.test import compiler as test_compiler

            def compile_mergeable(comp):
                plain = test_compiler.replace_secure_intrinsics_with_bodies(comp)
                # The proto round trip drops the result's Python containers (LearningProcessOutput):
                # restore the original signature, which the mergeable compiler carries to the result.
                proto = tff.framework.ConcreteComputation.get_proto(plain)
                plain = tff.framework.ConcreteComputation(
                    computation_proto=proto,
                    context_stack=context_stack_impl.context_stack,
                    annotated_type=comp.type_signature,
                )
                return mergeable_comp_compiler.compile_to_mergeable_comp_form(plain)

        context = (
            tff.backends.native.create_mergeable_comp_execution_context(asyncs)
            if compile_mergeable is None
            else tff.framework.MergeableCompExecutionContext(asyncs, compiler_fn=compile_mergeable)
        )
    _retire(_context)
    _use(context)


def _use(context) -> None:
    """Makes ``context`` the calling thread's default (TFF's context stack is thread-local)."""
    global _context
    from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

    _context = context
    if context is not None and context_stack_impl.context_stack.current is not context:
        context_stack_impl.context_stack.set_default_context(context)


def _retire(context) -> None:
    """A replaced context may still hold the tasks of a round that failed on a lost worker: their
    errors are known (the round was classified and retried), so asyncio must not print them later."""
    runner = getattr(context, "_async_runner", None)
    loop = getattr(runner, "_event_loop", None)
    if loop is not None:
        loop.set_exception_handler(lambda loop, ctx: None)


def _settings(training: Any, secure: bool, workers: Optional[int], worker_addresses) -> tuple:
    if training is None or isinstance(training, int):
        concurrency = int(training or 0)
    else:  # a TrainingConfig (or anything with its fields)
        concurrency = int(getattr(training, "client_concurrency", 0) or 0)
        workers = getattr(training, "workers", 0) if workers is None else workers
        worker_addresses = getattr(training, "worker_addresses", ()) if worker_addresses is None else worker_addresses
    workers = int(workers or 0)
    addresses = tuple(worker_addresses or ())
    if workers < 0:
        raise ConfigError("training.workers", f"expected an integer >= 0, got {workers}")
    if workers and addresses:
        raise ConfigError("training.worker_addresses", "give training.workers or training.worker_addresses, not both")
    return concurrency, bool(secure), workers, addresses


def ensure_context(
    training: Any = 0,
    *,
    secure: bool = False,
    workers: Optional[int] = None,
    worker_addresses: Optional[Sequence[str]] = None,
) -> None:
    """Installs the TFF execution context (idempotent for the same settings; dead local workers restarted).

    Args:
      training: a ``TrainingConfig`` (``client_concurrency``, ``workers``, ``worker_addresses`` are
        read from it) or, as before, the client concurrency as an int.
      secure: the computation uses secure-sum intrinsics (compiled to plain sums, as TFF's test runtime).
      workers: 0 = one local worker (TFF's local context); N = N local workers, each round's clients
        split over them. Overrides ``training.workers``.
      worker_addresses: ``host:port`` of running TFF workers. Overrides ``training.worker_addresses``.

    ``client_concurrency``: the most client computations a worker runs at once
    (``--max_concurrent_computation_calls``); 0 = no limit. For remote workers it is the workers' own flag.

    Raises:
      WorkerLost: a worker did not start or a remote address is not reachable.
    """
    global _configured
    key = _settings(training, secure, workers, worker_addresses)
    concurrency, secure, n_workers, addresses = key
    with _lock:
        if _configured == key and all(e.healthy() for e in _endpoints if e.local):
            _use(_context)  # this thread may not have it yet
            return
        if _configured is not None:
            shutdown()
        limit = concurrency if concurrency > 0 else -1
        try:
            if addresses:
                _endpoints.extend(_Endpoint(a) for a in addresses)
            else:
                # Started one after another: on a small machine parallel starts only compete for the disk.
                for _ in range(max(1, n_workers)):
                    _endpoints.append(_Endpoint(max_concurrent_calls=limit))
            _install(_endpoints, secure=secure, mergeable=bool(addresses) or n_workers > 0)
        except BaseException:
            shutdown()
            raise
        _configured = key


def addresses() -> list[str]:
    """``host:port`` of the workers of the installed context."""
    return [e.address for e in _endpoints]


def classify_failure(exc: BaseException) -> BaseException:
    """What a failed round raised -> :class:`WorkerLost` (naming the worker) when a worker is gone, else ``exc``.

    Use: ``except Exception as e: raise runtime.classify_failure(e)``; on ``WorkerLost`` call
    :func:`reset` and resume from the last checkpoint (the round did not happen)."""
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:  # our factory's own WorkerLost, possibly wrapped
        if isinstance(e, WorkerLost):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    with _lock:
        endpoints = list(_endpoints)
    for endpoint in endpoints:
        if endpoint.local and not endpoint.healthy():
            try:
                endpoint.check()
            except WorkerLost as lost:
                lost.__cause__ = exc
                return lost
    if _is_connection_error(exc):
        for endpoint in endpoints:
            if not endpoint.healthy():
                lost = endpoint.lost("is not reachable")
                lost.__cause__ = exc
                return lost
        lost = WorkerLost(f"a TFF worker connection failed: {exc}".splitlines()[0][:300])
        lost.address = None
        lost.__cause__ = exc
        return lost
    return exc


def _is_connection_error(exc: BaseException) -> bool:
    try:
        import grpc
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        try:
            return exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        except Exception:  # noqa: BLE001 - a half-built call object
            return False
    return False


def reset() -> None:
    """Rebuilds the context after a lost worker: dead local workers are restarted, remote ones reconnected.

    Raises WorkerLost when a worker still cannot be reached."""
    with _lock:
        if _configured is None:
            return
        _, secure, n_workers, addresses_ = _configured
        try:
            for endpoint in _endpoints:
                endpoint.revive()
            _install(_endpoints, secure=secure, mergeable=bool(addresses_) or n_workers > 0)
        except BaseException:
            shutdown()
            raise


def worker_pids() -> list[int]:
    """PIDs of TFF worker_binary processes of this process: the ones we started and any TFF started itself."""
    pids = [e.pid for e in _endpoints if e.pid is not None]
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the lock file
        return pids
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if child.pid not in pids and (
                child.name() == "worker_binary" or "worker_binary" in " ".join(child.cmdline()[:1])
            ):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def shutdown() -> None:
    """Stops every worker this process started (and any worker_binary TFF started) and forgets the context."""
    global _configured, _context
    with _lock:
        mine = {e.pid for e in _endpoints}
        for endpoint in _endpoints:
            endpoint.stop()
        _endpoints.clear()
        for pid in worker_pids():
            if pid in mine:  # pragma: no cover - stopped above
                continue
            try:
                # A worker of TFF's own local context (a user set it): not reaped here, TFF's __del__
                # may still signal and wait() on this pid, which must then find the zombie.
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _configured = None
        _retire(_context)
        _context = None


atexit.register(shutdown)
