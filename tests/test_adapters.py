"""ADE20K, Mapillary Vistas, CamVid and the folder adapter on real samples (skipped when absent):
build -> verify clean, area priors exactly zero at every target, class counts equal an independent
count of the label files. Also: label formats that are refused, and default splits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softprep import SoftprepError, open_store
from softprep.build import build
from softprep.datasets import get_dataset
from softprep.priors import store_priors
from softprep.verify import verify
from tests.conftest import REAL, ROOT, write_folder_dataset

CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"
TARGETS = [0.125, 0.25, 0.5]


def require(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real samples not found at {path} (they live in ../shared beside the repo)")
    return path


def raw_values(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def independent_counts(label_files, raw_to_train: dict[int, int], num_classes: int) -> np.ndarray:
    """Per-class pixel counts by a plain numpy count of the raw label files."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for path in label_files:
        values, numbers = np.unique(raw_values(path), return_counts=True)
        for value, number in zip(values, numbers):
            train_id = raw_to_train[int(value)]
            if train_id != 255:
                counts[train_id] += number
    return counts


def build_and_check(name: str, root: Path, out: Path, raw_to_train: dict[int, int], splits=None) -> None:
    dataset = get_dataset(name, root)
    build(dataset, out, TARGETS, kernel="area", splits=splits, jobs=2)
    assert verify(out, root=root, jobs=2) == []
    store = open_store(out)
    for split in store.splits:
        files = [Path(s.label) for s in dataset.samples(split)]
        expected = independent_counts(files, raw_to_train, dataset.num_classes)
        np.testing.assert_array_equal(store.counts(split).sum(axis=0), expected)
        table = store_priors(store, split)
        area = [row for row in table.rows if row.strategy == "area"]
        assert len(area) == len(TARGETS)
        assert all(row.exact and all(d == 0 for d in row.discrepancy) for row in area), split
        assert any(row.sum_abs > 0 for row in table.rows if row.strategy == "nearest")


def test_ade20k(tmp_path):
    root = require(REAL / "ade20k-real")
    dataset = get_dataset("ade20k", root)
    assert dataset.num_classes == 150 and dataset.classes[:3] == ("wall", "building", "sky")
    assert dataset.splits() == ["val"] and len(dataset.samples("val")) == 3
    build_and_check("ade20k", root, tmp_path / "ade.zarr", {0: 255, **{v: v - 1 for v in range(1, 151)}})
    sizes = open_store(tmp_path / "ade.zarr").spec.splits["val"].sizes
    assert sorted(map(tuple, sizes)) == [(300, 400), (364, 500), (512, 683)]


def test_mapillary_v12(tmp_path):
    root = require(REAL / "mapillary-real")
    dataset = get_dataset("mapillary", root)
    assert dataset.num_classes == 65 and dataset.classes[-1] == "Ego Vehicle" and dataset.palette[0] == (165, 42, 42)
    build_and_check("mapillary", root, tmp_path / "m.zarr", {**{v: v for v in range(65)}, 65: 255})


def test_mapillary_reads_the_class_table_of_its_config(tmp_path):
    root = tmp_path / "vistas"
    shutil.copytree(require(REAL / "mapillary-real"), root)
    labels = [{"readable": f"class {i}", "color": [i, i, i], "evaluate": i != 17} for i in range(66)]
    (root / "config_v1.2.json").write_text(json.dumps({"labels": labels}))
    dataset = get_dataset("mapillary", root)
    assert dataset.num_classes == 65 and "class 17" not in dataset.classes
    label = dataset.read_label(dataset.samples("train")[0])
    raw = raw_values(dataset.samples("train")[0].label)
    assert (label[raw == 17] == 255).all() and (label[raw == 44] == 43).all()  # ids above 17 shift down by one


def test_camvid(tmp_path):
    root = require(CAMVID)
    dataset = get_dataset("camvid", root)
    assert dataset.splits() == ["train", "val", "test"] and dataset.num_classes == 11
    assert [len(dataset.samples(s)) for s in dataset.splits()] == [367, 101, 233]
    for split in dataset.splits():  # the official pairing lists name the same files
        listed = sorted(Path(line.split()[0]).stem for line in (root / "CamVid" / f"{split}.txt").read_text().splitlines())
        assert [s.id for s in dataset.samples(split)] == listed, split
    build_and_check("camvid", root, tmp_path / "c.zarr", {**{v: v for v in range(11)}, 11: 255}, splits=["val"])


def test_folder_dataset_flat_and_with_splits(tmp_path):
    flat = write_folder_dataset(tmp_path / "flat", [(40, 64), (33, 50), (64, 64)], split_folders=False)
    dataset = get_dataset("folder", flat)
    assert dataset.classes == ("ground", "wire", "sky") and dataset.splits() == ["train"]
    mapping = {0: 255, 255: 255, 1: 0, 2: 0, 9: 1, 3: 2}
    build_and_check("folder", flat, tmp_path / "flat.zarr", mapping)
    nested = write_folder_dataset(tmp_path / "nested", [(40, 64), (33, 50), (64, 64)], split_folders=True)
    assert get_dataset("folder", nested).splits() == ["train", "val"]
    build_and_check("folder", nested, tmp_path / "nested.zarr", mapping)


def test_folder_class_table_errors_are_one_line(tmp_path):
    root = write_folder_dataset(tmp_path / "d", [(8, 8)], split_folders=False)
    table = json.loads((root / "classes.json").read_text())
    table["classes"][2].pop("values")  # sky would default to raw value 2, which ground already has
    (root / "classes.json").write_text(json.dumps(table))
    with pytest.raises(SoftprepError, match=r"classes.json: bad class table \(ValueError: raw value 2 is listed twice\)"):
        get_dataset("folder", root)
    (root / "classes.json").unlink()
    with pytest.raises(SoftprepError, match="class table not found"):
        get_dataset("folder", root)


def test_folder_dataset_one_command(tmp_path):
    root = write_folder_dataset(tmp_path / "mine", [(40, 64), (33, 50)], split_folders=False)
    out = tmp_path / "mine.zarr"
    result = subprocess.run([sys.executable, "-m", "softprep.cli", "build", "--dataset", "folder", "--root", str(root),
                             "--out", str(out), "--scales", "0.5", "--kernel", "area"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "2 images built" in result.stdout and open_store(out).classes == ["ground", "wire", "sky"]


@pytest.mark.parametrize("bad,message", [
    ("jpeg", "label map is a JPEG"),
    ("rgb", "has PIL mode 'RGB'"),
    ("bits", "has PIL mode '1'"),
    ("wide", "16-bit label map with values up to 300"),
])
def test_lossy_or_wide_label_maps_are_refused_naming_the_file(tmp_path, bad, message):
    root = write_folder_dataset(tmp_path / "d", [(8, 8)], split_folders=False)
    mask = root / "masks" / "img0.png"
    values = np.asarray(Image.open(mask))
    if bad == "jpeg":  # a JPEG saved under a .png name, as a careless conversion leaves it
        Image.fromarray(values).save(mask, format="JPEG")
    elif bad == "rgb":
        Image.fromarray(np.stack([values] * 3, -1)).save(mask)
    elif bad == "bits":
        Image.fromarray(values > 100).save(mask)
    else:
        Image.fromarray(np.where(values == 9, 300, values.astype(np.uint16)).astype(np.uint16)).save(mask)
    dataset = get_dataset("folder", root)
    with pytest.raises(SoftprepError, match=message) as error:
        dataset.read_label(dataset.samples("train")[0])
    assert str(mask) in str(error.value) and "\n" not in str(error.value)


def test_a_mask_saved_as_jpeg_is_refused_as_a_jpeg_not_as_missing(tmp_path):
    """A `folder` mask saved as masks/NAME.jpg: one line saying it is a JPEG (it was "no label")."""
    root = write_folder_dataset(tmp_path / "d", [(8, 8), (8, 8)], split_folders=False)
    mask = root / "masks" / "img1.png"
    Image.open(mask).save(root / "masks" / "img1.jpg", format="JPEG")
    mask.unlink()
    with pytest.raises(SoftprepError) as error:
        get_dataset("folder", root).samples("train")
    assert str(error.value) == (f"{root / 'masks' / 'img1.jpg'}: label map is a JPEG (lossy compression changes label "
                                f"values at every boundary); save the masks as PNG (1 JPEG mask(s) in {root / 'masks'})")


def test_16_bit_labels_within_8_bits_are_read(tmp_path):
    root = write_folder_dataset(tmp_path / "d", [(8, 8)], split_folders=False)
    mask = root / "masks" / "img0.png"
    values = np.asarray(Image.open(mask))
    Image.fromarray(values.astype(np.uint16)).save(mask)
    dataset = get_dataset("folder", root)
    assert dataset.read_label(dataset.samples("train")[0]).dtype == np.uint8


def test_unpaired_files_are_reported(tmp_path):
    root = write_folder_dataset(tmp_path / "d", [(8, 8), (8, 8)], split_folders=False)
    (root / "images" / "img1.jpg").unlink()
    with pytest.raises(SoftprepError, match=r"img1.png: no image img1\.\* in .*1 label\(s\) without an image"):
        get_dataset("folder", root).samples("train")
    (root / "masks" / "img0.png").unlink()
    with pytest.raises(SoftprepError, match=r"img0.jpg: no label .*img0.png"):
        get_dataset("folder", root).samples("train")


def test_cityscapes_builds_train_and_val_by_default(demo_root, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(demo_root, root)
    for kind in ("leftImg8bit", "gtFine"):  # a test split (labels all ignore, as released) and train_extra
        shutil.copytree(root / kind / "val", root / kind / "test")
        shutil.copytree(root / kind / "val", root / kind / "train_extra")
    dataset = get_dataset("cityscapes", root)
    assert dataset.splits() == ["train", "val"]
    out = tmp_path / "s.zarr"
    build(dataset, out, [0.25], jobs=1)
    assert open_store(out).splits == ["train", "val"]
    build(dataset, tmp_path / "t.zarr", [0.25], splits=["test"], jobs=1)
    assert open_store(tmp_path / "t.zarr").splits == ["test"]
