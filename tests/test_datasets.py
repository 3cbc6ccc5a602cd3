"""Cityscapes adapter: the official id table (from cityscapesScripts), pairing and layout."""

from __future__ import annotations

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as official_labels
from PIL import Image

from softprep import SoftprepError
from softprep.datasets import get_dataset
from softprep.datasets.cityscapes import LABEL_ID_TO_TRAIN_ID, NAME_TO_LABEL_ID, Cityscapes
from tests.conftest import require_real_cityscapes


def test_label_table_equals_cityscapes_scripts():
    official = {label.id: label.trainId for label in official_labels if label.id >= 0}
    official = {i: (255 if t in (-1, 255) else t) for i, t in official.items()}
    assert LABEL_ID_TO_TRAIN_ID == official
    train_names = {label.trainId: label.name for label in official_labels if label.trainId not in (-1, 255)}
    assert list(Cityscapes.classes) == [train_names[i] for i in range(19)]
    colours = {label.trainId: label.color for label in official_labels if label.trainId not in (-1, 255)}
    assert list(Cityscapes.palette) == [colours[i] for i in range(19)]
    by_name = {label.name: label.id for label in official_labels}
    assert all(by_name[name] == label_id for name, label_id in NAME_TO_LABEL_ID.items())


def test_every_label_id_maps_like_the_official_table(tmp_path):
    dataset = _one_pair(tmp_path, np.arange(34, dtype=np.uint8).reshape(2, 17))
    label = dataset.read_label(dataset.samples("train")[0])
    np.testing.assert_array_equal(label.ravel(), [LABEL_ID_TO_TRAIN_ID[i] for i in range(34)])


def test_train_id_files_are_preferred(tmp_path):
    dataset = _one_pair(tmp_path, np.full((2, 3), 7, np.uint8))
    folder = tmp_path / "gtFine" / "train" / "x"
    Image.fromarray(np.full((2, 3), 4, np.uint8)).save(folder / "x_000000_000000_gtFine_labelTrainIds.png")
    assert (dataset.read_label(dataset.samples("train")[0]) == 4).all()


def test_pairs_are_sorted_and_named(demo_root):
    dataset = get_dataset("cityscapes", demo_root)
    assert dataset.splits() == ["train", "val"]
    samples = dataset.samples("train")
    assert [s.id for s in samples] == sorted(s.id for s in samples)
    assert samples[0].image.name == samples[0].id + "_leftImg8bit.png"
    assert samples[0].label.name == samples[0].id + "_gtFine_labelIds.png"


def test_demo_labels_use_official_ids_and_thin_classes(demo_root):
    dataset = get_dataset("cityscapes", demo_root)
    raw = np.concatenate([np.array(Image.open(s.label)).ravel() for s in dataset.samples("train")])
    assert raw.max() <= 33 and NAME_TO_LABEL_ID["road"] in raw  # label ids, not train ids
    present = {dataset.classes[i] for i in np.unique([LABEL_ID_TO_TRAIN_ID[v] for v in np.unique(raw)]) if i != 255}
    assert {"road", "sidewalk", "building", "sky", "vegetation", "pole", "person"} <= present


def test_demo_is_deterministic(tmp_path):
    from softprep.demo import make_demo

    a = make_demo(tmp_path / "a", train=2, val=1, size=(64, 128), seed=4)
    b = make_demo(tmp_path / "b", train=2, val=1, size=(64, 128), seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 6
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_real_cityscapes_samples():
    root = require_real_cityscapes()
    dataset = get_dataset("cityscapes", root)
    assert dataset.splits() == ["train", "val"]
    sample = dataset.samples("train")[0]
    assert dataset.size(sample) == (1024, 2048)
    image, label = dataset.read_pair(sample)
    assert image.shape == (1024, 2048, 3) and label.dtype == np.uint8
    assert set(np.unique(label)) <= set(range(19)) | {255}


def test_unknown_dataset():
    with pytest.raises(SoftprepError, match="unknown dataset 'kitti'; choose one of ade20k, camvid, cityscapes, folder, mapillary, mapillary-v2"):
        get_dataset("kitti", ".")


def _one_pair(root, label_ids):
    image_dir, label_dir = root / "leftImg8bit" / "train" / "x", root / "gtFine" / "train" / "x"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((*label_ids.shape, 3), np.uint8)).save(image_dir / "x_000000_000000_leftImg8bit.png")
    Image.fromarray(label_ids).save(label_dir / "x_000000_000000_gtFine_labelIds.png")
    return get_dataset("cityscapes", root)
