"""`tff-lab predict --max-latency-ms/--max-memory-mb`: the batch size chosen by measurement, printed, and
reproduced with --batch-size."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from tff_lab import cli
from tff_lab.export.predict import (
    MAX_SEARCH_BATCH,
    batch_candidates,
    choose_batch_size,
    load_predictor,
    predict_file,
    search_batch_size,
)


@pytest.mark.parametrize("seed", range(4))
def test_candidates_double_up_to_the_rows(seed):
    rng = random.Random(seed)
    for n in [1, 2, 3, MAX_SEARCH_BATCH, MAX_SEARCH_BATCH + 1] + [rng.randrange(1, 200_000) for _ in range(100)]:
        c = batch_candidates(n)
        top = min(n, MAX_SEARCH_BATCH)
        assert c[0] == 1 and c[-1] == top and c == sorted(set(c))
        assert all(b == 2**i for i, b in enumerate(c[:-1])) and top <= 2 * c[-2] if len(c) > 1 else top == 1
    assert batch_candidates(0) == []


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """8,192 digits-like raw rows (0..16), enough for the memory of a batch to show."""
    path = tmp_path_factory.mktemp("bs") / "x.npy"
    np.save(path, np.random.default_rng(0).integers(0, 17, (8192, 64)).astype(np.float32))
    return path


def _check_rule(res: dict, *, max_latency_ms=None, max_memory_mb=None) -> None:
    """The choice follows from the printed figures: the last candidate before the first one over a bound."""
    rows = res["candidates"]
    for r in rows:
        over = (max_latency_ms is not None and r["median_ms"] > max_latency_ms) or (
            max_memory_mb is not None and r["projected_mib"] > max_memory_mb
        )
        assert r["within"] == (not over)
    assert all(r["within"] for r in rows[:-1])
    within = [r["batch_size"] for r in rows if r["within"]]
    assert res["batch_size"] == within[-1]
    assert [r["batch_size"] for r in rows] == batch_candidates(res["rows_available"])[: len(rows)]


def test_latency_bound_picks_the_largest_batch_within_it_and_batch_size_reproduces_it(
    trained_run, big_input, tmp_path, capsys
):
    model = trained_run / "model" / "model.keras"
    predictor = load_predictor(model)
    x = np.load(big_input, mmap_mode="r")
    # A bound between the measured times of batch 1 and the largest batch, from a first measurement.
    probe = search_batch_size(predictor, x, max_latency_ms=1e9, repeats=3)
    assert probe["batch_size"] == 8192 and probe["stop"].startswith("the largest candidate")
    _check_rule(probe, max_latency_ms=1e9)
    t1, tmax = probe["candidates"][0]["median_ms"], probe["candidates"][-1]["median_ms"]
    assert tmax > t1  # 8,192 rows take longer than 1
    bound = (t1 * tmax) ** 0.5  # far from both ends: the CLI's own measurement (below) is another sample
    out = tmp_path / "auto.npz"
    assert cli.main(["predict", str(model), str(big_input), "--out", str(out), "--max-latency-ms", f"{bound:.4f}"]) == 0
    err = capsys.readouterr().err
    m = re.search(r"batch size (\d+) \(measuring stopped: (.*)\); reproduce with --batch-size (\d+)", err)
    assert m and m.group(1) == m.group(3), err
    chosen = int(m.group(1))
    assert f"batch {chosen}, keras" in err
    table = [ln.split() for ln in err.splitlines() if re.match(r"tff-lab predict:\s+\d+\s+[\d.]+\s", ln)]
    figures = [(int(t[2]), float(t[3]), t[-1] == "over") for t in table]
    assert [b for b, _, _ in figures] == batch_candidates(8192)[: len(figures)]
    assert all(not over and ms <= bound for _, ms, over in figures[:-1])
    if figures[-1][2]:  # measuring stopped at the first batch over the bound; the one before it is chosen
        assert figures[-1][1] > bound and figures[-2][0] == chosen
        assert m.group(2) == f"batch {figures[-1][0]} breaks --max-latency-ms"
    else:  # this sample of the machine was fast enough for every candidate
        assert chosen == figures[-1][0] == 8192 and m.group(2).startswith("the largest candidate")
    # --batch-size N: no search, the same predictions bit for bit.
    again = tmp_path / "fixed.npz"
    res = predict_file(model, big_input, again, batch_size=chosen, quiet=True)
    assert res["batch_search"] is None and res["batch_size"] == chosen
    with np.load(out) as a, np.load(again) as b:
        assert np.array_equal(a["probs"], b["probs"])


def test_memory_bound_measures_the_batchs_memory(trained_run, big_input):
    predictor = load_predictor(trained_run / "model" / "model.keras")
    x = np.load(big_input, mmap_mode="r")
    reserve = 8192 * 10 * 4
    res = search_batch_size(predictor, x, max_memory_mb=1e6, reserve_bytes=reserve, repeats=2)
    _check_rule(res, max_memory_mb=1e6)
    rows = res["candidates"]
    assert res["peak_is_per_candidate"]  # Linux resets the peak mark for each candidate
    assert all(abs(r["projected_mib"] - r["peak_mib"] - reserve / 2**20) < 1e-9 for r in rows)
    # A batch of 8,192 rows holds its 2 MiB of input, the float32 copy and activations (64 units x 2 layers):
    # its peak is well above a batch of 1's.
    assert rows[-1]["peak_mib"] - rows[0]["peak_mib"] > 2.0, [(r["batch_size"], r["peak_mib"]) for r in rows]
    # The rule on these figures: a bound between the smallest and largest batch's memory picks the last
    # candidate before the first one over it. (A second search in this process would start from the memory
    # the first one left resident: a run measures once, in a fresh process.)
    bound = (rows[0]["projected_mib"] + rows[-1]["projected_mib"]) / 2
    first_over = next(i for i, r in enumerate(rows) if r["projected_mib"] > bound)
    assert choose_batch_size(rows, max_memory_mb=bound) == rows[first_over - 1]["batch_size"] < 8192
    assert choose_batch_size(rows, max_memory_mb=rows[0]["projected_mib"] - 1e-6) is None
    assert choose_batch_size(rows, max_memory_mb=bound, max_latency_ms=1e9) == choose_batch_size(
        rows, max_memory_mb=bound
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--max-latency-ms", "0.001"], "--max-latency-ms: even a batch of 1 takes"),
        (["--max-memory-mb", "1"], "--max-memory-mb: even a batch of 1 needs"),
        (["--max-latency-ms", "0"], "--max-latency-ms: expected a finite number >= 0.001"),
        (["--max-memory-mb", "-5"], "--max-memory-mb: expected a finite number >= 1"),
        (["--max-latency-ms", "nan"], "--max-latency-ms: expected a finite number"),
        (["--batch-size", "8", "--max-latency-ms", "5"], "--batch-size: give either --batch-size"),
        (["--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    ],
)
def test_bad_bounds_are_one_line_exit_2(trained_run, big_input, argv, words, tmp_path, capsys):
    out = tmp_path / "p.npz"
    assert (
        cli.main(["predict", str(trained_run / "model" / "model.keras"), str(big_input), "--out", str(out), *argv]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # ours: one line; argparse's (a flag's type): usage, then "error: argument FLAG: ..." as the last line
    assert (err.startswith("tff-lab: error: ") or ": error: argument " in err) and words in err, err
    assert not out.exists()
