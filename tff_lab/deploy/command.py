"""``tff-lab k8s render`` (kustomize manifests), ``tff-lab k8s wait`` (the federated driver's init
container), ``tff-lab tff-worker`` (a TFF worker pod) and ``tff-lab sweep`` (one experiment of a grid)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tff_lab.inputs import INT32_MAX, float_in, int_in

MAX_WORKERS = 10_000  # pods of one Job/StatefulSet
MAX_GPUS_PER_POD = 64
MAX_WAIT_SECONDS = 7 * 24 * 3600.0


def _quantity(kind: str):
    """argparse type: a Kubernetes quantity checked by render.check_quantity (the kubernetes
    client's parse_quantity); argparse names the flag in the error."""

    def parse(text: str) -> str:
        from tff_lab.deploy.render import check_quantity
        from tff_lab.errors import ConfigError

        try:
            return check_quantity(text, "", kind)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(e.message) from None

    parse.__name__ = f"{kind} quantity"
    return parse


def register(subparsers) -> None:
    k8s = subparsers.add_parser(
        "k8s",
        help="Kubernetes manifests (kustomize base + overlays)",
        description="Kubernetes manifests for the MWMS trainer, sweeps and TFF workers.",
    )
    k8s_sub = k8s.add_subparsers(dest="k8s_command", metavar="K8S_COMMAND")
    k8s_sub.required = True
    r = k8s_sub.add_parser(
        "render",
        help="render k8s/ (base + overlays gpu, cpu, tfjob, sweep, federated, predict) from an experiment",
        description="Renders the kustomize tree from the kubernetes client's models: base/ (ConfigMap with "
        "the experiment, PVC, headless Service, Indexed Job of N MWMS workers, NetworkPolicy) and "
        "overlays/ (gpu, cpu, tfjob, sweep, federated: a StatefulSet of TFF workers and a "
        "driver Job running `tff-lab run` against them, and predict: an Indexed Job of prediction "
        "shards and a merge Job). Every object goes to --namespace. "
        "With --out DIR the tree is written there; without it, the objects of one overlay "
        "(--overlay, default gpu) are printed as YAML. Pin the image by digest "
        "(REPO:TAG@sha256:DIGEST): every pod then runs the same bytes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("experiment", help="experiment YAML, stored in the ConfigMap the pods read")
    r.add_argument(
        "--workers", type=int_in(1, MAX_WORKERS), default=2, help="MWMS workers (Indexed Job completions = parallelism)"
    )
    r.add_argument(
        "--gpus-per-worker",
        type=int_in(0, MAX_GPUS_PER_POD),
        default=1,
        help="nvidia.com/gpu limit per worker (0: none)",
    )
    r.add_argument(
        "--image",
        default=None,
        help="image built from Dockerfile.gpu (required): REPO:TAG@sha256:DIGEST (pulled IfNotPresent) "
        "or REPO:TAG (pulled Always)",
    )
    r.add_argument("--sweep", default=None, metavar="GRID", help="sweep grid YAML for the sweep overlay")
    r.add_argument(
        "--tff-workers", type=int_in(1, MAX_WORKERS), default=2, help="TFF worker pods of the federated overlay"
    )
    r.add_argument(
        "--tff-worker-gpus",
        type=int_in(0, MAX_GPUS_PER_POD),
        default=0,
        help="nvidia.com/gpu limit per TFF worker (0: none)",
    )
    r.add_argument(
        "--predict-shards",
        type=int_in(1, MAX_WORKERS),
        default=4,
        help="predict overlay: shards of the input (Indexed Job completions)",
    )
    r.add_argument(
        "--predict-parallelism", type=int_in(1, MAX_WORKERS), default=4, help="predict overlay: shards running at once"
    )
    r.add_argument(
        "--predict-model",
        default=None,
        help="predict overlay: model under /artifacts (default: the MWMS run's model/model.keras)",
    )
    r.add_argument(
        "--predict-input", default="/artifacts/predict/input.npy", help="predict overlay: input under /artifacts"
    )
    r.add_argument(
        "--predict-batch-size",
        type=int_in(1, 1 << 20),
        default=1024,
        help="predict overlay: --batch-size of every shard (measure it with `tff-lab predict --max-latency-ms`)",
    )
    r.add_argument(
        "--overlay",
        action="append",
        default=None,
        metavar="NAME",
        help="overlay(s) to render: gpu, cpu, tfjob, sweep, federated, predict (repeatable; default: "
        "all, sweep only with --sweep)",
    )
    r.add_argument("--name", default="tff-lab", help="name prefix of the objects")
    r.add_argument("--namespace", default="tff-lab", help="namespace of every object (kustomize namespace:)")
    r.add_argument("--cpu", default="4", type=_quantity("cpu"), help="CPU request and limit per worker (MWMS and TFF)")
    r.add_argument(
        "--memory", default="16Gi", type=_quantity("memory"), help="memory request and limit per worker (MWMS and TFF)"
    )
    r.add_argument(
        "--storage", default="20Gi", type=_quantity("storage"), help="size of the artifacts/checkpoints volume"
    )
    r.add_argument("--out", default=None, help="write the kustomize tree here (e.g. k8s)")
    r.set_defaults(func=_render)

    w = k8s_sub.add_parser(
        "wait",
        help="wait until every HOST:PORT accepts TCP connections (the federated driver's init container)",
        description="Returns 0 once every HOST:PORT accepts a TCP connection; exits 1 naming the ones that "
        "did not within --timeout seconds. The federated overlay's driver runs it before `tff-lab run`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    w.add_argument("addresses", nargs="+", metavar="HOST:PORT")
    w.add_argument(
        "--timeout", type=float_in(0.0, MAX_WAIT_SECONDS, lo_open=True), default=900.0, help="seconds to wait in total"
    )
    w.set_defaults(func=_wait)

    t = subparsers.add_parser(
        "tff-worker",
        help="run TFF's executor service (worker_binary) in the foreground: a TFF worker pod",
        description="Replaces this process with TensorFlow Federated's C++ executor service "
        "(tensorflow_federated/data/worker_binary, insecure gRPC) listening on --port; as a "
        "container's PID 1 it runs the binary as its child instead and forwards SIGTERM/SIGINT "
        "(exit 143 after SIGTERM). The federated "
        "overlay's StatefulSet runs it; `tff-lab run --set training.worker_addresses=[HOST:PORT,...]` "
        "drives it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--port", type=int_in(1, 65535), default=8000, help="gRPC port")
    t.add_argument(
        "--max-concurrent-computation-calls",
        type=int_in(-1, INT32_MAX),
        default=-1,
        help="worker_binary's limit on parallel calls of one computation (0 or -1: none)",
    )
    t.set_defaults(func=_tff_worker)

    s = subparsers.add_parser(
        "sweep",
        help="run one experiment of a sweep grid (index from JOB_COMPLETION_INDEX)",
        description="Runs the N-th experiment of a sweep grid with tff_lab.run_experiment into "
        "OUT/<sweep name>/<NNN>-<point>. In an Indexed Job N comes from JOB_COMPLETION_INDEX. "
        "--list prints every point's overrides instead.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("grid", help="sweep grid YAML")
    s.add_argument(
        "--index", type=int_in(0, INT32_MAX), default=None, help="experiment index (default: $JOB_COMPLETION_INDEX)"
    )
    s.add_argument("--out", default="runs/sweeps", help="output root")
    s.add_argument("--list", action="store_true", help="print the override sets and exit")
    s.set_defaults(func=_sweep)


def _params(args, overlays):
    from tff_lab.config import load_config, read_yaml
    from tff_lab.deploy import render
    from tff_lab.deploy.sweep import load_sweep
    from tff_lab.errors import ConfigError

    cfg = load_config(args.experiment)  # validated here; the ConfigMap keeps the file as written
    experiment_text = Path(args.experiment).read_text()
    sweep_yaml, points = None, 0
    if args.sweep:
        sweep = load_sweep(args.sweep, default_base=read_yaml(args.experiment))
        sweep_yaml, points = sweep.dump(), len(sweep)
    elif "sweep" in overlays and args.overlay:
        raise ConfigError("--sweep", "the sweep overlay needs a sweep grid (--sweep GRID.yaml)")
    p = render.RenderParams(
        experiment_name=cfg.name,
        experiment_yaml=experiment_text,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        image=args.image or "",
        sweep_yaml=sweep_yaml,
        sweep_points=points,
        name=args.name,
        cpu=args.cpu,
        memory=args.memory,
        storage=args.storage,
        namespace=args.namespace,
        tff_workers=args.tff_workers,
        tff_worker_gpus=args.tff_worker_gpus,
        predict_shards=args.predict_shards,
        predict_parallelism=args.predict_parallelism,
        predict_model=args.predict_model or "",
        predict_input=args.predict_input,
        predict_batch_size=args.predict_batch_size,
    )
    p.validate()
    if "federated" in overlays:
        # The driver's exact override, checked now rather than in a pod (e.g. training.workers is set).
        load_config(args.experiment, overrides=[render.driver_command(p)[1][-1]])
    return p


def _render(args) -> int:
    from tff_lab.deploy import render
    from tff_lab.errors import ConfigError

    for o in args.overlay or ():
        if o not in render.OVERLAYS:
            raise ConfigError("--overlay", f"unknown overlay {o!r}; expected one of: {', '.join(render.OVERLAYS)}")
    overlays = tuple(args.overlay) if args.overlay else tuple(o for o in render.OVERLAYS if o != "sweep" or args.sweep)
    if args.out is not None:
        from tff_lab.inputs import check_output_dir

        check_output_dir(args.out, "--out")  # writable, before any work
    p = _params(args, overlays)
    if not render.has_digest(p.image):
        print(
            f"tff-lab: note: --image {p.image} has no digest; pods pull it Always. Pin it as "
            "REPO:TAG@sha256:DIGEST so every pod runs the same image (see README).",
            file=sys.stderr,
        )
    if args.out is None:
        if len(overlays) > 1 and args.overlay:
            raise ConfigError("--overlay", "without --out, give one overlay to print")
        print(render._dump(render.render_overlay(p, overlays[0] if args.overlay else "gpu")), end="")
        return 0
    cmd = "tff-lab k8s render " + " ".join(_quote(a) for a in _argv_for_header(args)) + " --out DIR"
    from tff_lab import run_dir

    with run_dir.own(args.out, kind="k8s", where="--out") as owner:
        if not owner.is_empty() and not owner.is_ours():
            raise ConfigError(
                "--out",
                f"{args.out} is not empty and holds no tree of `tff-lab k8s render`; it is "
                "never overwritten: choose a new directory",
            )
        paths = render.write_tree(p, args.out, overlays, command=cmd)  # its headers mark it as ours
    print(
        f"wrote {len(paths)} files under {args.out}: base/ and overlays/{{{','.join(overlays)}}}; "
        f"apply with: kubectl apply -k {args.out}/overlays/{overlays[0]}",
        file=sys.stderr,
    )
    return 0


def _argv_for_header(args) -> list[str]:
    out = [
        args.experiment,
        "--workers",
        str(args.workers),
        "--gpus-per-worker",
        str(args.gpus_per_worker),
        "--image",
        args.image or "",
    ]
    if args.sweep:
        out += ["--sweep", args.sweep]
    out += ["--tff-workers", str(args.tff_workers)]
    if args.tff_worker_gpus:
        out += ["--tff-worker-gpus", str(args.tff_worker_gpus)]
    for o in args.overlay or ():
        out += ["--overlay", o]
    for flag, value, default in (
        ("--name", args.name, "tff-lab"),
        ("--namespace", args.namespace, "tff-lab"),
        ("--cpu", args.cpu, "4"),
        ("--memory", args.memory, "16Gi"),
        ("--storage", args.storage, "20Gi"),
        ("--predict-shards", str(args.predict_shards), "4"),
        ("--predict-parallelism", str(args.predict_parallelism), "4"),
        ("--predict-model", args.predict_model or "", ""),
        ("--predict-input", args.predict_input, "/artifacts/predict/input.npy"),
        ("--predict-batch-size", str(args.predict_batch_size), "1024"),
    ):
        if value != default:
            out += [flag, value]
    return out  # --out is left out: the tree is the same wherever it is written


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _split_address(addr: str) -> tuple[str, int]:
    from tff_lab.errors import ConfigError

    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("HOST:PORT", f"expected host:port, got {addr!r}")
    return host, int(port)


def _wait(args) -> int:
    import socket

    pending = {a: _split_address(a) for a in args.addresses}
    deadline = time.monotonic() + args.timeout
    while True:
        for addr, (host, port) in list(pending.items()):
            try:
                socket.create_connection((host, port), timeout=2.0).close()
                del pending[addr]
                print(f"tff-lab: {addr} accepts connections", file=sys.stderr)
            except OSError:  # not resolvable yet (not Ready), refused, timed out
                pass
        if not pending:
            return 0
        if time.monotonic() >= deadline:
            print(f"tff-lab: error: not reachable after {args.timeout:.0f} s: {', '.join(pending)}", file=sys.stderr)
            return 1
        time.sleep(1.0)


def tff_worker_binary() -> str:
    """TFF's worker_binary, found without importing TensorFlow Federated (a pod starts in < 1 s)."""
    import importlib.util

    spec = importlib.util.find_spec("tensorflow_federated")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tensorflow_federated is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "worker_binary")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"TFF's worker_binary is missing: expected it at {path}")
    return path


def _tff_worker(args) -> int:
    from tff_lab.errors import ConfigError

    if not 0 < args.port < 65536:
        raise ConfigError("--port", f"expected a port in 1..65535, got {args.port}")
    binary = tff_worker_binary()
    argv = [
        binary,
        f"--port={args.port}",
        f"--max_concurrent_computation_calls={args.max_concurrent_computation_calls}",
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.getpid() != 1:
        # exec: the worker itself gets the signals (a local process, or a pod with an init process).
        os.execv(binary, argv)
    # PID 1 of a container (a pod without an init process): the kernel delivers PID 1 no signal it has
    # no handler for, and worker_binary installs none, so an exec'd worker ignored the kubelet's SIGTERM
    # until the grace period ended in SIGKILL (exit 137; seen with the image under podman). Supervise
    # it instead: forward SIGTERM/SIGINT to it and exit with its status (143 after SIGTERM).
    import signal
    import subprocess

    proc = subprocess.Popen(argv)

    def forward(signum, _frame):
        proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = proc.wait()
    return 128 - code if code < 0 else code


def _sweep(args) -> int:
    from tff_lab.deploy.sweep import index_from_env, load_sweep, run_sweep_point

    sweep = load_sweep(args.grid)
    if not args.list:
        from tff_lab.inputs import check_output_dir

        check_output_dir(args.out, "--out")  # writable, before TensorFlow starts
    if args.list:
        for i in range(len(sweep)):
            print(f"{i}\t{sweep.run_name(i)}\t{' '.join(sweep.overrides(i))}")
        return 0
    index = args.index if args.index is not None else index_from_env()
    if index < 0:
        from tff_lab.errors import ConfigError

        raise ConfigError("--index", f"expected an integer >= 0, got {index}")
    sweep.point(index)  # range check before TensorFlow starts
    summary = run_sweep_point(sweep, index, args.out)
    print(
        json.dumps(
            {
                "sweep": sweep.name,
                "index": index,
                "of": len(sweep),
                "run": sweep.run_name(index),
                **{k: summary[k] for k in ("rounds", "final_test_accuracy") if k in summary},
            }
        )
    )
    return 0
