"""The report's time per rule, read from Snakemake benchmark files."""

from __future__ import annotations

from axflow.report import benchmark_seconds, timing_section

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, *seconds):
    path.write_text(HEADER + "".join(f"{s}\t0:00:01\t1\t1\t1\t1\t0\t0\t0\t{s}\n" for s in seconds))
    return str(path)


def test_time_per_rule_in_dag_order(tmp_path):
    inputs = {
        "ratings.diffmean.0": "not a benchmark",
        "bench.judge.0": _bench(tmp_path / "j0.tsv", 2.0),
        "bench.steer.1": _bench(tmp_path / "s1.tsv", 10.5),
        "bench.steer.2": _bench(tmp_path / "s2.tsv", 20.0),
        "bench.dataset.3": _bench(tmp_path / "d.tsv", 3.0, 5.0),  # repeats: their mean
        "bench.train.4": str(tmp_path / "empty.tsv"),
    }
    (tmp_path / "empty.tsv").write_text("")
    assert benchmark_seconds(inputs["bench.dataset.3"]) == 4.0
    assert benchmark_seconds(inputs["bench.train.4"]) is None
    text = "\n".join(timing_section(inputs))
    assert "## Time per rule" in text and "36 s in all" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "rule" not in line]
    assert rows == [
        "| dataset | 1 | 4.0 | 4.0 |",
        "| steer | 2 | 30.5 | 20.0 |",
        "| judge | 1 | 2.0 | 2.0 |",
    ]
    assert "1 benchmark files held no time" in text


def test_no_benchmarks_no_section():
    assert timing_section({"ratings.diffmean.0": "x"}) == []
