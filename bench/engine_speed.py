"""Round time of the vectorised engine against TFF's runtime (the TFF engine), side by side.

Both engines are built as the training loop builds them and run the SAME rounds (same sampled
clients, same batches), interleaved round by round so that load on a shared machine hits both
alike; the final weights of both are compared (max abs difference). Reported, per task: median
ms/round after 2 warm-up rounds (the first includes tracing), the ratio TFF / vectorised, the
trace (first-round) seconds, and the load average. Then:

- a cohort of ``--cohort`` clients per round on synthetic (vectorised; TFF for ``--tff-cohort-rounds``
  rounds), with the cost per client per round;
- the vectorised engine's memory over ``--soak-rounds`` rounds of digits (RSS every 100 rounds and
  the least-squares slope in MB per 100 rounds, after the first 100);
- the ratio against Flower's round time as recorded in BENCHMARKS.md (table 1, digits), or
  measured with ``--flower`` when ``.venv-flower`` exists (bench/round_time.py builds it).

    .venv/bin/python bench/engine_speed.py                   # everything (~5 min on 2 loaded cores)
    .venv/bin/python bench/engine_speed.py --rounds 30 --soak-rounds 1000 --out bench/results/engine_speed.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

# BENCHMARKS.md, table 1 (digits, 10 clients/round, flwr 1.23, same model/data/batches; load 2-4.7).
FLOWER_RECORDED_S = {"flower (model kept per Ray actor)": 0.418, "flower_per_call (quickstart style)": 1.812}


def build_engines(cfg, data, *, tff: bool = True):
    """(TFF engine or None, vectorised engine, initial weights), built as the loop builds them."""
    import tensorflow as tf

    from tff_lab import models
    from tff_lab.engines import TFFEngine
    from tff_lab.engines.vectorized import VectorizedEngine
    from tff_lab.federated import aggregators, algorithms, runtime
    from tff_lab.models.tff_adapter import data_element_spec, make_model_fn

    spec = models.resolve_model(cfg.model)
    init = models.initial_weights(spec, data.input_shape, data.num_classes, cfg.seed)
    nm = cfg.privacy.noise_multiplier
    vec = VectorizedEngine(
        cfg,
        data,
        model_builder=lambda: spec.build(data.input_shape, data.num_classes),
        loss_builder=spec.make_loss,
        metrics_builder=spec.make_metrics,
        noise_multiplier=nm,
    )
    tff_engine = None
    if tff:
        runtime.ensure_context(cfg.training)
        specs = [tf.TensorSpec(w.shape, tf.as_dtype(w.dtype)) for w in init]
        agg = aggregators.make_aggregator(cfg, population=data.num_clients, noise_multiplier=nm, record_specs=specs)
        model_fn = make_model_fn(spec, data.input_shape, data.num_classes, batch_spec=data_element_spec(data))
        tff_engine = TFFEngine(cfg, algorithms.build_learning_process(cfg, model_fn, agg), data)
    return tff_engine, vec, init


def side_by_side(task: str, rounds: int, extra=(), *, tff: bool = True, log=print) -> dict:
    """Runs ``rounds`` rounds of ``task`` on both engines, interleaved; returns the figures."""
    from tff_lab.data import load_federated_data
    from tff_lab.sampling import sample_clients

    cfg = _common.task_config(task, rounds, extra)
    data = load_federated_data(cfg)
    tff_engine, vec, init = build_engines(cfg, data, tff=tff)
    engines = {"vectorized": vec, **({"tff": tff_engine} if tff_engine else {})}
    states = {k: e.set_model_weights(e.initialize(), init) for k, e in engines.items()}
    secs: dict = {k: [] for k in engines}
    load_before = os.getloadavg()
    for r in range(1, rounds + 1):
        idx = sample_clients(cfg, data.num_clients, r)
        for name in ["tff", "vectorized"] if r % 2 else ["vectorized", "tff"]:  # alternate who goes first
            if name not in engines:
                continue
            t0 = time.perf_counter()
            states[name] = engines[name].next(states[name], r, idx).state
            secs[name].append(time.perf_counter() - t0)
    out = {
        "task": task,
        "clients_per_round": cfg.training.clients_per_round,
        "population": data.num_clients,
        "rounds": rounds,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    for name, s in secs.items():
        st = _common.round_stats(s)
        out[name] = {
            "median_ms": 1000 * st["median_s"],
            "mean_ms": 1000 * st["mean_s"],
            "first_round_s": s[0],
            "rounds_timed": st["rounds_timed"],
        }
    if "tff" in engines:
        out["tff_over_vectorized"] = out["tff"]["median_ms"] / out["vectorized"]["median_ms"]
        w_t = engines["tff"].get_model_weights(states["tff"]).trainable
        w_v = vec.get_model_weights(states["vectorized"]).trainable
        out["max_abs_weight_diff"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(w_t, w_v))
    per_client = out["vectorized"]["median_ms"] / cfg.training.clients_per_round
    out["vectorized"]["ms_per_client"] = per_client
    log(
        f"{task} ({cfg.training.clients_per_round} clients/round): "
        + ", ".join(
            f"{k} {out[k]['median_ms']:.1f} ms/round (first round {out[k]['first_round_s']:.1f} s)" for k in secs
        )
        + (
            f"; TFF / vectorized {out['tff_over_vectorized']:.1f}x; max |w_tff - w_vec| "
            f"{out['max_abs_weight_diff']:.2g}"
            if "tff" in engines
            else ""
        )
        + f"; {_common.load_now()}"
    )
    return out


def memory_slope(rounds: int, log=print) -> dict:
    """The vectorised engine alone over ``rounds`` rounds of digits: RSS every 100 rounds."""
    from tff_lab.data import load_federated_data
    from tff_lab.sampling import sample_clients

    cfg = _common.task_config("digits", rounds)
    data = load_federated_data(cfg)
    _, vec, init = build_engines(cfg, data, tff=False)
    state = vec.set_model_weights(vec.initialize(), init)
    samples = []
    t0 = time.perf_counter()
    for r in range(1, rounds + 1):
        state = vec.next(state, r, sample_clients(cfg, data.num_clients, r)).state
        if r % 100 == 0:
            samples.append((r, _common.self_rss_mb()["main"]))
    wall = time.perf_counter() - t0
    fit = [(r, m) for r, m in samples if r > 100]
    slope = _common.slope_per_100([r for r, _ in fit], [m for _, m in fit])
    log(
        f"memory, vectorized, digits, {rounds} rounds in {wall:.1f} s: RSS MB "
        + ", ".join(f"{r}: {m:.0f}" for r, m in samples)
        + f"; slope {slope:+.3f} MB/100 rounds; {_common.load_now()}"
    )
    return {"rounds": rounds, "rss_mb": samples, "slope_mb_per_100_rounds": slope, "wall_s": wall}


def flower_figures(vectorized_digits_ms: float, measure: bool, rounds: int, log=print) -> dict:
    flower = {k: v for k, v in FLOWER_RECORDED_S.items()}
    source = "recorded in BENCHMARKS.md table 1 (not re-measured)"
    if measure:
        import _flower

        r = _flower.measure_flower("digits", rounds)
        flower = {"flower (model kept per Ray actor)": _common.round_stats(r["round_seconds"])["median_s"]}
        source = "measured now (bench/_flower.py)"
    ratios = {k: vectorized_digits_ms / 1000.0 / v for k, v in flower.items()}
    log(
        "vectorized / Flower on digits ("
        + source
        + "): "
        + ", ".join(f"{k} {v * 1000:.0f} ms -> {ratios[k]:.4f}x" for k, v in flower.items())
    )
    return {"source": source, "flower_s_per_round": flower, "vectorized_over_flower": ratios}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--cohort", type=int, default=1000, help="clients per round of the large-cohort run")
    p.add_argument("--cohort-rounds", type=int, default=8)
    p.add_argument("--tff-cohort-rounds", type=int, default=3, help="0 = do not run TFF on the large cohort")
    p.add_argument("--soak-rounds", type=int, default=1000)
    p.add_argument("--flower", action="store_true", help="measure Flower now (needs .venv-flower)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    result = {"machine": _common.machine_info(), "runs": []}
    digits = side_by_side("digits", args.rounds)
    result["runs"].append(digits)
    result["runs"].append(side_by_side("synthetic", args.rounds))
    cohort = [f"training.clients_per_round={args.cohort}", "data.num_clients=" + str(max(1000, args.cohort))]
    if args.tff_cohort_rounds:
        big = side_by_side("synthetic", args.tff_cohort_rounds, cohort)
        big["note"] = f"TFF and vectorized over {args.tff_cohort_rounds} rounds"
        result["runs"].append(big)
    result["runs"].append(side_by_side("synthetic", args.cohort_rounds, cohort, tff=False))
    result["memory"] = memory_slope(args.soak_rounds)
    result["flower"] = flower_figures(digits["vectorized"]["median_ms"], args.flower, args.rounds)
    if args.out:
        _common.save_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
