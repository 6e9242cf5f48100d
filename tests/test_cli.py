"""Bad arguments stop the run before any work, with one line that says what to fix."""

from pathlib import Path

import pytest

from etl.settings import build_settings

from .conftest import run_cli

pytestmark = pytest.mark.quick  # each test stops before any conversion: well under a second


@pytest.fixture()
def tree(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "1.jpg").write_bytes(b"x")
    return tmp_path


@pytest.mark.parametrize(("args", "message"), [
    (["missing", "out"], "train folder not found: missing"),
    (["{t}/train", "{t}/out", "--val-pct", "150"], "--val-pct must be from 0 to below 100"),
    (["{t}/train", "{t}/out", "--quality", "0"], "--quality must be from 1 to 100"),
    (["{t}/train", "{t}/out", "--workers", "-2"], "--workers must be"),
    (["{t}/train", "{t}/out", "--queue-depth", "0"], "--queue-depth must be from 1 to 64, got 0"),
    (["{t}/train", "{t}/out", "--val-dir", "{t}/nope"], "val folder not found"),
    (["{t}/train", "{t}/out", "--val-dir", "{t}/train", "--val-pct", "5"], "not allowed with argument"),
    (["{t}/train", "{t}/out", "--resize-mode", "zoom"], "invalid choice: 'zoom'"),
    (["{t}/train", "{t}/out", "--config", "{t}/none.toml"], "config file not found"),
    (["{t}/train", "{t}/train"], "is an input folder"),
    (["{t}/train", "{t}/out", "--max-per-class", "0"], "--max-per-class must be at least --min-per-class"),
    (["{t}/train", "{t}/train/a/1.jpg"], "exists and is not a folder"),
])
def test_bad_arguments_one_line_no_traceback(tree, args, message):
    proc = run_cli("convert", *[a.format(t=tree) for a in args])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etl: error:") and message in lines[0], proc.stderr
    assert not (tree / "out").exists() and (tree / "train" / "a" / "1.jpg").read_bytes() == b"x"  # no work done


def test_config_file_unknown_key_and_override(tree):
    conf = tree / "c.toml"
    conf.write_text("width = 128\nquality = 80\n")
    s = build_settings({"train_dir": str(tree / "train"), "out_dir": str(tree / "o"), "quality": 95}, str(conf))
    assert (s.width, s.height, s.quality) == (128, 224, 95)
    conf.write_text("colour = 'red'\n")
    proc = run_cli("convert", str(tree / "train"), str(tree / "o"), "--config", str(conf))
    assert proc.returncode == 2 and "unknown option 'colour'" in proc.stderr


def test_shipped_preset_is_the_seed_recipe(tree):
    preset = Path(__file__).parent.parent / "conf" / "imagenet-digits.toml"
    s = build_settings({"train_dir": str(tree / "train"), "out_dir": str(tree / "o")}, str(preset))
    assert (s.width, s.height, s.resize_mode, s.channels, s.encoding, s.quality) == (224, 224, "squash", 3, "jpg", 90)


def test_shipped_preset_by_name_from_any_folder(tree, monkeypatch):
    monkeypatch.chdir(tree)  # not the clone's root: conf/ is not here
    for name in ("imagenet-digits", "imagenet-digits.toml"):
        s = build_settings({"train_dir": "train", "out_dir": "o", "quality": 80}, name)
        assert (s.width, s.resize_mode, s.seed, s.quality) == (224, "squash", 1385, 80)
    clone = Path(__file__).parent.parent
    assert (clone / "conf" / "imagenet-digits.toml").read_bytes() == (clone / "etl" / "presets" /
                                                                       "imagenet-digits.toml").read_bytes()
    # the CLI from another folder: the preset is found (the run then stops at the option given after it)
    proc = run_cli("convert", "train", "o", "--config", "imagenet-digits", "--quality", "0", cwd=tree)
    assert proc.returncode == 2 and "--quality must be from 1 to 100" in proc.stderr, proc.stderr


def test_unknown_preset_name_lists_the_shipped_ones(tree):
    proc = run_cli("convert", "train", "o", "--config", "imagenet", cwd=tree)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == ("etl: error: config file not found: imagenet, nor a shipped preset of that name (the shipped "
                        "presets: imagenet-digits; or give a TOML file's path)")


def test_verify_missing_folder(tmp_path):
    proc = run_cli("verify", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and proc.stderr.startswith("etl: error: dataset folder not found")
