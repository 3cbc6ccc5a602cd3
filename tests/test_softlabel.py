"""Soft-label properties: valid fraction, ignore, no dropped classes, exact priors conservation."""

from __future__ import annotations

import numpy as np
import pytest

from softprep.kernels import axis_weights
from softprep.plan import parse_target
from softprep.resample import soft_label
from softprep.softlabel import IGNORE_INDEX, MIXED, pack, unpack
from tests.conftest import blobby_labels, one_hot


def weights_for(kernel, shape, scale, antialias=False):
    size = parse_target(scale).output_size(*shape)
    return axis_weights(kernel, shape[0], size[0], antialias), axis_weights(kernel, shape[1], size[1], antialias)


@pytest.mark.parametrize("kernel,antialias", [("bilinear", False), ("bilinear", True), ("area", False), ("bicubic", True)])
def test_weights_sum_to_valid_fraction(kernel, antialias):
    rng = np.random.default_rng(1)
    label = blobby_labels(rng, (50, 70), 7, ignore_share=0.2)
    wy, wx = weights_for(kernel, label.shape, 0.3, antialias)
    soft = soft_label(label, wy, wx, 7)
    # valid fraction from the kernel applied to the non-ignore mask (no clamping needed where weights >= 0)
    valid_mask = (label != 255).astype(np.float64)
    expected = wy.dense(50) @ valid_mask @ wx.dense(70).T
    if kernel == "bicubic":
        expected = np.clip(expected, 0, 1)
    np.testing.assert_allclose(soft.dense().sum(axis=0), expected, atol=1e-6)
    np.testing.assert_allclose(soft.valid_fraction(), expected, atol=1e-6)


def test_ignore_only_regions_are_fully_ignored():
    label = np.full((32, 32), 3, np.uint8)
    label[:16, :16] = 255  # top-left quadrant unlabelled
    wy, wx = weights_for("area", label.shape, 0.25)
    soft = soft_label(label, wy, wx, 5)
    assert (soft.classes[:, :4, :4] == IGNORE_INDEX).all()
    assert (soft.weights[:, :4, :4] == 0).all()
    assert (soft.dense()[:, :4, :4] == 0).all()
    assert (soft.argmax()[:4, :4] == IGNORE_INDEX).all()
    assert (soft.dense()[3, 4:, 4:] == 1).all()


def test_a_pixel_keeps_all_of_its_nine_classes():
    label = np.arange(9, dtype=np.uint8).reshape(3, 3)
    label = np.tile(label, (2, 2))  # 6x6, each 3x3 block holds classes 0..8
    w = axis_weights("area", 6, 2)
    soft = soft_label(label, w, w, 9)
    assert soft.planes == 9
    np.testing.assert_array_equal(np.sort(soft.classes, axis=0)[:, 0, 0], np.arange(9))
    np.testing.assert_array_equal(soft.dense(), np.full((9, 2, 2), 1 / 9, np.float32))


def test_planes_sorted_by_weight_and_argmax_is_dominant_class():
    rng = np.random.default_rng(5)
    label = blobby_labels(rng, (64, 64), 6, block=2, ignore_share=0.0)
    wy, wx = weights_for("area", label.shape, 0.125)
    soft = soft_label(label, wy, wx, 6)
    assert (np.diff(soft.weights.astype(int), axis=0) <= 0).all()
    dense = soft.dense()
    np.testing.assert_array_equal(soft.argmax(), dense.argmax(axis=0))  # ties -> lower class, as argmax


@pytest.mark.parametrize("scale", [0.125, 0.25, 0.3, 0.5, 0.77, 1.5])
def test_area_conserves_class_priors_exactly(scale):
    rng = np.random.default_rng(int(scale * 1000))
    label = blobby_labels(rng, (48, 80), 5, ignore_share=0.1)
    wy, wx = weights_for("area", label.shape, scale)
    soft = soft_label(label, wy, wx, 5)
    assert soft.exact
    counts = np.bincount(label[label != 255], minlength=5)
    (h, w), (oh, ow) = label.shape, soft.shape
    # mass / D == counts * (oh * ow) / (h * w), compared in integers
    np.testing.assert_array_equal(soft.class_mass() * h * w, counts * soft.denominator * oh * ow)


def test_bilinear_half_on_even_sizes_conserves_priors_exactly():
    rng = np.random.default_rng(9)
    label = blobby_labels(rng, (64, 96), 8, ignore_share=0.1)
    wy, wx = weights_for("bilinear", label.shape, 0.5)
    soft = soft_label(label, wy, wx, 8)
    counts = np.bincount(label[label != 255], minlength=8)
    assert soft.denominator == 4
    np.testing.assert_array_equal(soft.class_mass(), counts)  # each source pixel carries 1/4


def test_bilinear_eighth_does_not_conserve_priors():
    label = np.zeros((64, 64), np.uint8)
    label[:, ::8] = 1  # a 1-px pole every 8 columns, never under the two central taps
    wy, wx = weights_for("bilinear", label.shape, 0.125)
    assert soft_label(label, wy, wx, 2).class_mass()[1] == 0


def test_nearest_kernel_gives_one_hot_nn_through_the_same_path():
    rng = np.random.default_rng(2)
    label = blobby_labels(rng, (40, 60), 4)
    wy, wx = weights_for("nearest", label.shape, 0.25)
    soft = soft_label(label, wy, wx, 4)
    assert soft.planes == 1 and soft.denominator == 1
    nn = label[np.ix_(wy.index[:, 0], wx.index[:, 0])]
    np.testing.assert_array_equal(soft.argmax(), nn)
    np.testing.assert_array_equal(soft.dense(), one_hot(nn, 4)[:4])


def test_label_outside_classes_is_rejected():
    with pytest.raises(ValueError, match="label value 9"):
        w = axis_weights("area", 4, 2)
        soft_label(np.full((4, 4), 9, np.uint8), w, w, 5)


def test_packed_form_by_hand():
    """A 2x4 map, area to 1x2: left window one class, right window two classes and an ignored pixel."""
    label = np.array([[3, 3, 1, 255],
                      [3, 3, 2, 2]], dtype=np.uint8)
    wy, wx = axis_weights("area", 2, 1), axis_weights("area", 4, 2)
    packed = pack(soft_label(label, wy, wx, 4))
    assert packed.denominator == 4
    np.testing.assert_array_equal(packed.classes, [[3, MIXED]])
    np.testing.assert_array_equal(packed.mixed_classes, [[2], [1]])  # slot 0: class 2 (2/4), slot 1: class 1 (1/4)
    np.testing.assert_array_equal(packed.mixed_weights, [[1], [1]])  # row 0: ignored share 1/4; slot 1: 1/4
    np.testing.assert_array_equal(packed.slot_weights(), [[2], [1]])  # slot 0 derived: 4 - 1 - 1
    np.testing.assert_array_equal(packed.class_mass(), [0, 1, 2, 4])


@pytest.mark.parametrize("kernel,antialias,scale", [("area", False, 0.3), ("bilinear", True, 0.25), ("bicubic", False, 0.5),
                                                    ("nearest", False, 0.5), ("area", False, 0.125)])
def test_pack_round_trips_exactly(kernel, antialias, scale):
    rng = np.random.default_rng(4)
    label = blobby_labels(rng, (64, 96), 9, ignore_share=0.15)
    soft = soft_label(label, *weights_for(kernel, label.shape, scale, antialias), 9)
    packed = pack(soft)
    back = unpack(packed)
    assert back.planes == soft.planes and back.denominator == soft.denominator
    np.testing.assert_array_equal(back.classes, soft.classes)
    np.testing.assert_array_equal(back.weights, soft.weights)
    assert back.weights.dtype == soft.weights.dtype
    np.testing.assert_array_equal(packed.class_mass(), soft.class_mass())
    # listed: exactly the pixels that are neither one class at full weight nor nothing
    dense = soft.dense()
    full = dense.max(axis=0) == 1.0
    nothing = dense.sum(axis=0) == 0
    assert packed.mixed == int((~full & ~nothing).sum())
