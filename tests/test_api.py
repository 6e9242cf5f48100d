"""etl.convert and etl.verify: the CLI's options, defaults, report and errors, from Python."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import etl
from etl.synth import bad_files

from .conftest import run_cli


@pytest.fixture()
def train(tmp_path):
    """A train folder that passes the checks made before any work (enough to test the options)."""
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "1.jpg").write_bytes(b"x")
    return tmp_path / "train"


def test_convert_returns_the_report_and_the_dataset_verifies(small_tree, tmp_path, capfd):
    out = tmp_path / "ds"
    report = etl.convert(small_tree / "train", out, val=small_tree / "val", workers=2, chunk_size=5, width=48,
                         height=40, resize_mode="crop", progress=False)
    assert capfd.readouterr() == ("", "")  # no bar, no summary, nothing from the workers either
    assert json.loads(json.dumps(report)) == json.loads((out / "report.json").read_text())
    settings = report["settings"]
    assert (settings["width"], settings["height"], settings["resize_mode"]) == (48, 40, "crop")
    assert settings["val_dir"] == str(small_tree / "val") and settings["val_pct"] is None
    assert settings["quality"] == 90 and settings["seed"] == 1385  # the CLI's defaults
    assert "workers" not in settings  # the same keys as `etl convert` writes
    assert report["splits"]["train"]["written"] > 0 and report["splits"]["val"]["written"] == 9
    check = etl.verify(out, progress=False)
    assert check.problems == []
    assert check.records == sum(split["written"] for split in report["splits"].values())
    (out / "mean.jpg").unlink()
    assert etl.verify(str(out), progress=False).problems == ["mean.jpg is missing"]


def test_val_percentage_and_progress(small_tree, tmp_path, capsys):
    report = etl.convert(str(small_tree / "val"), str(tmp_path / "ds"), val=0, width=16, height=16, workers=1)
    assert report["settings"]["val_pct"] == 0.0 and set(report["splits"]) == {"train"}
    assert "etl convert: 3 classes" in capsys.readouterr().out  # the summary `etl convert` prints


@pytest.mark.quick
@pytest.mark.parametrize(("options", "message"), [
    ({"quality": 0}, "--quality must be from 1 to 100, got 0"),
    ({"val_pct": 150}, "--val-pct must be from 0 to below 100, got 150"),
    ({"resize_mode": "zoom"},
     "--resize-mode must be one of squash, crop, fill, half_crop, shorter, longer, got 'zoom'"),
    ({"workers": -2}, "--workers must be from 1 to 1024 (0 = every core), got -2"),
    ({"width": "wide"}, "option width expects a whole number, got 'wide'"),
    ({"max_read_mbps": -3}, "--max-read-mbps must be above 0, got -3"),
    ({"resume": True, "overwrite": True}, "give either --resume or --overwrite, not both"),
    ({"val": 10, "val_pct": 5}, "give val or val_pct, not both"),
])
def test_bad_option_raises_the_cli_message(train, tmp_path, options, message):
    options = dict(options)
    val = options.pop("val", None)
    with pytest.raises(etl.UsageError) as err:
        etl.convert(train, tmp_path / "ds", val=val, progress=False, **options)
    assert str(err.value) == message
    assert not (tmp_path / "ds").exists()


@pytest.mark.quick
@pytest.mark.parametrize("name", ["colour", "train_dir", "out_dir", "quiet", "config"])
def test_unknown_option_raises(train, tmp_path, name):
    with pytest.raises(etl.UsageError, match=f"^unknown option '{name}'$"):
        etl.convert(train, tmp_path / "ds", **{name: "x"})
    assert not (tmp_path / "ds").exists()


@pytest.mark.quick
def test_missing_folders_raise(tmp_path):
    with pytest.raises(etl.UsageError, match="^train folder not found: "):
        etl.convert(tmp_path / "none", tmp_path / "ds")
    with pytest.raises(etl.UsageError, match="^dataset folder not found: "):
        etl.verify(tmp_path / "none")


def test_nothing_converted_raises_with_the_report(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    for name, (data, _) in bad_files(np.random.default_rng(0)).items():
        if name.startswith(("zero", "notes")):
            (folder / name).write_bytes(data)
    with pytest.raises(etl.PipelineError) as err:
        etl.convert(tmp_path / "train", tmp_path / "ds", val=0, workers=1, progress=False)
    assert isinstance(err.value, etl.NothingConverted)
    assert str(err.value) == f"no image could be converted; the reasons are in {tmp_path / 'ds'}/report.json"
    assert err.value.report["splits"]["train"]["written"] == 0
    proc = run_cli("convert", str(tmp_path / "train"), str(tmp_path / "cli"), "--val-pct", "0", "--workers", "1")
    assert proc.returncode == 1  # the CLI: the same message, one line, exit status 1
    assert proc.stderr.strip().splitlines()[-1] == f"etl: error: {str(err.value).replace('/ds/', '/cli/')}"


@pytest.mark.quick
def test_import_etl_stays_cheap_and_verify_stays_the_function():
    code = ("import sys, etl; heavy = {'cv2', 'lmdb', 'numpy', 'etl.pipeline'} & set(sys.modules); "
            "assert not heavy, heavy; import etl.check; from etl.check import render; "
            "assert callable(etl.verify) and etl.verify.__module__ == 'etl.api', etl.verify; "
            "assert etl.UsageError.__module__ == 'etl.errors'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_convert_runs_from_a_thread_other_than_the_main_one(small_tree, tmp_path):
    """Schedulers call from worker threads, where Python refuses to install a signal handler."""
    import threading

    found: list = []
    worker = threading.Thread(target=lambda: found.append(
        etl.convert(small_tree / "val", tmp_path / "ds", val=0, workers=1, progress=False)))
    worker.start()
    worker.join(120)
    assert found and found[0]["splits"]["train"]["written"] == 9


def readme_api_example() -> str:
    """The README's Python API example, as a user copies it into a script."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_runs_as_a_script_without_the_main_guard(tmp_path):
    # The workers' forkserver used to run the script again in every child: each child's etl.convert found
    # out/ already started ("already holds a dataset"), and the parent advised --resume.
    from etl.synth import TreeSpec, make_tree

    make_tree(tmp_path / "train", TreeSpec(classes=2, per_class=5, seed=1, awkward=False))
    make_tree(tmp_path / "val", TreeSpec(classes=2, per_class=2, seed=2, awkward=False))
    script = tmp_path / "example.py"
    script.write_text(readme_api_example(), encoding="utf-8")
    assert "__main__" not in script.read_text()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(etl.__file__).parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "10"
    assert "already holds" not in proc.stderr and "--resume" not in proc.stderr
