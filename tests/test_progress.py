"""Progress bars: tqdm's redrawn line on a terminal, plain lines a log file can hold everywhere else."""

import io
import subprocess
import sys

import pytest

from etl import progress
from etl.progress import ProgressBar

from .conftest import run_cli


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.quick
def test_a_bar_into_a_file_writes_one_plain_line_per_frame(monkeypatch):
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)  # a line at every update: what is written, not when
    log = io.StringIO()
    with ProgressBar(total=3, desc="train", unit="img", file=log, mininterval=0, miniters=1) as bar:
        for _ in range(3):
            bar.update()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].startswith("train:   0%|          | 0/3") and lines[-1].startswith("train: 100%|##########| 3/3")
    assert all(line == line.rstrip() and line.startswith("train:") for line in lines)


@pytest.mark.quick
def test_a_bar_that_leaves_nothing_adds_no_blank_line():
    log = io.StringIO()
    with ProgressBar(total=2, desc="indexing", file=log, leave=False) as bar:
        bar.update(2)
    assert log.getvalue().splitlines()[0].startswith("indexing:   0%") and "\n\n" not in log.getvalue()


@pytest.mark.quick
def test_a_bar_on_a_terminal_is_still_redrawn_in_place():
    screen = Terminal()
    with ProgressBar(total=2, desc="train", file=screen) as bar:
        bar.update(2)
    assert "\r" in screen.getvalue()


def test_verify_into_a_log_writes_lines_without_carriage_returns(tmp_path):
    from etl.synth import TreeSpec, make_tree

    make_tree(tmp_path / "train", TreeSpec(classes=2, per_class=3, seed=1, awkward=False))
    assert run_cli("convert", str(tmp_path / "train"), str(tmp_path / "out"), "--workers", "1",
                   "--quiet").returncode == 0
    # stderr a file, as in `etl verify OUT 2> log`; read as bytes (text mode would turn each \r into a \n)
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.run([sys.executable, "-m", "etl", "verify", str(tmp_path / "out")], stderr=log,
                              stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=120)
    text = (tmp_path / "log").read_bytes()
    assert proc.returncode == 0 and b"\r" not in text, text
    lines = text.decode().splitlines()
    assert lines[0].startswith("verify train:   0%|") and lines[-1].startswith("verify val: 100%|##########| 2/2 ")


@pytest.mark.quick
def test_a_bar_into_a_file_ends_with_one_line_of_its_final_count(monkeypatch):
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)  # the last update draws 3/3: closing must not draw it again
    log = io.StringIO()
    with ProgressBar(total=3, desc="train", unit="img", file=log, mininterval=0, miniters=1) as bar:
        bar.update(3)
    assert [line for line in log.getvalue().splitlines() if " 3/3 " in line] == log.getvalue().splitlines()[-1:]


@pytest.mark.quick
def test_a_bar_that_leaves_nothing_still_ends_a_log_with_its_final_count():
    log = io.StringIO()  # LOG_SECONDS as etl runs: the updates draw nothing after the first frame
    with ProgressBar(total=2, desc="indexing", file=log, leave=False) as bar:
        bar.update(2)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("indexing:   0%") and lines[1].startswith("indexing: 100%|")


@pytest.mark.quick
def test_a_bar_never_drawn_writes_no_final_line():
    log = io.StringIO()
    with ProgressBar(total=2, desc="train", file=log, delay=60) as bar:
        bar.update(2)
    assert log.getvalue() == ""


def test_convert_into_a_log_ends_each_index_bar_at_100_percent_once(tmp_path):
    from etl.synthilsvrc import IlsvrcSpec, make_ilsvrc

    made = make_ilsvrc(tmp_path / "il", IlsvrcSpec(classes=2, per_class=2, val_per_class=1, seed=3,
                                                   extracted=False))
    with open(tmp_path / "log", "wb") as log:  # `etl convert TAR OUT 2> log`
        proc = subprocess.run([sys.executable, "-m", "etl", "convert", str(made.train_tar),
                               str(tmp_path / "out"), "--workers", "1"], stderr=log, stdout=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, timeout=120)
    lines = (tmp_path / "log").read_text().splitlines()
    assert proc.returncode == 0 and [line[:15] for line in lines] == ["indexing:   0%|", "indexing: 100%|"], lines


def bars_end_once_at_100_percent(log: str) -> bool:
    """Each bar's lines (by its name) end with its one line of 100%."""
    by_bar: dict[str, list[str]] = {}
    for line in log.splitlines():
        if "%|" in line:
            by_bar.setdefault(line.split(":")[0], []).append(line)
    return bool(by_bar) and all(sum(" 100%|" in line for line in lines) == 1 and " 100%|" in lines[-1]
                                for lines in by_bar.values())


def test_mean_merge_and_verify_into_a_log_show_their_bars_and_end_with_a_summary(tmp_path):
    from etl.synth import TreeSpec, make_tree

    make_tree(tmp_path / "train", TreeSpec(classes=2, per_class=6, seed=2, awkward=False))
    out = tmp_path / "out"
    assert run_cli("convert", str(tmp_path / "train"), str(out), "--workers", "1", "--shard-size", "4",
                   "--chunk-size", "2", "--quiet").returncode == 0
    for command, summary in ((("mean", str(out / "train_db")), "etl mean: "), (("merge", str(out)), "etl merge: "),
                             (("verify", str(out)), "etl verify: OK")):
        with open(tmp_path / "log", "wb") as log:  # `etl ... 2> log`
            proc = subprocess.run([sys.executable, "-m", "etl", *command], stderr=log, stdout=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, timeout=120, text=True)
        said = (tmp_path / "log").read_text()
        assert proc.returncode == 0 and bars_end_once_at_100_percent(said), (command, said)
        ending = said if command[0] == "mean" else proc.stdout  # mean's stdout is compute_image_mean's lines
        assert ending.splitlines()[-1].startswith(summary), (command, proc.stdout, said)
