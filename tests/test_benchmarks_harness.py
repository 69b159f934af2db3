import json

from benchmarks.__main__ import available, run, to_markdown


def test_markdown_table_has_every_column_and_notes() -> None:
    md = to_markdown(
        {"title": "T", "device": "cpu", "rows": [{"a": 1, "b": 2.5}, {"a": 3, "c": "x"}], "notes": ["n"]}
    )
    assert md.splitlines()[0] == "# T"
    assert "| a | b | c |" in md and "| 3 |  | x |" in md and "- n" in md


def test_throughput_benchmark_runs_both_sides_and_reports_the_ratio(tmp_path) -> None:
    assert "throughput" in available()
    result = run(
        "throughput", ["--config", "debug", "--steps", "6", "--warmup", "2", "--repeats", "1"], tmp_path
    )
    saved = json.loads((tmp_path / "throughput.json").read_text())
    assert saved["ratio_trainer_over_plain"] == result["ratio_trainer_over_plain"] > 0
    sides = {r["side"] for r in saved["rows"] if r["repeat"] == 0}
    assert sides == {"plain", "trainer"}
    assert saved["trainer_tokens_per_s"] > 0 and saved["plain_tokens_per_s"] > 0
    assert (tmp_path / "throughput.md").read_text().startswith("# Training throughput")
