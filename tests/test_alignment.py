"""Every hard label softprep makes is aligned with its image (issue 26): on synthetic label maps
(one-pixel lines, a checkerboard, a disc) at factors 1/2 to 1/16 of odd sizes, each class's
centroid in the hard label lies within half an output pixel of its centroid in the exact area soft
label of the same output, on every path: the store's ``nn`` map, the training dataset (with and
without its augmentation), the Lightning data module, the torchvision v2 and Albumentations
helpers, and the Hugging Face helper. torch ``nearest`` (``nn_floor``) is measured too: it samples
``(s - 1) / 2`` source pixels up-left of each pixel's centre, the offset the centre rule removes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from softprep import open_store
from softprep.build import build
from softprep.datasets import get_dataset
from softprep.plan import plan_for_size
from softprep.resample import soft_label

SIZE = (237, 311)  # odd sides: no factor divides them
FACTORS = (0.5, 1 / 3, 0.25, 0.2, 0.125, 0.0625)
CLASSES = ("background", "disc", "checkerboard", "horizontal line", "vertical line")


def synthetic_label(height: int, width: int) -> np.ndarray:
    """``(H, W) uint8``: a disc (1), a checkerboard of 7-px squares (2, with background between),
    and one-pixel lines, a horizontal (3) and a vertical one (4), each its own class: a line a
    hard rule keeps must stay in the output pixel that holds it."""
    label = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    label[(yy - 0.61 * height) ** 2 + (xx - 0.27 * width) ** 2 < (0.22 * height) ** 2] = 1
    board = (yy < height // 2) & (xx > width // 2)
    label[board & (((yy // 7) + (xx // 7)) % 2 == 0)] = 2
    label[int(0.83 * height), int(0.55 * width):] = 3
    label[int(0.6 * height):, int(0.77 * width)] = 4
    return label


def centroids(weights: np.ndarray) -> dict[int, np.ndarray]:
    """``(C, h, w)`` class weights -> ``{class: (y, x)}`` weighted centroid (output pixel units) of each class present."""
    h, w = weights.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    return {c: np.array([(yy * plane).sum(), (xx * plane).sum()]) / plane.sum()
            for c, plane in enumerate(weights) if plane.sum() > 0}


def one_hot(hard: np.ndarray, num_classes: int = len(CLASSES)) -> np.ndarray:
    return np.stack([(hard == c).astype(np.float64) for c in range(num_classes)])


def offsets(hard: np.ndarray, soft: np.ndarray) -> dict[int, np.ndarray]:
    """Per class in both: the hard label's centroid minus the soft label's, in output pixels."""
    ours, reference = centroids(one_hot(np.asarray(hard))), centroids(np.asarray(soft, np.float64))
    return {c: ours[c] - reference[c] for c in ours if c in reference}


def assert_aligned(hard, soft, where: str) -> None:
    found = offsets(hard, soft)
    assert found, where
    for c, (dy, dx) in found.items():
        assert abs(dy) <= 0.5 and abs(dx) <= 0.5, f"{where}: {CLASSES[c]} centroid off by ({dy:+.3f}, {dx:+.3f}) px"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned") / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    label = synthetic_label(*SIZE)
    for i, flip in enumerate((False, True)):  # a second image, turned by 180 degrees: other phases
        mask = label[::-1, ::-1] if flip else label
        Image.fromarray(np.ascontiguousarray(mask)).save(root / "masks" / f"s{i}.png")
        Image.fromarray(np.ascontiguousarray(np.repeat(mask[..., None] * 60, 3, axis=2))).save(root / "images" / f"s{i}.png")
    (root / "classes.json").write_text(json.dumps({"classes": [{"name": n} for n in CLASSES]}))
    return root


@pytest.fixture(scope="module")
def store(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("aligned-store") / "s.zarr"
    build(get_dataset("folder", dataset), out, list(FACTORS), jobs=1)
    return out


def test_the_stores_nn_map_is_aligned_and_nn_floor_is_not(store):
    opened = open_store(store)
    assert opened.nn_rule == "nearest-exact"
    for target in opened.targets:
        view = opened.samples("train", target)
        floor_shift = []
        for sample in view:
            assert_aligned(sample.nn(), sample.soft(), f"nn at {target}")
            floor_shift += [v for c, v in offsets(sample.nn_floor(), sample.soft()).items() if c == 1]
        # torch nearest samples pixel floor(i s) for output i, whose centre lies (i + 1/2) s - floor(i s) - 1/2
        # source pixels up-left of the footprint's ((s - 1) / 2 at a whole factor s): the disc appears
        # that far down-right in its labels, in output pixels
        plan = opened.spec.plan("train", 0, target)
        expected = [np.mean((np.arange(table.out_size) + 0.5) * (full / table.out_size) - table.index[:, 0] - 0.5)
                    / (full / table.out_size) for table, full in ((plan.floor_rows, SIZE[0]), (plan.floor_cols, SIZE[1]))]
        np.testing.assert_allclose(np.mean(floor_shift, axis=0), expected, atol=0.12, err_msg=target)


def _dataset_offsets(item: dict) -> dict[int, np.ndarray]:
    valid = (item["nn"] != 255).numpy()
    soft = item["soft"].numpy() * valid  # padding: neither label counts
    return offsets(np.where(valid, item["nn"].numpy(), 255), soft)


@pytest.mark.parametrize("scale", ["0.125", "0.25"])
def test_training_hard_labels_are_aligned_through_the_augmentation(store, scale):
    """The dataset's ``nn`` (default ``centre``) against its own soft label: the stored sample as is,
    and through the augmentation (resize by U(0.5, 2) from the smallest stored target at or above the
    size needed, crop, flip), each class's centroid averaged over 24 draws per image (a random crop
    leaves slivers of a class whose centroids differ by quantisation alone, either way)."""
    from softprep_train.data import Augment, StoreDataset, finish_sample

    plain = StoreDataset(str(store), "train", scale)
    augmented = StoreDataset(str(store), "train", scale, Augment((12, 16)))
    for index in range(len(plain)):
        assert_aligned(plain[index]["nn"].numpy(), plain[index]["soft"].numpy(), f"dataset {scale} image {index}")
        drawn: dict[int, list] = {}
        for seed in range(24):
            for c, offset in _dataset_offsets(finish_sample(augmented.raw(index, seed))).items():
                drawn.setdefault(c, []).append(offset)
        for c, values in drawn.items():
            dy, dx = np.mean(values, axis=0)
            assert abs(dy) <= 0.5 and abs(dx) <= 0.5, f"augmented {scale} image {index}: {CLASSES[c]} off by ({dy:+.3f}, {dx:+.3f})"


def test_lightning_batches_carry_the_datasets_aligned_hard_labels(store):
    """The data module's default is ``centre``: its first batch's ``nn`` is, item for item, the aligned
    labels the dataset test above checks."""
    pytest.importorskip("lightning")
    from softprep_train.data import Augment, StoreDataset
    from softprep_train.lightning import SoftLabelDataModule

    data = SoftLabelDataModule(str(store), scale=0.25, batch_size=2, workers=0, val_split=None)
    data.setup("fit")
    loader = data.train_dataloader()
    batch = next(iter(loader))
    aligned = StoreDataset(str(store), "train", 0.25, Augment(data.crop), nn_sampling="centre")
    for nn, key in zip(batch["nn"], list(loader.sampler)[:2]):
        torch.testing.assert_close(nn, aligned[key]["nn"], rtol=0, atol=0)


@pytest.mark.parametrize("factor", FACTORS)
def test_torchvision_albumentations_and_hf_helpers_are_aligned(dataset, factor):
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from softprep_train.hf import hard_label_for_logits, soft_label_for_logits
    from softprep_train.transforms import AlignedMask, ToAlignedMask, ToSoftLabel, albumentations_hard_label

    label = np.asarray(Image.open(dataset / "masks" / "s0.png"))
    image = np.asarray(Image.open(dataset / "images" / "s0.png"))
    plan = plan_for_size("area", False, SIZE, (int(SIZE[0] * factor), int(SIZE[1] * factor)))
    soft = soft_label(label, plan.rows, plan.cols, len(CLASSES)).dense()
    _, hard = ToAlignedMask(target=factor)(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                                           tv_tensors.Mask(torch.from_numpy(label)))
    assert isinstance(hard, AlignedMask)
    assert_aligned(hard.numpy(), soft, "ToAlignedMask")
    # resized again inside a v2 pipeline: still at pixel centres
    half = (max(1, hard.shape[0] // 2), max(1, hard.shape[1] // 2))
    again = v2.Resize(half)(hard)
    coarser = ToSoftLabel(len(CLASSES), target=None)(tv_tensors.Mask(torch.from_numpy(label)))
    plan_half = plan_for_size("area", False, SIZE, half)
    assert isinstance(again, AlignedMask) and isinstance(coarser, torch.Tensor)
    assert_aligned(again.numpy(), soft_label(label, plan_half.rows, plan_half.cols, len(CLASSES)).dense(), "v2.Resize")
    assert_aligned(albumentations_hard_label(target=factor)(image=image, mask=label)["mask"], soft, "albumentations")
    full = torch.from_numpy(label.astype(np.int64))[None]
    logits_size = soft.shape[1:]
    assert_aligned(hard_label_for_logits(full, logits_size)[0].numpy(),
                   soft_label_for_logits(torch.from_numpy(one_hot(label)).float()[None], logits_size)[0].numpy(), "hf")
