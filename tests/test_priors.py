"""`softprep priors`: eq. 5 exactly (hand-made maps, an independent torch reference), the store and
the dataset-root paths agree, exact zeros where the kernel conserves priors, output formats."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from softprep import SoftprepError, open_store
from softprep.build import build
from softprep.datasets import get_dataset
from softprep.plan import parse_target
from softprep.priors import compare_kernels, render, store_priors, to_json
from tests.conftest import blobby_labels, one_hot, write_cityscapes

C = 19


@pytest.fixture(scope="module")
def demo_prior_store(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("priors") / "demo.zarr"
    build(get_dataset("cityscapes", demo_root), out, (0.125, 0.25, 0.5), kernel="bilinear", shard_size=4, jobs=1)
    return out


def row(table, strategy, target):
    return next(r for r in table.rows if r.strategy == strategy and r.target == parse_target(target).name)


def test_hand_computed_nearest_and_area(tmp_path):
    # 2x4 map: columns 0-2 road (0), column 3 pole (5). At 1/2 nearest keeps columns 0 and 2 (both
    # road): p_nn = (1, 0) against p_original = (6/8, 2/8), so D_road = -1/4, D_pole = +1/4.
    label = np.array([[0, 0, 0, 5], [0, 0, 0, 5]], np.uint8)
    dataset = get_dataset("cityscapes", write_cityscapes(tmp_path, [label]))
    table = compare_kernels(dataset, ["nearest", "area"], [0.5], jobs=1)
    nn, area = row(table, "nearest", 0.5), row(table, "area", 0.5)
    assert nn.exact and area.exact
    assert nn.discrepancy[0] == Fraction(-1, 4) and nn.discrepancy[5] == Fraction(1, 4)
    assert nn.sum_abs == Fraction(1, 2) and nn.max_abs == Fraction(1, 4)
    assert all(d == 0 for d in area.discrepancy)
    assert table.counts[0] == 6 and table.counts[5] == 2


def test_area_any_scale_and_bilinear_half_are_exactly_zero_nearest_eighth_is_not(tmp_path):
    rng = np.random.default_rng(3)
    labels = [blobby_labels(rng, (48, 80), C, block=3), blobby_labels(rng, (48, 80), C, block=2)]
    dataset = get_dataset("cityscapes", write_cityscapes(tmp_path, labels))
    table = compare_kernels(dataset, ["nearest", "bilinear", "area"], [0.125, 0.3, 0.5], jobs=2, batch_size=1)
    for scale in (0.125, 0.3, 0.5):
        assert row(table, "area", scale).exact
        assert all(d == 0 for d in row(table, "area", scale).discrepancy), scale
    assert all(d == 0 for d in row(table, "bilinear", 0.5).discrepancy)
    assert row(table, "nearest", 0.125).sum_abs > 0
    assert row(table, "bilinear", 0.125).sum_abs > 0


def test_bilinear_quarter_equals_torch_one_hot_reference(tmp_path):
    rng = np.random.default_rng(4)
    labels = [blobby_labels(rng, (40, 72), C, block=3) for _ in range(3)]
    dataset = get_dataset("cityscapes", write_cityscapes(tmp_path, labels))
    table = compare_kernels(dataset, ["bilinear"], [0.25], jobs=1)
    original, downsampled = np.zeros(C), np.zeros(C)
    for label in labels:
        volume = one_hot(label, C)[:C]
        original += volume.sum(axis=(1, 2))
        small = F.interpolate(torch.from_numpy(volume)[None], size=(10, 18), mode="bilinear", align_corners=False)
        downsampled += small[0].numpy().sum(axis=(1, 2))
    expected = original / original.sum() - downsampled / downsampled.sum()
    np.testing.assert_allclose([float(d) for d in row(table, "bilinear", 0.25).discrepancy], expected, atol=1e-12)


def test_store_rows_equal_dataset_rows(demo_root, demo_prior_store):
    from_store = store_priors(open_store(demo_prior_store))
    from_root = compare_kernels(get_dataset("cityscapes", demo_root), ["nearest", "nearest-exact", "bilinear"],
                                [0.125, 0.25, 0.5], jobs=2)
    assert from_store.counts == from_root.counts
    for a in from_store.rows:
        b = row(from_root, a.strategy, a.target)
        assert a.discrepancy == b.discrepancy, (a.strategy, a.target)


def test_demo_store_half_is_exact_zero_and_eighth_is_not(demo_prior_store):
    table = store_priors(open_store(demo_prior_store))
    assert [(r.strategy, r.target) for r in table.rows] == [
        (rule, target) for target in ("0.125", "0.25", "0.5") for rule in ("nearest", "nearest-exact", "bilinear")]
    assert all(d == 0 for d in row(table, "bilinear", 0.5).discrepancy)
    assert row(table, "nearest", 0.125).max_abs > 0
    text = render(table, "text").splitlines()
    assert text[1].split()[:5] == ["strategy", "target", "exact", "sum|D|", "max|D|"]
    half = next(line for line in text if line.startswith("bilinear") and " 1/2 " in line).split()
    assert half[2:] == ["exact"] + ["0"] * (2 + C)
    eighth = next(line for line in text if line.startswith("nearest") and " 1/8 " in line).split()
    assert float(eighth[3]) == pytest.approx(float(row(table, "nearest", 0.125).sum_abs) * 1e4, abs=0.005)


def test_json_schema_full_precision(demo_prior_store):
    table = store_priors(open_store(demo_prior_store))
    data = json.loads(render(table, "json"))
    assert set(data) == {"split", "classes", "counts", "original_prior", "volumes_ml", "rows"}
    assert data["volumes_ml"] is None  # images: no volumes in mL
    assert data["split"] == "train" and len(data["classes"]) == C and len(data["counts"]) == C
    assert sum(data["original_prior"]) == pytest.approx(1.0, abs=1e-12)
    for r, original in zip(data["rows"], table.rows):
        assert set(r) == {"strategy", "target", "exact", "prior", "discrepancy", "discrepancy_fraction", "sum_abs", "max_abs",
                          "drift_ml"}
        assert r["drift_ml"] is None
        assert [Fraction(f) for f in r["discrepancy_fraction"]] == original.discrepancy
        assert r["discrepancy"] == [float(d) for d in original.discrepancy]  # unscaled
        np.testing.assert_allclose(np.array(data["original_prior"]) - np.array(r["prior"]), r["discrepancy"], atol=1e-15)
    assert to_json(table) == data


def test_markdown_and_csv_layout(demo_prior_store):
    table = store_priors(open_store(demo_prior_store))
    markdown = render(table, "markdown", scale_factor=1e4).splitlines()
    assert markdown[0].startswith("| strategy | target | exact | sum\\|D\\| | max\\|D\\| | road | sidewalk |")
    assert "| bilinear | 1/2 | exact | 0 | 0 | 0 |" in "\n".join(markdown)
    csv_rows = render(table, "csv", scale_factor=1).splitlines()
    nearest_eighth = csv_rows[1].split(",")
    assert nearest_eighth[:3] == ["nearest", "1/8", "exact"]
    assert float(nearest_eighth[5]) == pytest.approx(float(row(table, "nearest", 0.125).discrepancy[0]), abs=0.005)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "softprep.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_priors_plot_and_compare(demo_root, demo_prior_store, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "priors.png"
    result = _cli("priors", demo_prior_store, "--plot", plot)
    assert result.returncode == 0, result.stderr
    assert "bilinear       1/2" in result.stdout
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 500
    result = _cli("priors", "--compare-kernels", "nearest", "area", "--root", demo_root, "--scales", "0.25",
                  "--split", "val", "--format", "json", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [(r["strategy"], r["target"]) for r in rows] == [("nearest", "0.25"), ("area", "0.25")]
    assert rows[1]["discrepancy_fraction"] == ["0"] * C


def test_plot_without_matplotlib_says_how_to_install(demo_prior_store, monkeypatch):
    from softprep.plot import plot_priors

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SoftprepError, match=r"pip install -e '\.\[plot\]' in the softprep checkout"):
        plot_priors(store_priors(open_store(demo_prior_store)), "never.png")


def test_cli_priors_usage_errors(demo_root, demo_prior_store):
    result = _cli("priors", demo_prior_store, "--compare-kernels", "area", "--root", demo_root, "--scales", "0.5")
    assert result.returncode == 1 and "pass --root DATA and --scales, and no STORE" in result.stderr
    result = _cli("priors", "--compare-kernels", "lanczos", "--root", demo_root, "--scales", "0.5")
    assert result.returncode == 1 and "unknown kernel(s) ['lanczos']" in result.stderr
    result = _cli("priors", demo_prior_store, "--split", "test")
    assert result.returncode == 1 and "no split 'test'" in result.stderr
