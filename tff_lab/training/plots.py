"""PNG plots of a run: accuracy and loss vs round, per-client data heterogeneity."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from tff_lab.fileio import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def plot_curves(rows: list[dict], out_dir: Path, *, centralized_accuracy=None, title: str = "") -> list[Path]:
    plt = _plt()
    paths = []
    rounds = [r["round"] for r in rows]
    for metric in ("accuracy", "loss"):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(rounds, [r.get(f"train_{metric}") for r in rows], label=f"train {metric} (sampled clients)", alpha=0.7)
        ev = [(r["round"], r[f"eval_{metric}"]) for r in rows if r.get(f"eval_{metric}") is not None]
        if ev:
            ax.plot(*zip(*ev), marker="o", label=f"global test {metric}")
        if metric == "accuracy" and centralized_accuracy is not None:
            ax.axhline(centralized_accuracy, color="gray", linestyle="--", label="centralized baseline")
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.set_title(f"{title} {metric} vs round".strip())
        ax.grid(alpha=0.3)
        ax.legend()
        p = out_dir / f"{metric}.png"
        _save(fig, p)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_heterogeneity(stats: dict, labels: list[str], out_path: Path) -> Path:
    """Stacked bars: each client's label histogram (bar height = its training examples)."""
    plt = _plt()
    clients = stats["clients"]
    hist = np.array([c["label_histogram"] for c in clients], float)
    max_bars = 100
    if len(clients) > max_bars:  # large populations: the largest clients
        order = np.argsort(-hist.sum(1))[:max_bars]
        hist = hist[np.sort(order)]
    fig, ax = plt.subplots(figsize=(max(6, len(hist) * 0.25), 4))
    bottom = np.zeros(len(hist))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    for k in range(hist.shape[1]):
        ax.bar(np.arange(len(hist)), hist[:, k], bottom=bottom, color=cmap(k % cmap.N), label=labels[k], width=0.85)
        bottom += hist[:, k]
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("client")
    ax.set_ylabel("training examples")
    ax.set_title(f"label distribution per client (mean TV distance {stats['mean_tv_distance']:.2f})")
    if len(labels) <= 20:
        ax.legend(title="label", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=7)
    _save(fig, out_path)
    plt.close(fig)
    return out_path
