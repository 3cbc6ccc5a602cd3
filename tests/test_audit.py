"""`softprep audit` with the real libraries: each floor rule measures the (s - 1) / 2 px its
sampling puts labels up-left, each centre rule 0 at odd factors (and the half pixel at even ones
that no single-pixel sample avoids), within 0.1 px on synthetic data; averaged ids are caught; a
user's transform that shifts labels by a known 2 px is recovered; bad input is one line each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softprep.audit import audit, offset, render, thin_labels
from softprep.datasets import get_dataset
from softprep.rules import RULES, Rule

SIZE = 480  # every factor below divides it
#: Rules by where they sample each output pixel: the footprint's top-left pixel (torch ``nearest``)
#: or its centre pixel (``nearest-exact``); what each library does was measured, not assumed.
FLOOR = ("torch-nearest", "cv2-nearest", "torchvision-v2", "albumentations", "monai")
CENTRE = ("torch-nearest-exact", "pil-nearest", "cv2-nearest-exact", "kornia")


def write_rectangles(root: Path, images: int = 4, seed: int = 0) -> Path:
    """A `folder` dataset of random rectangles (edges at every phase) of 4 classes on background."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        label = np.zeros((SIZE, SIZE), np.uint8)
        for _ in range(280):
            y, x = rng.integers(0, SIZE, 2)
            label[y:y + rng.integers(12, 70), x:x + rng.integers(12, 70)] = rng.integers(1, 5)
        Image.fromarray(label).save(root / "masks" / f"r{i}.png")
        Image.fromarray(np.repeat(label[..., None] * 50, 3, axis=2)).save(root / "images" / f"r{i}.png")
    (root / "classes.json").write_text(json.dumps({"classes": [{"name": f"c{k}"} for k in range(5)]}))
    return root


@pytest.fixture(scope="module")
def rectangles(tmp_path_factory) -> Path:
    return write_rectangles(tmp_path_factory.mktemp("audit") / "data")


def present(names):
    missing = [n for n in names if RULES[n].missing()]
    if missing:
        pytest.skip(f"libraries of {missing} not installed (the dev extra has them)")
    return list(names)


@pytest.mark.parametrize("factor", [1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 8])
def test_floor_rules_sample_up_left_and_centre_rules_at_the_centre(rectangles, factor):
    report = audit(get_dataset("folder", rectangles), [factor], rules=present(FLOOR + CENTRE), jobs=1)
    s = round(1 / factor)
    rows = {row.rule: row for row in report.rows}
    for name in FLOOR:
        assert rows[name].dy == pytest.approx(-(s - 1) / 2, abs=0.1), name
        assert rows[name].dx == pytest.approx(-(s - 1) / 2, abs=0.1), name
    for name in CENTRE:  # the centre pixel of an even footprint lies half a pixel down-right of its centre
        expected = 0.0 if s % 2 else 0.5
        assert rows[name].dy == pytest.approx(expected, abs=0.1) and rows[name].dx == pytest.approx(expected, abs=0.1), name
    # the argmax breaks exact ties (even factors) towards the lower class: near, not at, zero
    assert abs(rows["area-argmax"].dy) <= 0.25 and abs(rows["area-argmax"].dx) <= 0.25
    assert rows["area-argmax"].differs == 0
    if s > 2:  # at 1/2 the two sample half a pixel either side of the centre: alike
        assert rows["torch-nearest"].differs > rows["torch-nearest-exact"].differs


def test_averaged_ids_are_caught(rectangles):
    """Albumentations' area_for_downscale="image_mask" averages class ids: ids invented where no such
    class is in the footprint (and invalid ones next to ignore); its D dwarfs the NN rules'."""
    report = audit(get_dataset("folder", rectangles), [0.25], rules=present(["albumentations-area", "albumentations"]),
                   jobs=1)
    rows = {row.rule: row for row in report.rows}
    assert rows["albumentations-area"].invented > 0.02 and rows["albumentations"].invented == 0
    assert rows["albumentations-area"].sum_abs > 3 * rows["albumentations"].sum_abs
    assert "(averaged ids?)" in next(line for line in report.verdicts() if line.startswith("albumentations-area:"))


SHIFTING = '''
import cv2, numpy as np

def shifted(image, mask):
    """Labels moved 2 px down-right before a centre-sampling resize to 1/5: sampled 2 px up-left."""
    h, w = mask.shape[0] // 5, mask.shape[1] // 5
    mask = np.roll(mask, (2, 2), axis=(0, 1))
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA), cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)

def broken(image, mask):
    raise ValueError("my pipeline broke")

def sizes(image, mask):
    return image[::2, ::2], mask[::4, ::4]

def floats(image, mask):
    return image[::4, ::4], mask[::4, ::4].astype(np.float32)
'''


def softprep(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprep.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_a_users_transform_that_shifts_by_2_px_is_recovered(rectangles, tmp_path):
    pytest.importorskip("cv2")
    (tmp_path / "pipeline.py").write_text(SHIFTING)
    result = softprep("audit", "--dataset", "folder", "--root", rectangles, "--rule", "torch-nearest",
                      "--transform", "pipeline:shifted", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {(row["rule"], row["target"]): row for row in json.loads(result.stdout)["rows"]}
    mine = rows["pipeline:shifted", "0.2"]
    assert mine["dy"] == pytest.approx(-2, abs=0.1) and mine["dx"] == pytest.approx(-2, abs=0.1)


def test_bad_input_is_one_line_and_the_other_rules_complete(rectangles, tmp_path, monkeypatch):
    """A callable that raises, returns image and mask of two sizes or a float mask, a mask value outside
    the class table, a rule whose library is missing: one line each naming it, never a traceback."""
    (tmp_path / "pipeline.py").write_text(SHIFTING)
    data = tmp_path / "data"
    write_rectangles(data, images=2, seed=3)
    bad = np.asarray(Image.open(data / "masks" / "r1.png")).copy()
    bad[0, 0] = 9  # not in classes.json
    Image.fromarray(bad).save(data / "masks" / "r1.png")
    for transform, fragment in (("broken", "raised ValueError: my pipeline broke"),
                                ("sizes", "their sizes must agree"), ("floats", "float32 mask; return integer class ids")):
        result = softprep("audit", "--dataset", "folder", "--root", data, "--scales", "0.25", "--rule", "torch-nearest",
                          "--transform", f"pipeline:{transform}", cwd=tmp_path)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 2, lines  # the transform's failure, the unreadable mask
        assert any(f"--transform pipeline:{transform} on " in line and "r0.png" in line and fragment in line for line in lines), lines
        assert any("r1.png" in line and "label ids [9]" in line and "image skipped" in line for line in lines), lines
        assert "torch-nearest: labels sampled" in result.stdout  # the other rules' verdicts
    missing = Rule("no-such-lib", "nothing", ("no_such_module_here",), "pip install no-such-lib", RULES["pil-nearest"].apply)
    monkeypatch.setitem(RULES, "no-such-lib", missing)
    report = audit(get_dataset("folder", tmp_path / "data"), [0.25], rules=["no-such-lib", "pil-nearest"], jobs=1)
    assert report.skipped == {"no-such-lib": "no_such_module_here not installed (pip install no-such-lib)"}
    assert "no-such-lib: skipped: no_such_module_here not installed (pip install no-such-lib)" in render(report)
    assert [row.rule for row in report.rows] == ["pil-nearest", "area-argmax"]


def test_formats_and_plot(rectangles, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "audit.png"
    result = softprep("audit", "--dataset", "folder", "--root", rectangles, "--scales", "0.25", "--rule", "pil-nearest",
                      "--format", "csv", "--plot", plot)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.startswith("rule,scale,dy px,dx px,sum|D|") and [r.split(",")[0] for r in rows] == ["pil-nearest", "area-argmax"]
    assert Image.open(plot).size[0] > 1000


def test_thin_labels_are_the_pixels_no_window_of_their_class_covers():
    """Against a brute-force search of every window position, at odd and even windows."""
    rng = np.random.default_rng(0)
    for window in ((3, 3), (4, 4), (2, 5)):
        label = (rng.random((12, 13)) < 0.3).astype(np.uint8)
        label[3:9, 2:10] = 2
        covered = np.zeros(label.shape, bool)
        for y in range(-(window[0] // 2), label.shape[0] - window[0] // 2):
            for x in range(-(window[1] // 2), label.shape[1] - window[1] // 2):
                ys = np.clip(np.arange(y, y + window[0]), 0, label.shape[0] - 1)
                xs = np.clip(np.arange(x, x + window[1]), 0, label.shape[1] - 1)
                block = label[np.ix_(ys, xs)]
                if (block == block.flat[0]).all():
                    covered[np.ix_(np.unique(ys), np.unique(xs))] = True
        np.testing.assert_array_equal(thin_labels(label, window), np.where(covered, 255, label))


def test_the_offset_is_the_vertex_of_the_parabola():
    shifts = 4
    errors = np.array([(d - (-1.25)) ** 2 + 3 for d in range(-shifts, shifts + 1)])
    assert offset(errors, shifts) == pytest.approx(-1.25)
    assert np.isnan(offset(np.zeros(9), shifts))
