"""Splits whose images differ in size: every kernel, exact per-image denominators, priors against
an independent dense computation, the bare-zarr recipe, size buckets and pixel targets."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from softprep import SoftprepError, open_store
from softprep.build import build
from softprep.datasets import get_dataset
from softprep.kernels import axis_weights
from softprep.plan import parse_target
from softprep.priors import store_priors, strategy_name
from tests.conftest import blobby_labels, one_hot, write_cityscapes

C = 19
ROOT = Path(__file__).resolve().parents[1]
SIZES = [(64, 128), (50, 100), (33, 47), (64, 120)]  # 64x128 and 64x120 share a bucket
KERNELS = [("nearest", False), ("bilinear", False), ("bilinear", True), ("bicubic", False), ("area", False)]


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory) -> Path:
    rng = np.random.default_rng(11)
    labels = [blobby_labels(rng, size, C, block=int(rng.integers(2, 5))) for size in SIZES]
    return write_cityscapes(tmp_path_factory.mktemp("mixed"), labels)


def reference_dense(label: np.ndarray, kernel: str, antialias: bool, size: tuple[int, int]) -> np.ndarray:
    """``(C + 1, h, w)``: the one-hot volume (plane C = ignore) through the dense resampling matrices."""
    h, w = label.shape
    rows, cols = axis_weights(kernel, h, size[0], antialias).dense(h), axis_weights(kernel, w, size[1], antialias).dense(w)
    return np.einsum("uh,chw,vw->cuv", rows, one_hot(label, C), cols)


@pytest.mark.parametrize("kernel,antialias", KERNELS)
def test_every_pixel_sums_to_its_valid_fraction_and_priors_match_a_dense_reference(mixed_root, tmp_path, kernel, antialias):
    dataset = get_dataset("cityscapes", mixed_root)
    out = tmp_path / "s.zarr"
    build(dataset, out, [0.3, 0.5, "short20"], kernel=kernel, antialias=antialias, jobs=1)
    store = open_store(out)
    labels = [dataset.read_pair(s)[1] for s in dataset.samples("train")]
    table = store_priors(store)
    for target in store.targets:
        view = store.samples("train", target)
        masses = np.zeros(C)
        for sample, label in zip(view, labels):
            assert sample.shape == parse_target(target).output_size(*label.shape)
            reference = reference_dense(label, kernel, antialias, sample.shape)
            dense = sample.soft()
            valid = reference[:C].sum(axis=0)
            if kernel == "bicubic":  # negative lobes: weights clamped, rescaled to the clipped valid fraction
                valid = np.clip(valid, 0, 1)
                assert dense.min() >= 0
            else:
                np.testing.assert_allclose(dense, reference[:C], atol=1e-6)
            np.testing.assert_allclose(dense.sum(axis=0), valid, atol=1e-5)
            masses += dense.sum(axis=(1, 2)) * label.size / (sample.shape[0] * sample.shape[1])  # full-resolution weight
        counts = sum(one_hot(label, C)[:C].sum(axis=(1, 2)) for label in labels)
        row = next(r for r in table.rows if r.target == target and r.strategy == strategy_name(kernel, antialias))
        expected = counts / counts.sum() - masses / masses.sum()
        np.testing.assert_allclose([float(d) for d in row.discrepancy], expected, atol=1e-6)
        if kernel == "area" or kernel == "nearest":
            assert row.exact and view.exact
        if kernel == "area":
            assert all(d == 0 for d in row.discrepancy), target


def test_issue_reproduction_area_at_0_3_is_exact_per_image(tmp_path):
    """Two images 64x128 and 50x100, area at 0.3: once 4096 and 100 per pixel, now sums <= 1 and D = 0."""
    labels = [np.zeros((64, 128), np.uint8), np.full((50, 100), 5, np.uint8)]
    labels[0][:, 60:] = 2
    labels[1][10:20] = 255
    out = tmp_path / "s.zarr"
    build(get_dataset("cityscapes", write_cityscapes(tmp_path / "data", labels)), out, [0.3], kernel="area", jobs=1)
    view = open_store(out).samples("train", 0.3)
    denominators = view.denominators.tolist()
    assert len(set(denominators)) == 2 and all(d > 0 for d in denominators)
    for sample, label in zip(view, labels):
        soft = sample.soft(dense=False)
        assert soft.denominator == denominators[sample.index]
        sums = soft.weights.sum(axis=0, dtype=np.int64)
        assert sums.max() <= soft.denominator
        np.testing.assert_allclose(sample.soft().sum(0), reference_dense(label, "area", False, sample.shape)[:C].sum(0), atol=1e-6)
    table = store_priors(open_store(out))
    area = next(r for r in table.rows if r.strategy == "area")
    assert area.exact and all(d == Fraction(0) for d in area.discrepancy)


def test_buckets_hold_each_image_at_most_a_little_padded(mixed_root, tmp_path):
    out = tmp_path / "s.zarr"
    build(get_dataset("cityscapes", mixed_root), out, [1.0], kernel="area", jobs=1)
    store = open_store(out)
    split = store.spec.splits["train"]
    assert split.buckets == ["64x128", "54x108", "39x54", "64x128"]
    view = store.samples("train", 1.0)
    for sample in view:
        bucket_shape = view.bucket(sample.index)["image"].shape[1:3]
        h, w = sample.shape
        assert bucket_shape[0] * bucket_shape[1] <= 1.42 * h * w, (sample.shape, bucket_shape)
    assert view.bucket(0)["image"].shape == (2, 64, 128, 3)  # the two 64-row images share one array


def test_small_image_beside_a_huge_one_reads_only_its_own_bucket(tmp_path):
    labels = [np.zeros((2100, 2100), np.uint8), np.ones((256, 256), np.uint8)]
    out = tmp_path / "s.zarr"
    build(get_dataset("cityscapes", write_cityscapes(tmp_path / "data", labels)), out, [1.0], kernel="area", jobs=1)
    view = open_store(out).samples("train", 1.0)
    assert view.bucket(1)["image"].shape == (1, 256, 256, 3)
    assert view.bucket(1)["classes"].shape[1:] == (256, 256)
    np.testing.assert_array_equal(view[1].nn(), labels[1])


def test_bare_zarr_recipe_reads_a_mixed_size_store(mixed_root, tmp_path):
    out = tmp_path / "s.zarr"
    build(get_dataset("cityscapes", mixed_root), out, [0.3], kernel="bilinear", jobs=1)
    text = (ROOT / "docs" / "store-format.md").read_text()
    recipe = re.search(r"```python\n(.*?)```", text, re.S).group(1).replace("\nn = 0 ", "\n").replace("STORE.zarr", str(out))
    recipe = recipe.replace('["0.125"]', '["0.3"]')
    view = open_store(out).samples("train", 0.3)
    assert not view.exact or len(set(view.denominators.tolist())) > 1
    for n in range(len(view)):
        namespace = {"n": n}
        exec(recipe, namespace)
        np.testing.assert_allclose(namespace["dense"], view[n].soft(), atol=1e-7)


def test_bilinear_soft_label_equals_torch_for_each_size(mixed_root, tmp_path):
    dataset = get_dataset("cityscapes", mixed_root)
    out = tmp_path / "s.zarr"
    build(dataset, out, [0.5], kernel="bilinear", jobs=1)
    view = open_store(out).samples("train", 0.5)
    for sample, pair in zip(view, dataset.samples("train")):
        _, label = dataset.read_pair(pair)
        volume = torch.from_numpy(one_hot(label, C))[None]
        reference = F.interpolate(volume, size=sample.shape, mode="bilinear", align_corners=False)[0, :C].numpy()
        np.testing.assert_allclose(sample.soft(), reference, atol=1e-6)


def test_version_1_store_is_refused_with_how_to_rebuild(tmp_path):
    out = tmp_path / "old.zarr"
    zarr.open_group(str(out), mode="w", attributes={"softprep": {"format": "softprep-store", "format_version": 1,
                                                                 "dataset": "cityscapes"}})
    with pytest.raises(SoftprepError, match=r"store format 1 cannot be read .* rebuild it: softprep build --dataset cityscapes .*--overwrite"):
        open_store(out)


def test_pixel_targets_upsample_small_images(tmp_path):
    labels = [np.zeros((40, 60), np.uint8), np.ones((200, 100), np.uint8)]
    out = tmp_path / "s.zarr"
    build(get_dataset("cityscapes", write_cityscapes(tmp_path / "data", labels)), out, ["short64", "fit50x50"],
          kernel="area", jobs=1)
    store = open_store(out)
    assert store.targets == ["short64", "fit50x50"]
    assert store.samples("train", "short64").sizes.tolist() == [[64, 96], [128, 64]]
    assert store.samples("train", "fit50x50").sizes.tolist() == [[33, 50], [50, 25]]
    table = store_priors(store)
    assert all(d == 0 for r in table.rows if r.strategy == "area" for d in r.discrepancy)
