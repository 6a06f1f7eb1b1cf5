"""``tff-lab worker``: one TFF worker (TFF's C++ executor service) for ``training.worker_addresses``.

The process becomes TFF's ``worker_binary`` (exec, no Python left in between), so signals, exit
codes and logs are the binary's own: what a Kubernetes pod or a systemd unit should run.
"""

from __future__ import annotations

import os

from tff_lab.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("worker", help="serve one TFF worker on a port (use its host:port in training.worker_addresses)",
                       description="Runs TFF's C++ executor service (worker_binary, insecure gRPC) on --port. "
                                   "A run uses it with --set training.worker_addresses=[HOST:PORT,...].")
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on (all interfaces)")
    p.add_argument("--max-concurrent-calls", type=int, default=-1, metavar="N",
                   help="the most client computations run at once (default: no limit)")
    p.set_defaults(func=_worker)


def _worker(args) -> int:
    if not 1 <= args.port <= 65535:
        raise ConfigError("--port", f"expected a TCP port 1..65535, got {args.port}")
    if args.max_concurrent_calls == 0 or args.max_concurrent_calls < -1:
        raise ConfigError("--max-concurrent-calls", f"expected a positive integer (or -1: no limit), "
                          f"got {args.max_concurrent_calls}")
    from tff_lab.federated.runtime import worker_binary_path

    binary = worker_binary_path()
    os.execv(binary, [binary, f"--port={args.port}", f"--max_concurrent_computation_calls={args.max_concurrent_calls}"])
    return 0  # pragma: no cover - execv does not return
