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
from softprep.show import CAPTION, colourise, render_sample, soft_colour_mix


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
        # 6 panels (colour, full-res labels, NN, soft mix, pole, car) of 64x128 in 2 columns.
        assert image.size == (2 * 128, 3 * (64 + CAPTION))
        pixels = np.asarray(image.convert("RGB"))
    palette = np.asarray(store.attrs["palette"], np.uint8)
    nn_panel = pixels[64 + 2 * CAPTION:2 * (64 + CAPTION), :128]
    expected = np.repeat(np.repeat(colourise(sample.nn(), palette), 8, 0), 8, 1)
    np.testing.assert_array_equal(nn_panel, expected)
    mix_panel = pixels[64 + 2 * CAPTION:2 * (64 + CAPTION), 128:]
    np.testing.assert_array_equal(mix_panel[::8, ::8], soft_colour_mix(sample.soft(), palette))


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
