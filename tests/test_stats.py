"""`softprep stats`: hand-computed shares, entropy and the vanished-class count of a 1-px pole."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from softprep import open_store
from softprep.build import build
from softprep.datasets import get_dataset
from softprep.stats import render, split_stats
from tests.conftest import write_cityscapes

ROAD, POLE, SKY = 0, 5, 10


@pytest.fixture(scope="module")
def pole_store(tmp_path_factory):
    """Two 16x16 maps: road with a 1-px pole in column 3 (image 0), and road/sky halves (image 1)."""
    root = tmp_path_factory.mktemp("pole")
    pole = np.zeros((16, 16), np.uint8)
    pole[:, 3] = POLE
    halves = np.zeros((16, 16), np.uint8)
    halves[:8] = SKY
    write_cityscapes(root, [pole, halves])
    out = root / "store.zarr"
    build(get_dataset("cityscapes", root), out, [0.25], kernel="area", jobs=1)
    return out


def test_pole_vanishes_under_nn_but_not_under_area(pole_store):
    stats = split_stats(open_store(pole_store), jobs=1)
    (scale,) = stats.targets
    # NN at 1/4 keeps columns 0, 4, 8, 12: the pole in column 3 is gone; area keeps 1/4 of column 0.
    assert scale.vanished_nn[POLE] == 1
    assert scale.vanished_soft[POLE] == 0
    assert stats.present[POLE] == 1 and stats.present[ROAD] == 2
    assert sum(scale.vanished_nn) == 1 and sum(scale.vanished_soft) == 0


def test_pixel_statistics_hand_computed(pole_store):
    summary = split_stats(open_store(pole_store), jobs=2, batch_size=1).targets[0].summary()
    # Image 0: output column 0 (4 pixels) holds road 3/4 + pole 1/4; image 1 splits on a block
    # boundary, so it is all single-class. 32 valid pixels, 4 of them multi-class.
    assert summary["valid_pixels"] == 32 and summary["pixels"] == 32
    assert summary["multi_class_share"] == 4 / 32
    assert summary["mean_classes_per_pixel"] == 36 / 32
    assert summary["max_classes_per_pixel"] == 2
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert summary["mean_entropy_nats"] == pytest.approx(4 * entropy / 32, rel=1e-6)
    assert summary["nn_disagreement_share"] == 0.0  # argmax of column 0 is road, as is NN


def test_cli_stats_text_and_json(pole_store):
    run = lambda *a: subprocess.run([sys.executable, "-m", "softprep.cli", "stats", pole_store, *a],
                                    capture_output=True, text=True)
    result = run("--format", "json", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["targets"][0]["vanished_nn"][POLE] == 1
    text = run("--jobs", "1").stdout
    assert "12.50%" in text  # MC pixels
    pole_line = next(line for line in text.splitlines() if line.startswith("pole"))
    assert pole_line.split() == ["pole", "1", "1", "0"]
    assert render(split_stats(open_store(pole_store), jobs=1), "json") == result.stdout.rstrip("\n")
