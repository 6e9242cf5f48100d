"""The `etl imageset` benchmark harness runs end to end on a tiny corpus, checks its records, and writes its
table (no speed is asserted)."""


def test_the_imageset_benchmark_harness_runs_on_a_tiny_corpus(tmp_path, capsys):
    from benchmarks.imageset_bench import main as bench

    args = ["--generate", "40", "--rounds", "1", "--workers", "2", "--out", str(tmp_path / "r.txt")]
    assert bench(args) == 0
    lines = (tmp_path / "r.txt").read_text().splitlines()
    assert lines[0] == "# python benchmarks/imageset_bench.py " + " ".join(args)
    assert "page cache warm" in lines[1] and "40 files (generated)" in lines[2]
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines if line.startswith("| ")}
    for name in ("etl imageset --encoded", "writer ceiling (stand-in producers)", "etl imageset --resize 256",
                 "Pool + OpenCV --resize 256"):
        assert rows[name][0] == "40", name  # every list line written, and checked by the harness
        assert float(rows[name][2]) > 0
    for target in ("--encoded >= 0.80x the writer ceiling", "--resize 256 >= 1.0x Pool + OpenCV"):
        command, met, engine, met_engine = rows[target]
        assert command.endswith("x") and engine.endswith("x")
        assert met in ("yes", "no") and met_engine in ("yes |", "no |")
    assert "| etl imageset --encoded |" in capsys.readouterr().out
