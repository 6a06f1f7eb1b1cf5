"""aggregation.kind: secagg end to end: config rules, a `tff-lab run`, aborted rounds not applied."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import REPO, assert_user_error, run_cli

from tff_lab.config import from_dict
from tff_lab.errors import ConfigError

VEC = {"training": {"engine": "vectorized"}}


@pytest.mark.parametrize(
    "data,field,needle",
    [
        ({"aggregation": {"kind": "secagg"}}, "aggregation.kind", "secagg runs on the vectorised engine"),
        (
            {**VEC, "aggregation": {"kind": "mean", "secagg": {"dropout_rate": 0.1}}},
            "aggregation.secagg",
            "has no effect unless",
        ),
        (
            {**VEC, "aggregation": {"kind": "secagg", "secagg": {"threshold_fraction": 1.0}}},
            "aggregation.secagg.threshold_fraction",
            "(0, 1)",
        ),
        (
            {**VEC, "aggregation": {"kind": "secagg", "secagg": {"neighbors": "some"}}},
            "aggregation.secagg.neighbors",
            "",
        ),
        ({**VEC, "aggregation": {"kind": "secagg", "secagg": {"bits": 40}}}, "aggregation.secagg.bits", "<= 32"),
    ],
)
def test_config_rules(data, field, needle):
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    assert err.value.where == field and needle in err.value.message


def test_config_accepts_secagg_and_secagg_plus():
    for neighbors in (None, "all", 6):
        cfg = from_dict({**VEC, "aggregation": {"kind": "secagg", "secagg": {"neighbors": neighbors}}})
        assert cfg.aggregation.secagg.neighbors == neighbors


def test_cli_refuses_secagg_on_the_tff_engine_in_one_line(tmp_path):
    proc = run_cli("run", "experiments/secagg.yaml", "--out", tmp_path / "r", "--set", "training.engine=tff")
    assert_user_error(proc, "aggregation.kind", "secagg runs on the vectorised engine")


@pytest.mark.slow
def test_run_with_dropouts_aborted_rounds_are_not_applied(tmp_path):
    """3 rounds of SecAgg+ (10 clients, k = 4, t = 3) with 30% dropouts: with seed 0 rounds 1 and 3
    lose too many share holders and abort; round 2 is summed. An aborted round leaves the state as
    it was (checkpoints 2 and 3 are identical), the loop carries on, and the columns say what ran."""
    out = tmp_path / "run"
    run_cli(
        "run",
        "experiments/secagg.yaml",
        "--out",
        out,
        "--set",
        "training.rounds=3",
        "--set",
        "training.rounds_per_checkpoint=1",
        "--set",
        "aggregation.secagg.dropout_rate=0.3",
        "--set",
        "centralized.enabled=false",
        check=True,
    )
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["secagg_aborted"] for r in rows] == ["1", "0", "1"]
    ok = rows[1]
    assert ok["train_loss"] and not rows[0]["train_loss"] and not rows[2]["train_loss"]
    included, dropped = int(ok["secagg_included"]), int(ok["secagg_dropped"])
    assert int(ok["secagg_neighbors"]) == 4 and int(ok["secagg_threshold"]) == 3
    assert 3 <= included <= 10 and included + dropped >= 10 - dropped // 2 - 1 and dropped >= 0
    # bytes per client: keys 68 sent, 68 per neighbour received; the masked update ~ 5 bytes/element
    assert float(ok["secagg_advertise_keys_sent_bytes"]) == 68.0
    assert float(ok["secagg_advertise_keys_received_bytes"]) == 68.0 * 4
    assert float(ok["secagg_masked_input_sent_bytes"]) > 5 * 4000
    assert float(ok["secagg_server_seconds"]) > 0 and float(ok["secagg_client_seconds"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["secagg"]["aborted_rounds"] == 2 and summary["rounds"] == 3
    assert (out / "plots" / "secagg.png").stat().st_size > 0

    def arrays(r):
        with np.load(out / "checkpoints" / f"ckpt_{r:06d}.npz") as z:
            return [z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))]

    from tff_lab.config import load_config
    from tff_lab.models import initial_weights, resolve_model

    cfg = load_config(REPO / "experiments" / "secagg.yaml")
    init = initial_weights(resolve_model(cfg.model), (64,), 10, cfg.seed)  # digits: 64 features, 10 classes
    a2, a3 = arrays(2), arrays(3)
    assert all(np.array_equal(x, y) for x, y in zip(a2, a3))  # round 3 aborted: nothing applied
    assert [x.shape for x in a2[: len(init)]] == [w.shape for w in init]
    assert not all(np.array_equal(x, w) for x, w in zip(a2, init))  # round 2 was applied


def test_cost_script_runs_and_secagg_plus_receives_less(tmp_path):
    import subprocess
    import sys

    from helpers import cli_env

    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "secagg_cost.py"),
            "--out",
            str(tmp_path),
            "--cohorts",
            "4",
            "12",
            "--dropouts",
            "0",
            "0.2",
            "--repeats",
            "1",
        ],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "secagg_cost.csv")))
    assert len(rows) == 8 and (tmp_path / "secagg_cost.png").stat().st_size > 0
    by = {(r["protocol"], r["clients"], r["dropout_rate"]): r for r in rows}
    full, plus = by[("SecAgg", "12", "0.0")], by[("SecAgg+", "12", "0.0")]
    assert int(full["neighbors"]) == 11 and int(plus["neighbors"]) == 4
    # received: 68 B of keys + 74 B of shares per neighbour + 4 B per surviving holder's id at unmasking
    assert float(full["client_received_kB"]) * 1e3 == pytest.approx(68 * 11 + 74 * 11 + 4 * 12)
    assert float(plus["client_received_kB"]) * 1e3 == pytest.approx(68 * 4 + 74 * 4 + 4 * 5)
