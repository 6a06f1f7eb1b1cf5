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
