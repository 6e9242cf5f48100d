"""The words etl prints: plurals, the summary's reasons and rates, and one-line errors instead of tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from etl import cli
from etl.cli import make_parser
from etl.messages import Failure
from etl.settings import build_settings
from etl.stats import SplitStats, colour_notes, summary_text
from etl.words import plural

from .conftest import run_cli

LOSS = "worker process failed twice on this image (last: it was killed by SIGKILL (out of memory?))"


@pytest.fixture()
def tree(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "1.jpg").write_bytes(b"x")
    (tmp_path / "val" / "a").mkdir(parents=True)
    return tmp_path


def one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etl: error:") and message in lines[0], proc.stderr


def split(**kw) -> SplitStats:
    s = SplitStats(name="train", listed=kw.pop("listed", 10))
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.mark.quick
@pytest.mark.parametrize(("n", "word", "expected"), [
    (1, "worker", "1 worker"), (2, "worker", "2 workers"), (0, "problem", "0 problems"),
    (1, "class", "1 class"), (3, "class", "3 classes"), (1, "worker process", "1 worker process"),
    (2, "worker process", "2 worker processes"), (1200, "record", "1,200 records"),
])
def test_plural(n, word, expected):
    assert plural(n, word) == expected


@pytest.mark.quick
def test_summary_says_one_worker_and_one_class():
    text = summary_text("out", ["a"], [split(written=10, wall_seconds=2.0, worker_count=1,
                                             worker_losses=["was killed by SIGKILL"])], [])
    assert "1 class ->" in text and "1 classes" not in text
    assert "(1 worker)" in text and "1 workers" not in text
    assert "1 worker process replaced" in text and "1 worker processes" not in text
    text = summary_text("out", ["a", "b"], [split(written=10, wall_seconds=2.0, worker_count=2)], [])
    assert "2 classes ->" in text and "(2 workers)" in text


@pytest.mark.quick
def test_summary_groups_reasons_without_cutting_inside_brackets():
    failures = [Failure("a.jpg", LOSS), Failure("b.jpg", "cannot read: permission denied"),
                Failure("c.jpg", "cannot read: file vanished since the scan")]
    text = summary_text("out", ["a"], [split(written=7, failures=failures, wall_seconds=1.0)], [])
    groups = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("skipped ")]
    assert sorted(groups) == sorted(["cannot read", LOSS])
    assert not any(g.endswith("(last") for g in groups)


@pytest.mark.quick
def test_summary_cuts_a_long_reason_at_a_word():
    long = "unexpected trouble " + " ".join(f"word{i}" for i in range(40))
    text = summary_text("out", ["a"], [split(written=7, failures=[Failure("a.jpg", long)], wall_seconds=1.0)], [])
    group = next(line for line in text.splitlines() if line.strip().startswith("skipped "))
    shown = group.split(":", 1)[1].strip()
    assert shown.endswith("...") and len(shown) <= 110
    assert shown.removesuffix("...").split()[-1] in long.split()  # a whole word, not a piece of one


@pytest.mark.quick
def test_fully_resumed_split_says_already_complete_not_a_rate():
    text = summary_text("out", ["a"], [split(written=10, resumed_from=10, wall_seconds=0.3, worker_count=2)], [])
    line = next(line for line in text.splitlines() if line.strip().startswith("train"))
    assert "already complete" in line and "img/s" not in line
    text = summary_text("out", ["a"], [split(written=10, resumed_from=4, wall_seconds=2.0, worker_count=2)], [])
    assert "3.0 img/s" in text and "already complete" not in text


@pytest.mark.quick
def test_command_line_val_dir_replaces_the_presets_val_pct(tree):
    conf = tree / "c.toml"
    conf.write_text("val_pct = 10\nwidth = 64\n")
    folders = {"train_dir": str(tree / "train"), "out_dir": str(tree / "out")}
    s = build_settings({**folders, "val_dir": str(tree / "val")}, str(conf))
    assert (s.val_dir, s.val_pct, s.width) == (str(tree / "val"), None, 64)
    conf.write_text(f'val_dir = "{tree / "val"}"\n')
    s = build_settings({**folders, "val_pct": 5.0}, str(conf))
    assert (s.val_dir, s.val_pct) == (None, 5.0)


@pytest.mark.quick
def test_preset_with_both_val_dir_and_val_pct_is_still_refused(tree):
    conf = tree / "c.toml"
    conf.write_text(f'val_pct = 10\nval_dir = "{tree / "val"}"\n')
    proc = run_cli("convert", str(tree / "train"), str(tree / "out"), "--config", str(conf))
    one_line_error(proc, "give either --val or --val-pct, not both")


@pytest.mark.quick
def test_negative_seed_is_refused_in_one_line(tree):
    proc = run_cli("convert", str(tree / "train"), str(tree / "out"), "--seed", "-1")
    one_line_error(proc, "--seed must be at least 0, got -1")
    assert not (tree / "out").exists()


@pytest.mark.quick
def test_config_that_is_a_folder_or_binary_is_one_line(tree):
    proc = run_cli("convert", str(tree / "train"), str(tree / "out"), "--config", str(tree / "val"))
    one_line_error(proc, f"config file {tree / 'val'} is a folder")
    binary = tree / "c.toml"
    binary.write_bytes(b"\xff\xfe\x00\x01width = 3\n\x89PNG")
    proc = run_cli("convert", str(tree / "train"), str(tree / "out"), "--config", str(binary))
    one_line_error(proc, f"config file {binary} is not valid TOML:")


def test_demo_removes_its_temporary_folder(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.run([sys.executable, "-m", "etl", "demo", "--workers", "2"], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "etl verify: OK" in proc.stdout
    assert list(scratch.iterdir()) == []


@pytest.mark.quick
def test_demo_with_out_keeps_it_and_says_where(tmp_path, monkeypatch, capsys):
    made = []
    monkeypatch.setattr(cli, "_demo", lambda base, workers: made.append(base) or 0)  # the run itself: test above
    assert cli.main(["demo", "--out", str(tmp_path / "kept")]) == 0
    assert made == [tmp_path / "kept"]
    assert f"demo: kept in {tmp_path / 'kept'}" in capsys.readouterr().out


@pytest.mark.quick
def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == "etl 0.8.0"


@pytest.mark.quick
@pytest.mark.parametrize(("args", "message"), [
    (["convert", "{t}/train", "{t}/out", "--widht", "100"],
     "unrecognized arguments: --widht 100; did you mean --width?"),
    (["convert", "{t}/train", "{t}/out", "--val_pct=5"], "did you mean --val-pct?"),
    (["conver", "{t}/train", "{t}/out"], "did you mean 'convert'?"),
    (["verify", "{t}/out", "--quite"], "did you mean --quiet?"),
    (["--verison"], "did you mean --version?"),
    (["-x"], "unrecognized arguments: -x"),
])
def test_mistyped_option_or_command_suggests_the_closest(tree, args, message):
    one_line_error(run_cli(*[a.format(t=tree) for a in args]), message)


@pytest.mark.quick
def test_unambiguous_prefixes_are_still_accepted(tree):
    args = make_parser().parse_args(["convert", "a", "b", "--wid", "100", "--qual", "80"])
    assert (args.width, args.quality) == (100, 80)


@pytest.mark.quick
@pytest.mark.parametrize("command", ["bench", "tune"])
def test_bench_and_tune_ask_for_a_source(tmp_path, command):
    proc = run_cli(command, cwd=tmp_path)
    one_line_error(proc, "--src")
    assert "--generate" in proc.stderr and "minutes" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


@pytest.mark.quick
def test_summary_names_the_images_written_with_warnings_and_the_switch_that_skips_them():
    warned = [Failure(f"c/{i}.jpg", "Premature end of JPEG file") for i in range(7)]
    text = summary_text("out", ["c"], [split(written=7, warnings=warned, wall_seconds=1.0)], [])
    assert "7 with warnings" in text
    assert "warned       7: written as libjpeg decoded them; --strict skips such images" in text
    assert "e.g. c/0.jpg: Premature end of JPEG file" in text and "c/4.jpg" in text and "c/5.jpg" not in text
    assert "--strict" not in summary_text("out", ["c"], [split(written=7, wall_seconds=1.0)], [])


@pytest.mark.quick
def test_colour_note_counts_each_kind_per_split_and_says_the_target():
    train = split(colour_conversions={"CMYK JPEG": 22, "transparent PNG": 1})
    val = split(colour_conversions={"YCCK JPEG": 1})
    val.name = "val"
    assert colour_notes([train, val, split()], channels=3) == [
        "train: 23 images converted to RGB: 22 CMYK JPEGs, 1 transparent PNG (transparency composited onto white)",
        "val: 1 image converted to RGB: 1 YCCK JPEG"]
    assert colour_notes([val], channels=1) == ["val: 1 image converted to grey: 1 YCCK JPEG"]
