"""Per-round cost of the SecAgg protocol in ``metrics.csv`` and ``plots/secagg.png``.

Columns (beside the communication hook's ``uplink_bytes``/``downlink_bytes``, which count the
model as the ``secure`` kind would):

- ``secagg_<step>_sent_bytes`` / ``secagg_<step>_received_bytes`` for each protocol step
  (advertise_keys, share_keys, masked_input, unmasking): bytes per client, the mean over the
  clients that took part in that step (serialised messages, counted as they were sent);
- ``secagg_client_seconds`` (mean over clients of each one's compute time, all steps) and
  ``secagg_client_seconds_max``, ``secagg_server_seconds``;
- ``secagg_included`` (clients whose inputs are in the sum), ``secagg_dropped``, ``secagg_neighbors``
  (k), ``secagg_threshold`` (t), ``secagg_aborted`` (1: the round failed and was not applied).
"""

from __future__ import annotations

import numpy as np

from tff_lab.aggregation.secagg.protocol import STEPS
from tff_lab.training.hooks import RoundHook


def round_columns(m: dict) -> dict:
    """Columns of one round from the engine's ``aggregator/secagg`` measurements."""
    sent, recv = np.asarray(m["sent"]), np.asarray(m["received"])
    row = {}
    for j, step in enumerate(STEPS):
        took_part = (sent[:, j] > 0) | (recv[:, j] > 0)
        k = max(1, int(took_part.sum()))
        row[f"secagg_{step}_sent_bytes"] = round(float(sent[took_part, j].sum()) / k, 1)
        row[f"secagg_{step}_received_bytes"] = round(float(recv[took_part, j].sum()) / k, 1)
    secs = np.asarray(m["client_seconds"])
    row["secagg_client_seconds"] = round(float(secs.mean()), 5) if secs.size else 0.0
    row["secagg_client_seconds_max"] = round(float(secs.max()), 5) if secs.size else 0.0
    row["secagg_server_seconds"] = round(float(m["server_seconds"]), 5)
    row["secagg_included"] = int(m["included"])
    row["secagg_dropped"] = int(m["dropped_after_share_keys"]) + int(m["dropped_after_masked_input"])
    row["secagg_neighbors"] = int(m["neighbors"])
    row["secagg_threshold"] = int(m["threshold"])
    return row


class SecAggHook(RoundHook):
    name = "secagg"

    def __init__(self):
        self.history: list = []  # per round: the columns (for the plot and the summary)
        self.aborted = 0

    def after_round(self, ctx, info, row: dict) -> None:
        m = (info.tff_metrics or {}).get("aggregator", {}).get("secagg") if info.trained else None
        aborted = bool(row.pop("_secagg_aborted", None))
        cols = round_columns(m) if m is not None else {}
        cols["secagg_aborted"] = int(aborted)
        self.aborted += int(aborted)
        row.update(cols)
        self.history.append({"round": info.round_num, **cols})

    def progress_fields(self) -> dict:
        return {"secagg_aborted": str(self.aborted)} if self.aborted else {}

    def state_dict(self) -> dict:
        return {"history": self.history, "aborted": self.aborted}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", [])) if state else []
        self.aborted = int(state.get("aborted", 0)) if state else 0

    def on_end(self, ctx, summary: dict) -> None:
        done = [h for h in self.history if "secagg_client_seconds" in h]
        out = {"rounds": len(self.history), "aborted_rounds": self.aborted}
        for key in [f"secagg_{s}_{d}_bytes" for s in STEPS for d in ("sent", "received")] + [
            "secagg_client_seconds",
            "secagg_server_seconds",
        ]:
            vals = [h[key] for h in done]
            out[key.removeprefix("secagg_") + "_mean"] = float(np.mean(vals)) if vals else None
        summary["secagg"] = out
        if done:
            plot(done, ctx.run_dir / "plots" / "secagg.png")


def plot(history: list, path) -> None:
    from tff_lab.training.plots import _plt, _save

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = [h["round"] for h in history]
    bottom = np.zeros(len(rounds))
    for step in STEPS:
        v = np.array([h[f"secagg_{step}_sent_bytes"] + h[f"secagg_{step}_received_bytes"] for h in history])
        ax1.bar(rounds, v / 1e3, bottom=bottom / 1e3, label=step)
        bottom += v
    ax1.set_xlabel("round")
    ax1.set_ylabel("kB per client (sent + received)")
    ax1.set_title("SecAgg traffic per client and step")
    ax1.legend(fontsize=7)
    ax2.plot(rounds, [h["secagg_client_seconds"] for h in history], marker="o", label="client (mean)")
    ax2.plot(rounds, [h["secagg_server_seconds"] for h in history], marker="s", label="server")
    ax2.set_xlabel("round")
    ax2.set_ylabel("compute seconds")
    ax2.set_title("SecAgg compute time")
    ax2.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    plt.close(fig)
