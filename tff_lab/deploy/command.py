"""``tff-lab k8s render`` (kustomize manifests) and ``tff-lab sweep`` (one experiment of a grid)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    k8s = subparsers.add_parser("k8s", help="Kubernetes manifests (kustomize base + overlays)",
                                description="Kubernetes manifests for the MWMS trainer and for sweeps.")
    k8s_sub = k8s.add_subparsers(dest="k8s_command", metavar="K8S_COMMAND")
    k8s_sub.required = True
    r = k8s_sub.add_parser(
        "render", help="render k8s/ (base + overlays gpu, cpu, tfjob, sweep) from an experiment",
        description="Renders the kustomize tree from the kubernetes client's models: base/ (ConfigMap with "
                    "the experiment, PVC, headless Service, Indexed Job of N MWMS workers) and overlays/ "
                    "(gpu, cpu, tfjob, sweep). With --out DIR the tree is written there; without it, the "
                    "objects of one overlay (--overlay, default gpu) are printed as YAML.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("experiment", help="experiment YAML, stored in the ConfigMap the pods read")
    r.add_argument("--workers", type=int, default=2, help="MWMS workers (Indexed Job completions = parallelism)")
    r.add_argument("--gpus-per-worker", type=int, default=1, help="nvidia.com/gpu limit per worker (0: none)")
    r.add_argument("--image", default=None, help="trainer image, pinned tag or digest (required)")
    r.add_argument("--sweep", default=None, metavar="GRID", help="sweep grid YAML for the sweep overlay")
    r.add_argument("--overlay", action="append", default=None, metavar="NAME",
                   help="overlay(s) to render: gpu, cpu, tfjob, sweep (repeatable; default: all)")
    r.add_argument("--name", default="tff-lab", help="name prefix of the objects")
    r.add_argument("--cpu", default="4", help="CPU request and limit per worker")
    r.add_argument("--memory", default="16Gi", help="memory request and limit per worker")
    r.add_argument("--storage", default="20Gi", help="size of the artifacts/checkpoints volume")
    r.add_argument("--out", default=None, help="write the kustomize tree here (e.g. k8s)")
    r.set_defaults(func=_render)

    s = subparsers.add_parser(
        "sweep", help="run one experiment of a sweep grid (index from JOB_COMPLETION_INDEX)",
        description="Runs the N-th experiment of a sweep grid with tff_lab.run_experiment into "
                    "OUT/<sweep name>/<NNN>-<point>. In an Indexed Job N comes from JOB_COMPLETION_INDEX. "
                    "--list prints every point's overrides instead.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("grid", help="sweep grid YAML")
    s.add_argument("--index", type=int, default=None, help="experiment index (default: $JOB_COMPLETION_INDEX)")
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
    p = render.RenderParams(experiment_name=cfg.name, experiment_yaml=experiment_text, workers=args.workers,
                            gpus_per_worker=args.gpus_per_worker, image=args.image or "", sweep_yaml=sweep_yaml,
                            sweep_points=points, name=args.name, cpu=args.cpu, memory=args.memory,
                            storage=args.storage)
    p.validate()
    return p


def _render(args) -> int:
    from tff_lab.deploy import render
    from tff_lab.errors import ConfigError

    for o in args.overlay or ():
        if o not in render.OVERLAYS:
            raise ConfigError("--overlay", f"unknown overlay {o!r}; expected one of: {', '.join(render.OVERLAYS)}")
    overlays = tuple(args.overlay) if args.overlay else tuple(
        o for o in render.OVERLAYS if o != "sweep" or args.sweep)
    p = _params(args, overlays)
    if args.out is None:
        if len(overlays) > 1 and args.overlay:
            raise ConfigError("--overlay", "without --out, give one overlay to print")
        print(render._dump(render.render_overlay(p, overlays[0] if args.overlay else "gpu")), end="")
        return 0
    cmd = "tff-lab k8s render " + " ".join(_quote(a) for a in _argv_for_header(args)) + " --out DIR"
    paths = render.write_tree(p, args.out, overlays, command=cmd)
    print(f"wrote {len(paths)} files under {args.out}: base/ and overlays/{{{','.join(overlays)}}}; "
          f"apply with: kubectl apply -k {args.out}/overlays/{overlays[0]}", file=sys.stderr)
    return 0


def _argv_for_header(args) -> list[str]:
    out = [args.experiment, "--workers", str(args.workers), "--gpus-per-worker", str(args.gpus_per_worker),
           "--image", args.image or ""]
    if args.sweep:
        out += ["--sweep", args.sweep]
    for o in args.overlay or ():
        out += ["--overlay", o]
    for flag, value, default in (("--name", args.name, "tff-lab"), ("--cpu", args.cpu, "4"),
                                 ("--memory", args.memory, "16Gi"), ("--storage", args.storage, "20Gi")):
        if value != default:
            out += [flag, value]
    return out  # --out is left out: the tree is the same wherever it is written


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _sweep(args) -> int:
    from tff_lab.deploy.sweep import index_from_env, load_sweep, run_sweep_point

    sweep = load_sweep(args.grid)
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
    print(json.dumps({"sweep": sweep.name, "index": index, "of": len(sweep), "run": sweep.run_name(index),
                      **{k: summary[k] for k in ("rounds", "final_test_accuracy") if k in summary}}))
    return 0
