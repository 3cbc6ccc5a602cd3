"""Store round trips: build -> read back bit-exact, bare-zarr reads, kill-and-resume, refusals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import psutil
import pytest
import zarr

from softprep import SoftprepError, open_store
from softprep.build import build, process_sample
from softprep.datasets import get_dataset
from softprep.demo import make_demo
from softprep.kernels import axis_weights
from softprep.resample import soft_label
from tests.conftest import comparable_bytes

ROOT = Path(__file__).resolve().parents[1]
SCALES = (0.25, 0.5)


@pytest.fixture(scope="session")
def demo_store(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "demo.zarr"
    build(get_dataset("cityscapes", demo_root), out, SCALES, kernel="area", shard_size=2, jobs=2)
    return out


def test_store_reads_back_bit_exact(demo_root, demo_store):
    dataset = get_dataset("cityscapes", demo_root)
    store = open_store(demo_store)
    assert store.complete and store.splits == ["train", "val"]
    for split in store.splits:
        samples = dataset.samples(split)
        for scale in SCALES:
            view = store.samples(split, scale)
            assert view.ids == [s.id for s in samples]
            for stored, sample in zip(view, samples):
                image, label = dataset.read_pair(sample)
                plans = {t: store.spec.plan(split, stored.index, t) for t in store.targets}
                expected = process_sample(dataset, image, label, plans).targets[view.target]
                np.testing.assert_array_equal(stored.image, expected.image)
                np.testing.assert_array_equal(stored.nn(), expected.nn)
                np.testing.assert_array_equal(stored.nn_floor(), expected.nn_floor)
                for hard, mode in ((stored.nn(), "nearest-exact"), (stored.nn_floor(), "nearest")):  # torch, bit for bit
                    reference = torch.nn.functional.interpolate(torch.from_numpy(label)[None, None].float(),
                                                                size=hard.shape, mode=mode)[0, 0].numpy()
                    np.testing.assert_array_equal(hard, reference.astype(np.uint8))
                soft = stored.soft(dense=False)
                computed = soft_label(label, store.spec.plan(split, stored.index, view.target).rows,
                                      store.spec.plan(split, stored.index, view.target).cols, 19)
                np.testing.assert_array_equal(soft.classes, computed.classes)
                np.testing.assert_array_equal(soft.weights, computed.weights)
                np.testing.assert_array_equal(soft.class_mass(), expected.soft.class_mass())
                # and the densified label is the kernel applied to the one-hot map
                h, w = label.shape
                wy = axis_weights("area", h, stored.shape[0])
                wx = axis_weights("area", w, stored.shape[1])
                reference = np.einsum("uh,chw,vw->cuv", wy.dense(h), _one_hot(label, 19), wx.dense(w))
                np.testing.assert_array_equal(stored.soft(), reference.astype(np.float32))
                np.testing.assert_array_equal(stored.hard(), soft.dense().argmax(0) * (soft.valid_fraction() > 0)
                                              + 255 * (soft.valid_fraction() == 0))


def _one_hot(label, c):
    return (label[None] == np.arange(c)[:, None, None]).astype(np.float64)


def test_recorded_statistics_match_pixels(demo_root, demo_store):
    dataset = get_dataset("cityscapes", demo_root)
    store = open_store(demo_store)
    counts = store.counts("train")
    for i, sample in enumerate(dataset.samples("train")):
        _, label = dataset.read_pair(sample)
        np.testing.assert_array_equal(counts[i], np.bincount(label[label != 255], minlength=19))
        for scale in SCALES:
            view = store.samples("train", scale)
            np.testing.assert_array_equal(view.mass_numerator()[i], view[i].soft(dense=False).class_mass())
            np.testing.assert_allclose(view.mass()[i], view.mass_numerator()[i] / view.denominators[i], rtol=1e-15)
            nn = view[i].nn()
            np.testing.assert_array_equal(view.nn_counts()[i], np.bincount(nn[nn != 255], minlength=19))
            floor = view[i].nn_floor()
            np.testing.assert_array_equal(view.nn_floor_counts()[i], np.bincount(floor[floor != 255], minlength=19))
    # area conserves priors exactly: mass / D == counts * area ratio
    for scale in SCALES:
        view = store.samples("train", scale)
        (h, w), (oh, ow) = store.spec.splits["train"].sizes[0], view.sizes[0]
        np.testing.assert_array_equal(view.mass_numerator() * h * w, counts * view.denominators[:, None] * oh * ow)


def test_read_with_bare_zarr_per_store_format(demo_store):
    """Run the recipe of docs/store-format.md verbatim: zarr + numpy only."""
    text = (ROOT / "docs" / "store-format.md").read_text()
    recipe = re.search(r"```python\n(.*?)```", text, re.S).group(1).replace("\nn = 0 ", "\n").replace("STORE.zarr", str(demo_store))
    view = open_store(demo_store).samples("train", SCALES[0])
    for n in range(len(view)):
        namespace = {"n": n}
        exec(recipe.replace('["0.125"]', f'["{SCALES[0]!r}"]'), namespace)
        np.testing.assert_allclose(namespace["dense"], view[n].soft(), atol=0)


def _cli(*args):
    return [sys.executable, "-m", "softprep.cli", *args]


def _equal_stores(a: Path, b: Path):
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert comparable_bytes(a, rel) == comparable_bytes(b, rel), rel


def test_resume_after_killed_worker_equals_uninterrupted_build(tmp_path):
    root = make_demo(tmp_path / "data", train=12, val=2, size=(512, 1024), seed=3)
    args = ["build", "--root", str(root), "--scales", "0.5", "1.0", "--shard-size", "1", "--jobs", "2"]
    reference, resumed = tmp_path / "reference.zarr", tmp_path / "resumed.zarr"
    subprocess.run(_cli(*args, "--out", str(reference)), check=True, capture_output=True)

    process = subprocess.Popen(_cli(*args, "--out", str(resumed)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done_dir = resumed / "train" / "done" / "c"
    deadline = time.time() + 120
    while not (done_dir.is_dir() and any(done_dir.iterdir())):
        assert time.time() < deadline and process.poll() is None, "build ended before any shard finished"
        time.sleep(0.005)
    workers = [p for p in psutil.Process(process.pid).children(recursive=True) if "LokyProcess" in " ".join(p.cmdline())]
    assert workers, "no joblib worker process found"
    os.kill(workers[0].pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert b"worker process died" in stderr

    store = open_store(resumed)
    assert not store.complete
    assert 0 < store.done("train").sum() < 12
    info = subprocess.run(_cli("info", str(resumed)), capture_output=True, text=True, check=True)
    assert "UNFINISHED" in info.stdout

    result = subprocess.run(_cli(*args, "--out", str(resumed)), capture_output=True, text=True, check=True)
    assert re.search(r"[1-9]\d* already done", result.stdout)
    assert open_store(resumed).complete
    _equal_stores(reference, resumed)


def test_refuses_store_with_other_settings(demo_root, tmp_path):
    dataset = get_dataset("cityscapes", demo_root)
    out = tmp_path / "s.zarr"
    build(dataset, out, [0.5], kernel="area", jobs=1)
    with pytest.raises(SoftprepError, match=r"other settings \(kernel: store has 'area', asked 'bilinear'.*--overwrite"):
        build(dataset, out, [0.5], kernel="bilinear", jobs=1)
    assert open_store(out).attrs["kernel"] == "area"  # untouched
    again = build(dataset, out, [0.5], kernel="area", jobs=1)
    assert again == {"built": 0, "skipped": 9, "total": 9}
    build(dataset, out, [0.5], kernel="bilinear", jobs=1, overwrite=True)
    assert open_store(out).attrs["kernel"] == "bilinear"


def test_every_chunk_carries_a_crc32c(demo_store):
    bucket = open_store(demo_store).spec.splits["train"].buckets[0]
    array = zarr.open_array(str(demo_store / "train" / "0.5" / bucket / "mixed_weights"), mode="r")
    names = [c["name"] for c in array.metadata.to_dict()["codecs"][0]["configuration"]["codecs"]]
    assert names == ["bytes", "zstd", "crc32c"]


def test_bicubic_store_is_float_and_soft_labels_are_distributions(demo_root, tmp_path):
    dataset = get_dataset("cityscapes", demo_root)
    out = tmp_path / "cubic.zarr"
    build(dataset, out, [0.3], kernel="bicubic", jobs=1, splits=["val"])
    view = open_store(out).samples("val", 0.3)
    assert (view.denominators == 0).all() and not view.exact
    for sample in view:
        dense = sample.soft()
        assert dense.min() >= 0 and dense.sum(0).max() <= 1 + 1e-6
        _, label = dataset.read_pair(dataset.samples("val")[sample.index])
        h, w = label.shape
        ours = soft_label(label, axis_weights("bicubic", h, sample.shape[0]), axis_weights("bicubic", w, sample.shape[1]), 19)
        np.testing.assert_array_equal(dense, ours.dense())
