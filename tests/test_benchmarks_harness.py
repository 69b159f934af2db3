import json
import os

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


def test_interleave_alternates_the_order_and_summarize_reports_median_and_spread() -> None:
    from benchmarks._common import interleave, summarize

    calls: list[str] = []

    def side(name: str, value: float):
        return lambda: calls.append(name) or value

    times = interleave({"a": side("a", 1.0), "b": side("b", 3.0)}, repeats=3, quiet=True)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert times == {"a": [1.0, 1.0, 1.0], "b": [3.0, 3.0, 3.0]}
    s = summarize([1.0, 2.0, 4.0])
    assert s["median"] == 2.0 and s["spread_pct"] == 150.0 and s["n"] == 3


def test_kit_bench_runs_from_another_directory_into_a_run_folder(tmp_path) -> None:
    """A real subprocess, away from the repository root, with no PYTHONPATH: what a user types."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    kit_exe = Path(sys.executable).with_name("kit")
    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "precision.json"
    before = committed.read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = ["precision", "--config", "debug", "--steps", "2", "--warmup", "1", "--repeats", "1"]
    proc = subprocess.run(
        [str(kit_exe), "bench", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[bench precision" in proc.stderr and "torch thread(s)" in proc.stderr  # progress on stderr
    (run_dir,) = (tmp_path / "runs" / "bench").iterdir()
    saved = json.loads((run_dir / "precision.json").read_text())
    assert saved["threads"] == 1 and {r["precision"] for r in saved["rows"]} == {"fp32", "bf16-mixed"}
    assert committed.read_bytes() == before  # a run never writes over the committed results


def test_publish_copies_a_run_and_refreshes_the_readme_block(tmp_path) -> None:
    from benchmarks.__main__ import publish, readme_block

    run_dir, results = tmp_path / "run", tmp_path / "results"
    run_dir.mkdir()
    (run_dir / "x.json").write_text("{}")
    (run_dir / "x.md").write_text("# X figures\n\n| a |\n|---|\n| 2 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:x.md -->\nold table\n<!-- /results -->\nend\n")
    publish(run_dir, results, readme)
    assert (results / "x.json").exists()
    assert (
        readme.read_text()
        == "intro\n<!-- results:x.md -->\n**X figures**\n\n| a |\n|---|\n| 2 |\n<!-- /results -->\nend\n"
    )
    assert readme_block((results / "x.md").read_text()) in readme.read_text()


def test_published_result_blocks_match_the_committed_results() -> None:
    """The published figures (docs/benchmarks.md) are the committed files' figures (python -m benchmarks --publish)."""
    import re
    from pathlib import Path

    from benchmarks.__main__ import README, RESULTS, readme_block

    blocks = re.findall(r"<!-- results:([\w.\-]+) -->\n(.*?)<!-- /results -->", README.read_text(), re.S)
    assert README.name == "benchmarks.md" and len(blocks) >= 5  # the page really holds the published blocks
    for name, body in blocks:
        assert body == readme_block((RESULTS / name).read_text()), (
            f"docs/benchmarks.md block {name} is stale; run --publish"
        )
    assert Path(RESULTS).is_dir()


def test_suffix_names_the_plot_too(tmp_path) -> None:
    from benchmarks.__main__ import run

    result = run(
        "data_pipeline", ["--mb", "0.2", "--repeats", "1", "--words", "", "--workers", "1"], tmp_path, "-x"
    )
    assert result["plot"] == "data_pipeline-x.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data_pipeline-x.json",
        "data_pipeline-x.md",
        "data_pipeline-x.png",
    ]


def test_kit_bench_leaves_this_process_alone_and_passes_the_arguments(tmp_path, monkeypatch) -> None:
    """The child gets the repository first on PYTHONPATH; this process's sys.path and modules are untouched."""
    import sys
    from pathlib import Path

    from kit.cli.commands import bench

    calls = []
    monkeypatch.setattr(bench.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 7)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    path, modules = list(sys.path), set(sys.modules)
    assert bench.main(["precision", "--steps", "2"]) == 7  # the child's exit status
    assert sys.path == path and set(sys.modules) == modules
    ((cmd, env),) = calls
    assert cmd == [sys.executable, "-P", "-m", "benchmarks", "precision", "--steps", "2"]
    repo = Path(__file__).resolve().parents[1]
    assert env["PYTHONPATH"].split(os.pathsep) == [str(repo), str(tmp_path)]


def test_kit_bench_runs_the_repository_benchmarks_over_another_package_of_that_name(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    impostor = tmp_path / "site" / "benchmarks"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("")
    (impostor / "__main__.py").write_text("print('impostor')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    kit_exe = Path(sys.executable).with_name("kit")
    proc = subprocess.run(
        [str(kit_exe), "bench"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "impostor" not in proc.stdout and "benchmarks: " in proc.stdout and "precision" in proc.stdout
