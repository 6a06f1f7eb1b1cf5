"""bench/predict_throughput.py on tiny settings, so the script cannot rot (its figures are in BENCHMARKS.md)."""

from __future__ import annotations

import re

import pytest

from tff_lab_tests_edge_run_fixture import load_module_from, repo_root


@pytest.mark.slow  # ~10 processes, each importing TensorFlow
def test_bench_runs_1_and_2_processes_and_they_agree(tmp_path, capsys):
    bench = load_module_from(repo_root() / "bench" / "predict_throughput.py", "tff_lab_bench_predict_throughput")
    assert bench.main(["--rows", "3000", "--shards", "2", "--epochs", "1", "--max-latency-ms", "50",
                       "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if re.match(r"\| (keras|tflite float32) \| \d", ln)]
    # each row is printed twice: as measured, then in the final table
    assert len(rows) == 8 and all(r.rstrip().endswith("| yes |") for r in rows), out
    procs = sorted({(r.split("|")[1].strip(), int(r.split("|")[2])) for r in rows})
    assert procs == [("keras", 1), ("keras", 2), ("tflite float32", 1), ("tflite float32", 2)]
    assert out.count("chosen batch size") == 2 and "reproduce with" not in out  # the search table, not its tail
