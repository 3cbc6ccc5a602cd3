"""A store read by a foreign Zarr v3 reader, following docs/store-format.md alone: tensorstore
(no group API: attributes come from each group's zarr.json) reads a sample's colour image and its
packed soft label, equal to softprep's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from softprep import open_store
from softprep.build import build
from softprep.datasets import get_dataset

ts = pytest.importorskip("tensorstore", reason="the foreign-reader test needs tensorstore (in the dev extra)")


def _attributes(folder: Path) -> dict:
    """A group's attributes: tensorstore opens arrays only, so read the group's zarr.json."""
    return json.loads((folder / "zarr.json").read_text()).get("attributes", {})


def _array(path: Path) -> np.ndarray:
    return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}, open=True).result().read().result()


@pytest.mark.parametrize("kernel", ["area", "bicubic"])
def test_tensorstore_reads_colour_and_packed_soft_labels(demo_root, tmp_path, kernel):
    store_path = tmp_path / "s.zarr"
    build(get_dataset("cityscapes", demo_root), store_path, [0.125, 0.25], kernel=kernel, jobs=1)
    classes = _attributes(store_path)["softprep"]["classes"]
    c = len(classes)
    split_path = store_path / "train"
    buckets = _attributes(split_path)["buckets"]
    ours = open_store(store_path)
    for target in ("0.125", "0.25"):
        target_path = split_path / target
        sizes, denominators, planes = (_array(target_path / name) for name in ("sizes", "denominator", "planes"))
        for n in range(len(buckets)):
            bucket = buckets[n]
            position = buckets[:n].count(bucket)
            h, w = (int(v) for v in sizes[n])
            group = target_path / bucket
            image = _array(group / "image")[position, :h, :w]
            label = _array(group / "classes")[position, :h, :w]
            mixed = label == 254
            m, k, d = int(mixed.sum()), int(planes[n]), int(denominators[n])
            slots = _array(group / "mixed_classes")[position, :k, :m]
            raw = _array(group / "mixed_weights")[position, :k, :m]
            if raw.dtype.kind == "u":
                raw = raw.astype(np.int64)
                raw[0] = d - raw.sum(axis=0)
                weights = raw / d
            else:
                weights = raw.astype(np.float64)
            dense = np.zeros((c + 1, h, w))
            yy, xx = np.nonzero(label < c)
            dense[label[yy, xx], yy, xx] = 1.0
            yy, xx = np.nonzero(mixed)
            for slot in range(k):
                dense[np.minimum(slots[slot], c), yy, xx] += weights[slot]
            sample = ours.samples("train", target)[n]
            np.testing.assert_array_equal(image, sample.image)
            np.testing.assert_allclose(dense[:c], sample.soft(), rtol=0, atol=1e-6)
            np.testing.assert_array_equal(_array(group / "nn")[position, :h, :w], sample.nn())
