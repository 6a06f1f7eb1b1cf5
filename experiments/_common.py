"""Small helpers shared by the experiment scripts (tables and plots of summaries)."""

from __future__ import annotations

import csv
from pathlib import Path


def write_table(rows: list[dict], columns: list[str], out_dir: Path, stem: str) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = "\n".join(md) + "\n"
    (out_dir / f"{stem}.md").write_text(text)
    return text


def plot_lines(
    series: dict, path: Path, *, xlabel: str, ylabel: str, title: str, logx: bool = False, marker: str = "o"
) -> Path:
    """One line per series ({label: [(x, y), ...]}) saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in series.items():
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
