"""Per-client statistics: sizes, label histograms and a heterogeneity summary."""

from __future__ import annotations

import numpy as np

from tff_lab.data.sources import FederatedData


def client_stats(data: FederatedData) -> dict:
    """Per-client train/eval sizes and label histograms, plus population-level skew measures.

    ``mean_tv_distance`` is the average total-variation distance between a client's label
    distribution and the population's (0 = IID, 1 = disjoint labels).
    """
    k = data.num_classes
    global_hist = np.zeros(k)
    rows = []
    for cid in data.client_ids:
        y = data.train[cid][1]
        hist = np.bincount(np.asarray(y).reshape(-1), minlength=k)  # sequences: per-token labels
        global_hist += hist
        rows.append(
            {
                "client_id": cid,
                "train_examples": int(len(y)),
                "eval_examples": int(len(data.eval[cid][1])),
                "label_histogram": hist.astype(int).tolist(),
            }
        )
    p_global = global_hist / max(global_hist.sum(), 1)
    tvs = []
    for r in rows:
        h = np.asarray(r["label_histogram"], float)
        p = h / max(h.sum(), 1)
        r["tv_distance"] = float(0.5 * np.abs(p - p_global).sum())
        tvs.append(r["tv_distance"])
    sizes = np.array([r["train_examples"] for r in rows])
    return {
        "num_clients": data.num_clients,
        "num_classes": k,
        "train_examples": int(sizes.sum()),
        "test_examples": int(len(data.test[1])),
        "examples_per_client": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "max": int(sizes.max()),
            "mean": float(sizes.mean()),
        },
        "mean_tv_distance": float(np.mean(tvs)),
        "clients": rows,
    }
