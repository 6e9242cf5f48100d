"""One declaration per option: the CLI parser, presets, checks and report.json's settings all follow it."""

from dataclasses import fields

import pytest

from etl.cli import make_parser
from etl.options import cli_order, help_text, opt_of, shown
from etl.settings import PRESET_OPTIONS, Settings, UsageError, build_settings

pytestmark = pytest.mark.quick

# report.json's settings and the --resume check: this exact list, in this order
OUTPUT_KEYS = ["train_dir", "val_dir", "val_labels", "root", "val_root", "labels", "val_pct", "width", "height",
               "resize_mode", "resize_filter", "size", "exif_orientation", "channels", "encoding", "quality", "seed",
               "shuffle", "shard_size", "min_per_class", "max_per_class", "relative_paths", "max_pixels", "strict",
               "chunk_size", "caffe_imageset", "keep_size", "encode_type"]
# set by etl imageset and by a shard's own run, not etl convert flags
HIDDEN = {"caffe_imageset", "keep_size", "encode_type", "check_size", "in_shard"}


@pytest.fixture()
def folders(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    return {"train_dir": str(tmp_path / "train"), "out_dir": str(tmp_path / "out")}


def test_every_field_is_declared_and_listed_once():
    names = [f.name for f in fields(Settings)]
    assert all(opt_of(f).help for f in fields(Settings))
    assert sorted(f.name for f in cli_order(fields(Settings))) == sorted(names)
    assert PRESET_OPTIONS == set(names) - {"train_dir", "out_dir"} - HIDDEN
    assert {f.name for f in fields(Settings) if opt_of(f).hidden} == HIDDEN


def test_output_settings_are_the_options_that_change_the_bytes():
    assert list(Settings().output_settings()) == OUTPUT_KEYS


def test_parser_gives_every_option_and_no_defaults_of_its_own(folders):
    args = make_parser().parse_args(["convert", folders["train_dir"], folders["out_dir"]])
    values = {k: v for k, v in vars(args).items() if k not in ("command", "config", "quiet")}
    assert set(values) == {f.name for f in fields(Settings)} - HIDDEN
    assert {k for k, v in values.items() if v is not None} == {"train_dir", "out_dir"}  # presets can fill the rest
    assert build_settings(values) == Settings(**folders)


@pytest.mark.parametrize(("argv", "expected"), [
    (["--no-shuffle"], {"shuffle": False}),
    (["--strict", "--relative-paths", "--adaptive-io"], {"strict": True, "relative_paths": True, "adaptive_io": True}),
    (["--keep-page-cache"], {"page_cache": "keep"}),
    (["--resize-filter", "caffe"], {"resize_filter": "caffe"}),
    (["--page-cache", "drop", "--io-target", "50"], {"page_cache": "drop", "io_target": 50.0}),
    (["--channels", "1", "--val-pct", "12.5", "--max-iops", "train=3"],
     {"channels": 1, "val_pct": 12.5, "max_iops": {"train": 3.0}}),
])
def test_flags_reach_their_fields(folders, argv, expected):
    args = make_parser().parse_args(["convert", folders["train_dir"], folders["out_dir"], *argv])
    values = {k: v for k, v in vars(args).items() if k not in ("command", "config", "quiet")}
    s = build_settings(values)
    assert {k: getattr(s, k) for k in expected} == expected


def test_help_shows_the_real_defaults_and_the_same_layout(capsys):
    for f in fields(Settings):
        declared, text = opt_of(f).help, help_text(f)
        if "{default}" in declared:
            assert f"(default {shown(f.default)})" in text, f.name
        elif "(default)" in text:  # "jpg (default), png or none": the default is named before the mark
            assert shown(f.default) in text.split("(default)")[0].split(), f.name
    with pytest.raises(SystemExit):
        make_parser().parse_args(["convert", "--help"])
    page = capsys.readouterr().out
    assert "[--val VAL_DIR | --val-pct VAL_PCT]" in page
    assert "[--page-cache {auto,drop,keep} | --keep-page-cache]" in page
    assert "--config CONFIG" in page.split("--val VAL_DIR, --val-dir VAL_DIR")[0]
    assert page.rstrip().endswith("--page-cache keep")
    io = page.split("disk I/O (each cap is shared by all processes; N or train=N,val=M):")[1]
    for flag in ("--max-read-mbps", "--max-write-mbps", "--max-iops", "--adaptive-io", "--io-target", "--page-cache",
                 "--keep-page-cache"):
        assert flag in io and flag not in page.split("disk I/O")[0].split("options:")[1], flag
    assert "(default 120)" in page and "(default 80)" in page and "in % (default 25 without" in page


@pytest.mark.parametrize(("values", "message"), [
    ({"width": 0}, "--width must be from 1 to 16384, got 0"),
    ({"height": 16385}, "--height must be from 1 to 16384, got 16385"),
    ({"channels": 2}, "--channels must be 1 (grayscale) or 3 (RGB), got 2"),
    ({"encoding": "gif"}, "--encoding must be one of jpg, png, none, got 'gif'"),
    ({"val_pct": 100}, "--val-pct must be from 0 to below 100, got 100"),
    ({"val_pct": -0.5}, "--val-pct must be from 0 to below 100, got -0.5"),
    ({"min_per_class": 0}, "--min-per-class must be at least 1, got 0"),
    ({"max_pixels": 0}, "--max-pixels must be at least 1, got 0"),
    ({"chunk_size": 4097}, "--chunk-size must be from 1 to 4096, got 4097"),
    ({"queue_depth": 65}, "--queue-depth must be from 1 to 64, got 65"),
    ({"commit_every": 0}, "--commit-every must be at least 1, got 0"),
    ({"workers": 1025}, "--workers must be from 1 to 1024 (0 = every core), got 1025"),
    ({"on_error": "stop"}, "--on-error must be skip or fail, got 'stop'"),
    ({"image_timeout": 0}, "--image-timeout must be above 0 seconds, got 0"),
    ({"page_cache": "some"}, "--page-cache must be one of auto, drop, keep, got 'some'"),
    ({"io_target": 0.5}, "--io-target must be a percentage from 1 to 100, got 0.5"),
    ({"max_per_class": 1, "min_per_class": 2}, "--max-per-class must be at least --min-per-class"),
    ({"seed": 1.5}, "option seed expects a whole number, got 1.5"),
    ({"seed": -1}, "--seed must be at least 0, got -1"),  # numpy refuses negative seeds
    ({"shuffle": "no"}, "option shuffle expects true or false, got 'no'"),
    ({"resize_mode": 3}, "option resize_mode expects text, got 3"),
    ({"image_timeout": True}, "option image_timeout expects a number, got True"),
    ({"image_timeout": float("nan")}, "--image-timeout must be above 0 seconds, got nan"),  # no hang check otherwise
    ({"io_target": float("nan")}, "--io-target must be a percentage from 1 to 100, got nan"),
    ({"val_pct": float("nan")}, "--val-pct must be from 0 to below 100, got nan"),
])
def test_checks_keep_their_messages(folders, values, message):
    with pytest.raises(UsageError) as err:
        build_settings({**folders, **values})
    assert str(err.value) == message


def test_bounds_themselves_are_allowed(folders):
    s = build_settings({**folders, "width": 16384, "height": 1, "val_pct": 0, "workers": 0, "queue_depth": 64,
                        "image_timeout": 0.01, "io_target": 100, "quality": 100, "channels": 1})
    assert (s.width, s.height, s.val_pct, s.workers, s.io_target) == (16384, 1, 0.0, 0, 100.0)


def test_preset_takes_every_option_but_the_folders(folders, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('resize-mode = "fill"\nimage_timeout = 5\nmax_iops = 7\nno_such = 1\n')
    with pytest.raises(UsageError, match="unknown option 'no_such'"):
        build_settings(folders, str(conf))
    conf.write_text('resize-mode = "fill"\nimage_timeout = 5\nmax_iops = 7\n')
    s = build_settings(folders, str(conf))
    assert (s.resize_mode, s.image_timeout, s.max_iops) == ("fill", 5.0, {"train": 7.0, "val": 7.0})
    conf.write_text(f'train_dir = "{folders["train_dir"]}"\n')
    with pytest.raises(UsageError, match="unknown option 'train_dir'"):
        build_settings(folders, str(conf))
