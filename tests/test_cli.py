"""The command line: bad input gives one clear line naming the file, and keeps finished work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softprep import open_store
from softprep.datasets import get_dataset
from softprep.demo import make_demo


def softprep(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprep.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture()
def data(tmp_path) -> Path:
    """A fresh copy-able demo dataset: 6 train images (3 shards of 2) + 3 val."""
    return make_demo(tmp_path / "data", train=6, val=3, size=(64, 128), seed=2)


def last_train_pair(root: Path) -> tuple[Path, Path]:
    image = sorted((root / "leftImg8bit" / "train").rglob("*.png"))[-1]
    label = sorted((root / "gtFine" / "train").rglob("*.png"))[-1]
    return image, label


def build_args(root, out):
    return ["build", "--root", root, "--out", out, "--scales", "0.5", "0.25", "--splits", "train",
            "--shard-size", "2", "--jobs", "1"]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("softprep: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_first_shards_intact(out: Path, root: Path):
    """The two shards before the bad image are finished and read back; the failed one is not done."""
    store = open_store(out)
    assert not store.complete
    np.testing.assert_array_equal(store.done("train"), [1, 1, 1, 1, 0, 0])
    dataset = get_dataset("cityscapes", root)
    for i, sample in enumerate(dataset.samples("train")[:4]):
        _, label = dataset.read_pair(sample)
        np.testing.assert_array_equal(store.counts("train")[i], np.bincount(label[label != 255], minlength=19))
        np.testing.assert_array_equal(store.samples("train", 0.5)[i].nn(), label[1::2, 1::2])  # footprint centres
        np.testing.assert_array_equal(store.samples("train", 0.5)[i].nn_floor(), label[::2, ::2])  # torch nearest


def test_truncated_png(data, tmp_path):
    image, _ = last_train_pair(data)
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    out = tmp_path / "s.zarr"
    result = softprep(*build_args(data, out))
    assert_one_line_error(result, str(image), "cannot decode image", "damaged")
    assert_first_shards_intact(out, data)


def test_label_id_outside_table(data, tmp_path):
    _, label = last_train_pair(data)
    raw = np.array(Image.open(label))
    raw[0, 0] = 200
    Image.fromarray(raw).save(label)
    out = tmp_path / "s.zarr"
    result = softprep(*build_args(data, out))
    assert_one_line_error(result, str(label), "label ids [200] are not in the cityscapes label table")
    assert_first_shards_intact(out, data)
    # fixing the file and rerunning resumes: only the failed shard is built
    raw[0, 0] = 7
    Image.fromarray(raw).save(label)
    again = softprep(*build_args(data, out))
    assert again.returncode == 0 and "2 images built, 4 already done" in again.stdout


def test_size_mismatch(data, tmp_path):
    image, label = last_train_pair(data)
    Image.open(label).resize((100, 50)).save(label)
    result = softprep(*build_args(data, tmp_path / "s.zarr"))
    assert_one_line_error(result, str(label), "label is 100x50 but its image", "64")


def test_missing_label_file(data, tmp_path):
    _, label = last_train_pair(data)
    label.unlink()
    result = softprep(*build_args(data, tmp_path / "s.zarr"))
    assert_one_line_error(result, str(label), "label file missing")


def test_empty_dataset_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    result = softprep(*build_args(tmp_path / "empty", tmp_path / "s.zarr"))
    assert_one_line_error(result, "split folder not found", "leftImg8bit/train")
    result = softprep("build", "--root", tmp_path / "empty", "--out", tmp_path / "s.zarr", "--scales", "0.5")
    assert_one_line_error(result, str(tmp_path / "empty"), "no cityscapes splits found")


def test_missing_root(tmp_path):
    result = softprep("build", "--root", tmp_path / "nope", "--out", tmp_path / "s.zarr", "--scales", "0.5")
    assert_one_line_error(result, str(tmp_path / "nope"), "not a folder")


def test_build_and_info(data, tmp_path):
    out = tmp_path / "s.zarr"
    result = softprep("build", "--root", data, "--out", out, "--scales", "0.125", "0.5", "--kernel", "area")
    assert result.returncode == 0, result.stderr
    assert "9 images built, 0 already done, 9 in all; complete" in result.stdout
    info = softprep("info", out)
    assert info.returncode == 0
    assert "(complete)" in info.stdout and "area" in info.stdout
    assert "train: 6/6 images done" in info.stdout and "weights exact /64" in info.stdout


def test_info_on_a_non_store(tmp_path):
    assert_one_line_error(softprep("info", tmp_path), str(tmp_path), "not a softprep store")


def test_help_lists_commands():
    result = softprep("--help")
    assert result.returncode == 0
    for command in ("build", "demo", "info"):
        assert command in result.stdout


def test_info_json_and_ids(data, tmp_path):
    out = tmp_path / "s.zarr"
    assert softprep("build", "--root", data, "--out", out, "--scales", "0.25,0.5", "--kernel", "area").returncode == 0
    described = json.loads(softprep("info", out, "--json").stdout)
    assert described["complete"] and described["targets"] == ["0.25", "0.5"]
    assert described["splits"]["train"]["targets"]["0.5"]["smallest"] == [32, 64]
    assert described["splits"]["val"]["done"] == 3 and described["splits"]["val"]["targets"]["0.25"]["denominator"] == 16
    ids = softprep("info", out, "--ids", "--split", "val").stdout.splitlines()
    dataset = get_dataset("cityscapes", data)
    assert ids == [f"val {s.id}" for s in dataset.samples("val")]
    assert_one_line_error(softprep("show", out, "nope", "--scale", "0.5", "--out", tmp_path / "x.png"),
                          f"softprep info {out} --ids` lists them")
    assert_one_line_error(softprep("show", out, ids[0].split()[1], "--scale", "0.5", "--out", tmp_path / "no" / "x.png"),
                          "folder does not exist")


def test_scales_parse_alike_everywhere_and_upsampling_is_announced(data, tmp_path):
    out = tmp_path / "s.zarr"
    refused = softprep("build", "--root", data, "--out", out, "--scales", "0.5,1.5", "--splits", "val")
    assert_one_line_error(refused, "--scales 1.5: a factor above 1 enlarges every image", "pass --allow-upsampling")
    assert not out.exists()
    result = softprep("build", "--root", data, "--out", out, "--scales", "0.5,1.5", "--splits", "val", "--allow-upsampling")
    assert result.returncode == 0, result.stderr
    assert "note: target 1.5 upsamples 3 val image(s)" in result.stderr and "128x64 -> 192x96 (WxH)" in result.stderr
    priors = softprep("priors", "--compare-kernels", "area", "--root", data, "--scales", "0.5,1.5", "--split", "val",
                      "--format", "json", "--jobs", "1")
    assert priors.returncode == 0, priors.stderr
    assert [r["target"] for r in json.loads(priors.stdout)["rows"]] == ["0.5", "1.5"]
    assert_one_line_error(softprep("priors", "--compare-kernels", "area", "--root", data, "--scales", "-1"),
                          "scale '-1': must be a finite number > 0")
    assert_one_line_error(softprep("build", "--root", data, "--out", out, "--scales", "1e308"),
                          "scale '1e308': too large (at most 32768)")
