"""Kernels against torch's F.interpolate and hand-computed cases, for colour and soft labels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softprep.errors import SoftprepError
from softprep.kernels import axis_weights
from softprep.plan import parse_target
from softprep.resample import nearest_labels, resize_image, soft_label
from tests.conftest import blobby_labels, one_hot

SCALES = (0.125, 0.25, 0.3, 0.5, 0.77, 1.5)
SIZES = ((37, 53), (64, 96), (31, 80))
CASES = [("nearest", False), ("bilinear", False), ("bilinear", True), ("bicubic", False), ("bicubic", True),
         ("area", False)]
NUM_CLASSES = 6


def torch_resize(volume: np.ndarray, size, kernel: str, antialias: bool) -> np.ndarray:
    """``(C, H, W) float64`` -> ``(C, H', W')`` through F.interpolate."""
    kwargs = {"align_corners": False} if kernel in ("bilinear", "bicubic") else {}
    if antialias:
        kwargs["antialias"] = True
    out = F.interpolate(torch.from_numpy(volume)[None], size=size, mode=kernel, **kwargs)
    return out[0].numpy()


def exact_box(volume: np.ndarray, size) -> np.ndarray:
    """Exact box filter at any ratio: replicate each pixel out_h x out_w times, then average
    in_h x in_w blocks (an independent reference for fractional ``area``)."""
    c, h, w = volume.shape
    oh, ow = size
    up = np.repeat(np.repeat(volume, oh, axis=1), ow, axis=2)
    return up.reshape(c, oh, h, ow, w).mean(axis=(2, 4))


def reference(volume, size, kernel, antialias):
    h, w = volume.shape[1:]
    if kernel == "area" and (h % size[0] or w % size[1]):
        return exact_box(volume, size)
    return torch_resize(volume, size, kernel, antialias)


def clamp_renormalise(raw: np.ndarray) -> np.ndarray:
    """The documented treatment of negative bicubic weights, applied to torch's raw output."""
    valid = np.clip(raw.sum(0), 0, 1)
    clamped = np.maximum(raw, 0)
    total = clamped.sum(0)
    return np.where(total > 0, clamped * valid / np.where(total > 0, total, 1), 0)


@pytest.mark.parametrize("kernel,antialias", CASES)
@pytest.mark.parametrize("shape", SIZES)
def test_soft_label_matches_torch(kernel, antialias, shape):
    rng = np.random.default_rng(hash((kernel, antialias, shape)) % 2**32)
    label = blobby_labels(rng, shape, NUM_CLASSES)
    volume = one_hot(label, NUM_CLASSES)
    for scale in SCALES:
        size = parse_target(scale).output_size(*shape)
        wy = axis_weights(kernel, shape[0], size[0], antialias)
        wx = axis_weights(kernel, shape[1], size[1], antialias)
        ours = soft_label(label, wy, wx, NUM_CLASSES).dense()
        ref = reference(volume, size, kernel, antialias)[:NUM_CLASSES]
        if kernel == "bicubic":
            ref = clamp_renormalise(ref)
        np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"scale {scale}")


@pytest.mark.parametrize("kernel,antialias", CASES)
def test_colour_matches_torch(kernel, antialias):
    rng = np.random.default_rng(7)
    for shape, scale in itertools.product(SIZES, SCALES):
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        size = parse_target(scale).output_size(*shape)
        wy = axis_weights(kernel, shape[0], size[0], antialias)
        wx = axis_weights(kernel, shape[1], size[1], antialias)
        ours = resize_image(image, wy, wx).astype(int)
        ref = reference(image.transpose(2, 0, 1).astype(np.float64), size, kernel, antialias).transpose(1, 2, 0)
        ref = np.clip(np.rint(ref), 0, 255)
        assert np.abs(ours - ref).max() <= 1, f"{shape} at {scale}"


@pytest.mark.parametrize("kernel", ["nearest", "nearest-exact"])
def test_nearest_labels_equal_torch(kernel):
    """torch's nearest (top-left of the footprint) and nearest-exact (its centre), bit for bit."""
    rng = np.random.default_rng(3)
    for shape, scale in itertools.product(SIZES + ((1024, 2048),), SCALES):
        label = rng.integers(0, 19, shape, dtype=np.uint8)
        size = parse_target(scale).output_size(*shape)
        ours = nearest_labels(label, axis_weights(kernel, shape[0], size[0]), axis_weights(kernel, shape[1], size[1]))
        ref = F.interpolate(torch.from_numpy(label)[None, None].float(), size=size, mode=kernel)[0, 0].numpy()
        np.testing.assert_array_equal(ours, ref.astype(np.uint8))


def test_bilinear_half_of_4x4_is_2x2_block_average():
    label = np.array([[0, 0, 1, 1],
                      [0, 2, 1, 1],
                      [3, 3, 2, 2],
                      [3, 1, 2, 0]], np.uint8)
    w = axis_weights("bilinear", 4, 2)
    soft = soft_label(label, w, w, 4)
    assert soft.denominator == 4
    dense = soft.dense()
    expected = np.zeros((4, 2, 2))
    for c in range(4):
        expected[c] = (label == c).reshape(2, 2, 2, 2).mean(axis=(1, 3))
    np.testing.assert_array_equal(dense, expected)  # exact, not approximately
    image = np.stack([label * 60] * 3, axis=-1).astype(np.uint8)
    blocks = image.astype(float).reshape(2, 2, 2, 2, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(resize_image(image, w, w), np.rint(blocks))


def test_area_quarter_of_8x8_is_block_counts_over_16():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (8, 8), dtype=np.uint8)
    w = axis_weights("area", 8, 2)
    soft = soft_label(label, w, w, 5)
    assert soft.denominator == 16
    for c in range(5):
        counts = (label == c).reshape(2, 4, 2, 4).sum(axis=(1, 3))
        np.testing.assert_array_equal(soft.dense()[c], counts / 16)
    # the numerators themselves are the block counts
    np.testing.assert_array_equal(soft.class_mass(), np.bincount(label.ravel(), minlength=5))


def test_area_every_source_pixel_contributes_equally():
    for in_size, out_size in ((10, 3), (1024, 307), (17, 13), (5, 8)):
        w = axis_weights("area", in_size, out_size)
        np.testing.assert_allclose(w.dense(in_size).sum(axis=0), out_size / in_size, rtol=1e-12)
        np.testing.assert_allclose(w.dense(in_size).sum(axis=1), 1.0, rtol=1e-12)


def test_exact_denominators():
    assert axis_weights("area", 1024, 128).denominator == 8
    assert axis_weights("area", 1024, 307).denominator == 1024
    assert axis_weights("bilinear", 1024, 512).denominator == 2
    assert axis_weights("bilinear", 2048, 256).denominator == 2
    assert axis_weights("nearest", 1000, 333).denominator == 1
    assert axis_weights("bicubic", 1024, 512).denominator is None  # negative lobes


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown kernel"):
        axis_weights("lanczos", 10, 5)
    for bad in ("0", "-0.5", "nan", "inf", "abc"):
        with pytest.raises(SoftprepError, match=f"'{bad}'"):
            parse_target(bad)
