"""`softprep show`: a valid PNG of the expected size whose panels hold the stored labels."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from softprep import SoftprepError, open_store
from softprep.build import build
from softprep.datasets import get_dataset
from softprep.show import CAPTION, class_overlay, colourise, render_sample, soft_colour_mix, weight_colours


@pytest.fixture(scope="module")
def show_store(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("show") / "store.zarr"
    build(get_dataset("cityscapes", demo_root), out, [0.125], kernel="area", splits=["val"], jobs=1)
    return out


def test_png_of_expected_size_with_stored_panels(show_store, demo_root, tmp_path):
    store = open_store(show_store)
    sample = store.samples("val", 0.125)[0]
    out = tmp_path / "fig.png"
    result = subprocess.run([sys.executable, "-m", "softprep.cli", "show", show_store, sample.id, "--scale", "0.125",
                             "--out", out, "--root", demo_root, "--classes", "pole,car"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "PNG"
        # 7 panels (colour, full-res labels, NN, soft mix, pole, car, Fig. 4 bars) of 64x128 in 2 columns,
        # then the legend strip
        assert image.size[0] == 2 * 128 and image.size[1] > 4 * (64 + CAPTION)
        pixels = np.asarray(image.convert("RGB"))
    palette = np.asarray(store.spec.palette, np.uint8)
    nn_panel = pixels[64 + 2 * CAPTION:2 * (64 + CAPTION), :128]
    expected = np.repeat(np.repeat(colourise(sample.nn(), palette), 8, 0), 8, 1)
    np.testing.assert_array_equal(nn_panel, expected)
    mix_panel = pixels[64 + 2 * CAPTION:2 * (64 + CAPTION), 128:]
    np.testing.assert_array_equal(mix_panel[::8, ::8], soft_colour_mix(sample.soft(), palette))


def test_fig3_overlay_marks_what_nn_loses_and_outlines_what_it_keeps():
    dense = np.zeros((2, 3, 3), np.float32)
    dense[0] = 1
    dense[1, 1, 1], dense[0, 1, 1] = 0.75, 0.25  # a pixel NN gives class 1
    dense[1, 0, 2], dense[0, 0, 2] = 0.25, 0.75  # class 1 has weight, NN says 0: lost
    nn = np.zeros((3, 3), np.uint8)
    nn[1, 1] = 1
    overlay = class_overlay(dense, nn, 1)
    np.testing.assert_array_equal(overlay[1, 1], [255, 255, 255])  # NN's pixel of the class: outlined
    assert overlay[0, 2, 0] > 150 and overlay[0, 2, 2] > 150 and overlay[0, 2, 1] < 100  # lost: magenta
    np.testing.assert_array_equal(overlay[2, 0], weight_colours(np.float32(0)))  # no weight: the scale's 0
    np.testing.assert_array_equal(weight_colours(np.array([0.0, 1.0])), [[68, 1, 84], [253, 231, 37]])


def test_single_class_pixels_mix_to_their_palette_colour():
    palette = np.array([[10, 20, 30], [200, 100, 0]], np.uint8)
    dense = np.zeros((2, 1, 3), np.float32)
    dense[0, 0, 0] = 1
    dense[1, 0, 1] = 1
    dense[:, 0, 2] = [0.5, 0.25]  # a quarter ignored: darker
    mix = soft_colour_mix(dense, palette)
    np.testing.assert_array_equal(mix[0], [[10, 20, 30], [200, 100, 0], [55, 35, 15]])


def test_bad_image_id_and_class(show_store):
    store = open_store(show_store)
    with pytest.raises(SoftprepError, match="no image 'nope' in any split"):
        render_sample(store, "nope", 0.125)
    with pytest.raises(SoftprepError, match="unknown class 'lamp'"):
        render_sample(store, store.samples("val", 0.125)[0].id, 0.125, classes=["lamp"])
