"""Volumes (issue 28): 3-D soft labels by the same 1-D kernels, equal to torch's F.interpolate in 3-D
(area, trilinear, nearest, nearest-exact); exact per-class volumes at any ratio; output affines
that nibabel's own resampling agrees with; the `nifti` adapter (MSD and nnU-Net layouts) through
build, verify and priors; and one line for each bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softprep import SoftprepError, open_store
from softprep.build import build
from softprep.datasets import get_dataset
from softprep.kernels import axis_weights
from softprep.plan import output_affine, resampling_plan
from softprep.resample import nearest_labels, resample_axes, soft_label_axes, threshold_labels
from softprep.verify import verify

nibabel = pytest.importorskip("nibabel", reason="volumes need the volumes extra")
CLASSES = ("background", "organ", "vessel")


def phantom(shape=(40, 36, 30), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image (X, Y, Z) float32, labels (X, Y, Z) uint8)``: an ellipsoid organ and a thin tube."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    label = np.zeros(shape, np.uint8)
    label[((x - 0.5 * shape[0]) / 12) ** 2 + ((y - 0.45 * shape[1]) / 10) ** 2 + ((z - 0.5 * shape[2]) / 9) ** 2 < 1] = 1
    label[(np.abs(x - 0.3 * shape[0] - 0.2 * z) < 1.2) & (np.abs(y - 0.7 * shape[1]) < 1.2)] = 2
    image = (100 * label + rng.normal(0, 5, shape)).astype(np.float32)
    return image, label


def write_msd(root: Path, cases: int = 2, spacing=(1.0, 1.2, 1.5), layout: str = "msd") -> Path:
    """An MSD (one 4-D image per case, labels as value -> name) or nnU-Net v2 (CASE_0000/_0001 channel
    files, labels as name -> value) folder of phantoms."""
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-20.0, 10.0, 5.0]
    for k in range(cases):
        image, label = phantom((40 - 2 * k, 36, 30 + k), seed=k)
        if layout == "msd":
            nibabel.save(nibabel.Nifti1Image(np.stack([image, 2 * image], -1), affine), root / "imagesTr" / f"case_{k:03d}.nii.gz")
        else:
            for c, channel in enumerate((image, 2 * image)):
                nibabel.save(nibabel.Nifti1Image(channel, affine), root / "imagesTr" / f"case_{k:03d}_{c:04d}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(label, affine), root / "labelsTr" / f"case_{k:03d}.nii.gz")
    labels = ({str(i): n for i, n in enumerate(CLASSES)} if layout == "msd" else {n: i for i, n in enumerate(CLASSES)})
    channels = {"modality": {"0": "CT", "1": "CT2"}} if layout == "msd" else {"channel_names": {"0": "CT", "1": "CT2"}}
    (root / "dataset.json").write_text(json.dumps({"name": "phantom", **channels, "labels": labels}))
    return root


def one_hot(label: np.ndarray, classes: int = 3) -> torch.Tensor:
    return F.one_hot(torch.from_numpy(label).long(), classes).permute(3, 0, 1, 2)[None].float()


@pytest.mark.parametrize("kernel, mode, size", [("area", "area", (20, 12, 10)), ("bilinear", "trilinear", (17, 13, 11)),
                                                ("bilinear", "trilinear", (20, 18, 15))])
def test_3d_soft_labels_equal_torch_interpolate(kernel, mode, size):
    """The one-hot volume resampled by torch (area at whole factors, trilinear at any size) is the 3-D
    soft label; torch's nearest and nearest-exact are the hard maps, bit for bit."""
    _, label = phantom()
    taps = [axis_weights(kernel, n, m) for n, m in zip(label.shape, size)]
    ours = soft_label_axes(label, taps, 3).dense()
    theirs = F.interpolate(one_hot(label), size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))
    np.testing.assert_allclose(ours, theirs[0].numpy(), atol=1e-5)
    for rule in ("nearest", "nearest-exact"):
        hard = nearest_labels(label, *(axis_weights(rule, n, m) for n, m in zip(label.shape, size)))
        reference = F.interpolate(torch.from_numpy(label)[None, None].float(), size=size, mode=rule)[0, 0]
        np.testing.assert_array_equal(hard, reference.numpy().astype(np.uint8))


def nnunet_reference(label: np.ndarray, size, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's ``resize_segmentation`` by torch: each class's one-hot trilinear (order 1, centres
    aligned), the class where it reaches 0.5, later classes over earlier; and where a value lies within
    1e-9 of 0.5 (float rounding decides those)."""
    labels, tie = np.zeros(size, np.uint8), np.zeros(size, bool)
    for c in range(1, classes):
        share = F.interpolate(torch.from_numpy((label == c).astype(np.float64))[None, None], size=size,
                              mode="trilinear", align_corners=False)[0, 0].numpy()
        labels[share >= 0.5] = c
        tie |= np.abs(share - 0.5) < 1e-9
    return labels, tie


@pytest.mark.parametrize("size", [(17, 13, 11), (20, 18, 15), (9, 31, 7)])
def test_nnunet_rule_equals_torch_trilinear_then_half(size):
    """threshold_labels on the linear soft label is nnU-Net's rule, voxel for voxel (ties at exactly
    one half, which torch's floats round either way, are ours exact)."""
    _, label = phantom()
    label = label.copy()
    label[::3, ::2, ::5] = 1  # many voxels where classes compete
    ours = threshold_labels(soft_label_axes(label, [axis_weights("bilinear", n, m) for n, m in zip(label.shape, size)], 3))
    theirs, tie = nnunet_reference(label, size)
    np.testing.assert_array_equal(ours[~tie], theirs[~tie])
    assert (ours != 0).sum() > 100


def test_area_keeps_every_class_volume_exactly_at_any_ratio():
    """Partial volumes: at 40x36x30 -> 17x13x11 (no whole factor) the area soft label's class volumes,
    in source voxels, equal the label's counts as exact fractions."""
    _, label = phantom()
    size = (17, 13, 11)
    soft = soft_label_axes(label, [axis_weights("area", n, m) for n, m in zip(label.shape, size)], 3)
    assert soft.exact
    voxels = Fraction(int(np.prod(label.shape)), int(np.prod(size)))
    volumes = [Fraction(int(m), soft.denominator) * voxels for m in soft.class_mass()]
    assert volumes == [Fraction(int(c)) for c in np.bincount(label.ravel(), minlength=3)]


def test_output_affines_place_voxel_centres_where_nibabel_resamples():
    """Our trilinear resampling of the intensity volume equals nibabel.processing's order-1 resampling
    onto the output grid our affine describes (inside the volume): the affine puts every output voxel
    centre where the kernels sampled it."""
    processing = pytest.importorskip("nibabel.processing")
    image, _ = phantom()
    affine = np.diag([1.0, 1.2, 1.5, 1.0])
    affine[:3, 3] = [-20.0, 10.0, 5.0]
    plan = resampling_plan("bilinear", False, image.shape, "2x2.4x3mm", spacing=(1.0, 1.2, 1.5))
    ours = resample_axes(image, plan.axes)
    grid = output_affine(affine, plan.source, plan.size)
    theirs = processing.resample_from_to(nibabel.Nifti1Image(image, affine), (plan.size, grid), order=1).get_fdata()
    inside = tuple(slice(1, n - 1) for n in plan.size)
    np.testing.assert_allclose(ours[inside], theirs[inside], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(grid[:3, :3], axis=0), [2.0, 2.4, 3.0], rtol=0.06)


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_a_nifti_dataset_builds_verifies_and_keeps_priors_exactly(layout, tmp_path):
    root = write_msd(tmp_path / "data", layout=layout)
    dataset = get_dataset("nifti", root)
    assert dataset.classes == CLASSES and dataset.image_channels == 2
    store = tmp_path / "v.zarr"
    result = subprocess.run([sys.executable, "-m", "softprep.cli", "build", "--dataset", "nifti", "--root", root,
                             "--out", store, "--spacing", "2", "2.4", "3", "--jobs", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    opened = open_store(store)
    view = opened.samples("train", "2x2.4x3mm")
    sample = view[0]
    assert sample.image.shape == (*sample.shape, 2) and sample.image.dtype == np.float32
    image, label = dataset.read_pair(dataset.samples("train")[0])
    plan = opened.spec.plan("train", 0, "2x2.4x3mm")
    np.testing.assert_allclose(sample.image, resample_axes(image, plan.axes), rtol=1e-6)
    np.testing.assert_array_equal(sample.soft(), soft_label_axes(label, plan.axes, 3).dense())
    np.testing.assert_allclose(view.affines()[0], output_affine(dataset.geometry(dataset.samples("train")[0])[1],
                                                                plan.source, plan.size))
    from softprep.priors import store_priors
    from softprep.verify import verify

    table = store_priors(opened)
    assert all(d == 0 for row in table.rows if row.strategy == "area" for d in row.discrepancy)
    assert verify(store, root=root, jobs=1) == []


def test_priors_report_each_rules_volume_drift_in_ml(tmp_path):
    """Two spacing targets in one build (--spacing repeated); priors' volume drift per class in mL,
    against volumes computed here from the label files, the recorded hard maps and the output affines'
    voxel sizes: nearest, nearest-exact and nnU-Net's rule drift, area is exactly 0 (a Fraction)."""
    root = write_msd(tmp_path / "data")
    store = tmp_path / "v.zarr"
    result = _cli("build", "--dataset", "nifti", "--root", root, "--out", store, "--spacing", "2", "2.4", "3",
                  "--spacing", "4", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    from softprep.priors import render, store_priors

    opened = open_store(store)
    assert opened.targets == ["2x2.4x3mm", "4mm"]
    dataset = get_dataset("nifti", root)
    labels = [dataset.read_pair(s)[1] for s in dataset.samples("train")]
    source_ml = [np.prod(dataset.geometry(s)[0]) / 1000 for s in dataset.samples("train")]
    full = sum(np.bincount(label.ravel(), minlength=3) * ml for label, ml in zip(labels, source_ml))
    table = store_priors(opened)
    np.testing.assert_allclose([float(v) for v in table.volumes_ml], full)
    rows = {(row.strategy, row.target): row for row in table.rows}
    assert {s for s, _ in rows} == {"nearest", "nearest-exact", "nnU-Net", "area"}
    for target in opened.targets:
        view = opened.samples("train", target)
        voxel_ml = np.abs(np.linalg.det(view.affines()[:, :3, :3])) / 1000
        hard = {"nearest": [view[i].nn_floor() for i in range(len(view))],
                "nearest-exact": [view[i].nn() for i in range(len(view))],
                "nnU-Net": [nnunet_reference(label, tuple(view.sizes[i]))[0] for i, label in enumerate(labels)]}
        for rule, maps in hard.items():
            volumes = sum(np.bincount(m.ravel(), minlength=3) * ml for m, ml in zip(maps, voxel_ml))
            np.testing.assert_allclose([float(v) for v in rows[rule, target].drift_ml], volumes - full, atol=0.02)
        assert abs(rows["nearest", target].drift_ml[2]) > 0.05  # the thin vessel moves
        assert rows["area", target].drift_ml == [0, 0, 0] and all(isinstance(v, Fraction) for v in rows["area", target].drift_ml)
    text = render(table)
    assert "vessel mL" in text and "valid full-resolution voxels" in text


def test_verify_finds_a_wrong_nnunet_count(tmp_path):
    root = write_msd(tmp_path / "data", cases=1)
    store = tmp_path / "v.zarr"
    assert _cli("build", "--dataset", "nifti", "--root", root, "--out", store, "--spacing", "2", "--jobs", "1").returncode == 0
    import zarr

    from softprep.verify import verify

    array = zarr.open_group(str(store), mode="r+")["train/2mm/nnunet_counts"]
    counts = array[:]
    counts[0, 1] += 1
    counts[0, 0] -= 1  # the total still matches: only the label file tells
    array[:] = counts
    problems = verify(store, root=root, jobs=1)
    assert any("nnunet_counts: recorded counts differ from nnU-Net's rule" in p for p in problems), problems
    counts[0, 0] += 5
    array[:] = counts
    assert any("nnunet_counts (min" in p for p in verify(store, jobs=1))


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "softprep.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_bad_volumes_are_one_line_naming_the_file(tmp_path):
    """A 4-D label volume, labels outside dataset.json, a label on another grid, a spacing finer than the
    source without --allow-upsampling, a zero spacing, a truncated .nii.gz: one line each, and no store
    passed off as complete."""
    def fresh(name):
        return write_msd(tmp_path / name, cases=1)

    def refused(root, *fragments, spacing=("2", "2", "2")):
        out = tmp_path / f"{root.name}.zarr"
        result = _cli("build", "--dataset", "nifti", "--root", root, "--out", out, "--spacing", *spacing, "--jobs", "1")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        for fragment in fragments:
            assert fragment in lines[0], lines[0]
        assert not out.exists() or not open_store(out).complete

    root = fresh("four_d")
    label = root / "labelsTr" / "case_000.nii.gz"
    data = np.asarray(nibabel.load(label).dataobj)
    nibabel.save(nibabel.Nifti1Image(np.stack([data, data], -1), nibabel.load(label).affine), label)
    refused(root, str(label), "a label volume is 3-D")

    root = fresh("outside")
    label = root / "labelsTr" / "case_000.nii.gz"
    data = np.asarray(nibabel.load(label).dataobj).copy()
    data[0, 0, 0] = 7
    nibabel.save(nibabel.Nifti1Image(data, nibabel.load(label).affine), label)
    refused(root, str(label), "label values [7] are not in dataset.json's labels [0, 1, 2]")

    root = fresh("grid")
    label = root / "labelsTr" / "case_000.nii.gz"
    moved = nibabel.load(label).affine.copy()
    moved[0, 3] += 3
    nibabel.save(nibabel.Nifti1Image(np.asarray(nibabel.load(label).dataobj), moved), label)
    refused(root, str(label), "not on its image's grid", "affine")

    refused(fresh("finer"), "is finer than this volume's voxels", "--allow-upsampling", spacing=("0.5", "2", "2"))
    refused(fresh("zero"), "every value must be a finite number of mm > 0", spacing=("0", "2", "2"))

    root = fresh("truncated")
    label = root / "labelsTr" / "case_000.nii.gz"
    label.write_bytes(label.read_bytes()[: len(label.read_bytes()) // 2])
    refused(root, str(label))


# Reliability: every promise of docs/reliability.md, on volume stores.

def volume_build(root: Path, out: Path, *extra) -> list:
    return ["build", "--dataset", "nifti", "--root", root, "--out", out, "--spacing", "2", "--spacing", "3", "3", "3",
            "--shard-size", "1", "--jobs", "2", *extra]


def test_a_volume_build_killed_at_random_moments_resumes_to_identical_files(tmp_path):
    """Volume builds SIGKILLed at random moments (start-up, creation, shards, completion) and an
    --overwrite rebuild over another volume dataset's store: each rerun finishes a store equal, file
    for file and byte for byte, to a clean build, and verify finds it sound against the files."""
    from tests.test_reliability import kill_after, phase_of, same_files, softprep

    root = write_msd(tmp_path / "data", cases=4)
    other = write_msd(tmp_path / "other", cases=4, spacing=(1.0, 1.0, 1.0))
    reference = tmp_path / "reference.zarr"
    started = time.perf_counter()
    assert softprep(*volume_build(root, reference)).returncode == 0
    duration = time.perf_counter() - started
    rng = np.random.default_rng(1)
    phases = []
    for k in range(6):
        out = tmp_path / f"killed{k}.zarr"
        args = volume_build(root, out)
        if k % 2:
            assert softprep(*volume_build(other, out)).returncode == 0
            args = [*args, "--overwrite"]
        kill_after(args, rng.uniform(0.3, 1.0) * duration)
        phases.append(phase_of(out))
        if phases[-1] == "shards":
            assert "UNFINISHED" in softprep("info", out).stdout
            with pytest.raises(SoftprepError, match="not built|not completely built"):
                view = open_store(out).samples("train", "2mm")
                [view[i].soft() for i in range(len(view))]
        resumed = softprep(*volume_build(root, out))
        if resumed.returncode and "store was built from other files" in resumed.stderr:
            assert open_store(out).complete  # the other dataset's store, untouched, refused, never called ours
            resumed = softprep(*volume_build(root, out, "--overwrite"))
        assert resumed.returncode == 0, (phases[-1], resumed.stderr)
        same_files(reference, out)
    assert "shards" in phases, phases
    assert verify(reference, root=root, jobs=1) == []


def test_volume_stores_refuse_strangers_folders_locks_and_changed_files(tmp_path):
    """--overwrite never deletes a folder softprep did not make; a locked volume store is refused; a
    rerun after a label volume changed is refused, naming it; a damaged chunk is found by verify and
    refused by readers."""
    import zarr

    from softprep.store import shard_file, store_lock
    from tests.test_reliability import assert_one_line_error, softprep

    root = write_msd(tmp_path / "data", cases=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert_one_line_error(softprep(*volume_build(root, mine, "--overwrite")), str(mine), "softprep did not make it")
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "v.zarr"
    with store_lock(out):
        assert_one_line_error(softprep(*volume_build(root, out)), "another softprep build")
    assert softprep(*volume_build(root, out)).returncode == 0
    label = root / "labelsTr" / "case_001.nii.gz"
    data = np.asarray(nibabel.load(label).dataobj).copy()
    data[5, 5, 5] = 2 - data[5, 5, 5]
    nibabel.save(nibabel.Nifti1Image(data, nibabel.load(label).affine), label)
    assert_one_line_error(softprep(*volume_build(root, out)), "store was built from other files", "case_001")
    view = open_store(out).samples("train", "2mm")
    shard = shard_file(view.bucket(0)["mixed_weights"], view.positions[0], out)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(SoftprepError, match=r"#0\): mixed_weights cannot be read"):
        view[0].soft()
    problems = verify(out, jobs=1)
    assert any("train/2mm: image" in p and "mixed_weights" in p for p in problems), problems
    assert zarr.open_group(str(out), mode="r").attrs["softprep"]["complete"]  # damage is reported, never hidden


def test_the_icbm152_study_and_its_page_match_a_fresh_run():
    """docs/volumes-icbm/table.json is what `python -m softprep.partial_volume` computes now (area's drift
    exactly 0 at every spacing), and docs/volumes.md shows that table."""
    pytest.importorskip("nilearn", reason="the ICBM152 template comes with nilearn")
    from softprep.partial_volume import markdown, study

    docs = Path(__file__).resolve().parents[1] / "docs"
    committed = json.loads((docs / "volumes-icbm" / "table.json").read_text())
    fresh = study()
    assert fresh["volumes_ml"] == pytest.approx(committed["volumes_ml"])
    assert [(r["spacing_mm"], r["rule"], r["size"]) for r in fresh["rows"]] == \
        [(r["spacing_mm"], r["rule"], r["size"]) for r in committed["rows"]]
    for mine, theirs in zip(fresh["rows"], committed["rows"]):
        np.testing.assert_allclose(mine["drift_ml"], theirs["drift_ml"], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(mine["mae"], theirs["mae"], rtol=1e-6)
        if mine["rule"] == "area":
            assert mine["drift_ml"] == [0, 0, 0]
        else:
            assert max(abs(v) for v in mine["drift_ml"][1:]) > 0.4
            assert all(m > a for m, a in zip(mine["mae"][1:], next(r["mae"][1:] for r in fresh["rows"]
                                                                  if r["spacing_mm"] == mine["spacing_mm"] and r["rule"] == "area")))
    page = (docs / "volumes.md").read_text()
    block = page.split("<!-- volumes-icbm:begin -->\n", 1)[1].split("<!-- volumes-icbm:end -->", 1)[0]
    assert block == markdown(committed)


def test_a_factor_per_axis_is_a_target_of_its_own(tmp_path):
    """--scales 0.5x0.5x1 halves x and y and keeps z (floor per axis, as torch's scale_factor); equal
    factors are the plain scale; a factor count that does not fit the volume is one line."""
    from softprep.plan import parse_target

    assert parse_target("0.5x0.5x1").name == "0.5x0.5x1.0" and parse_target("0.5x0.5x0.5").name == "0.5"
    assert resampling_plan("area", False, (41, 36, 30), "0.5x0.5x1").size == (20, 18, 30)
    root = write_msd(tmp_path / "data", cases=1)
    out = tmp_path / "v.zarr"
    result = _cli("build", "--dataset", "nifti", "--root", root, "--out", out, "--scales", "0.5x0.5x1", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    view = open_store(out).samples("train", "0.5x0.5x1.0")
    _, label = get_dataset("nifti", root).read_pair(get_dataset("nifti", root).samples("train")[0])
    reference = F.interpolate(one_hot(label), size=tuple(view.sizes[0]), mode="area")[0].numpy()
    np.testing.assert_allclose(view[0].soft(), reference, atol=1e-6)
    bad = _cli("build", "--dataset", "nifti", "--root", root, "--out", tmp_path / "w.zarr", "--scales", "0.25x0.5", "--jobs", "1")
    assert bad.returncode == 1 and "2 factors for a 3-axis image" in bad.stderr and bad.stderr.count("\n") == 1


def test_show_draws_three_orthogonal_slices_of_a_volume(tmp_path):
    """`softprep show` on a volume store: three rows (sagittal, coronal, axial) of intensity, hard labels and
    the class's soft weight; each hard-label panel shows exactly the palette colours of its central slice."""
    root = write_msd(tmp_path / "data", cases=1)
    out = tmp_path / "v.zarr"
    assert _cli("build", "--dataset", "nifti", "--root", root, "--out", out, "--spacing", "2", "--jobs", "1").returncode == 0
    picture = tmp_path / "show.png"
    result = _cli("show", out, "case_000", "--scale", "2mm", "--classes", "vessel", "--out", picture)
    assert result.returncode == 0, result.stderr
    from PIL import Image

    from softprep.show import CAPTION

    pixels = np.asarray(Image.open(picture).convert("RGB"))
    store = open_store(out)
    sample = store.samples("train", "2mm")[0]
    panel, caption = 240, max(CAPTION, 240 // 24)
    assert pixels.shape[1] == 3 * panel and pixels.shape[0] > 3 * (panel + caption)
    palette = np.asarray(store.spec.palette, np.uint8)
    hard, centre = sample.nn(), [n // 2 for n in sample.shape]
    for row, cut in enumerate((hard[centre[0]], hard[:, centre[1]], hard[:, :, centre[2]])):
        top = row * (panel + caption) + caption
        shown = pixels[top:top + panel, panel:2 * panel].reshape(-1, 3)
        assert {tuple(c) for c in np.unique(shown, axis=0)} == {tuple(palette[c]) for c in np.unique(cut)}
