"""Shared fixtures: reference one-hot volumes, the demo dataset on disk, the real samples."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "fixtures"
CITYSCAPES_REAL = REAL / "cityscapes-real"


def one_hot(label: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """``(C + 1, H, W) float64``: plane C is the ignore mask."""
    codes = np.where(label == ignore_index, num_classes, label)
    return (codes[None] == np.arange(num_classes + 1)[:, None, None]).astype(np.float64)


def blobby_labels(rng: np.random.Generator, shape, num_classes: int, block: int = 3, ignore_share: float = 0.05):
    """``(H, W) uint8`` label map of small blocks plus scattered ignore pixels."""
    h, w = shape
    coarse = rng.integers(0, num_classes, (h // block + 1, w // block + 1))
    label = np.repeat(np.repeat(coarse, block, 0), block, 1)[:h, :w].astype(np.uint8)
    label[rng.random(shape) < ignore_share] = 255
    return label


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo dataset: 6 train + 3 val images of 64x128."""
    from softprep.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("demo"), train=6, val=3, size=(64, 128), seed=1)


def require_real_cityscapes() -> Path:
    if not CITYSCAPES_REAL.is_dir():
        pytest.skip(f"real Cityscapes samples not found at {CITYSCAPES_REAL} (they live in ../shared/fixtures beside the repo)")
    return CITYSCAPES_REAL


def write_cityscapes(root: Path, labels: list[np.ndarray], split: str = "train", city: str = "x") -> Path:
    """A Cityscapes-layout folder holding ``(H, W) uint8`` train-id maps (``labelTrainIds``), grey images."""
    image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for i, label in enumerate(labels):
        name = f"{city}_{i:06d}_000019"
        Image.fromarray(np.full((*label.shape, 3), 128, np.uint8)).save(image_dir / f"{name}_leftImg8bit.png")
        Image.fromarray(label.astype(np.uint8)).save(label_dir / f"{name}_gtFine_labelTrainIds.png")
    return root


def write_folder_dataset(root: Path, sizes, split_folders: bool) -> Path:
    """A `folder`-adapter dataset: 3 classes (raw 1, 2 -> ground; 9 -> a 1-px wire; 3 -> sky; 0, 255 ignored)
    of the given ``(H, W)`` sizes, alternating train/val when ``split_folders``."""
    rng = np.random.default_rng(5)
    table = {"classes": [{"name": "ground", "color": [10, 20, 30], "values": [1, 2]},
                         {"name": "wire", "color": [200, 0, 0], "values": [9]},
                         {"name": "sky", "color": [0, 0, 250], "values": [3]}],
             "ignore": [0, 255]}
    root.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps(table))
    for k, (h, w) in enumerate(sizes):
        sub = (["train", "val"][k % 2],) if split_folders else ()
        for folder in ("images", "masks"):
            (root / folder).joinpath(*sub).mkdir(parents=True, exist_ok=True)
        mask = rng.choice(np.array([0, 1, 2, 3, 3], np.uint8), size=(h, w))
        mask[:, w // 3] = 9  # a 1-px wire
        mask[: h // 4] = 255
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root.joinpath("images", *sub, f"img{k}.jpg"))
        Image.fromarray(mask).save(root.joinpath("masks", *sub, f"img{k}.png"))
    return root


def comparable_bytes(store: Path, relative: Path) -> bytes:
    """A store file's bytes for comparing two builds: the root metadata without the build identity
    (a fresh random id per creation), every other file as it is."""
    data = (store / relative).read_bytes()
    if str(relative) != "zarr.json":
        return data
    meta = json.loads(data)
    meta["attributes"]["softprep"].pop("build_id", None)
    return json.dumps(meta, sort_keys=True).encode()
