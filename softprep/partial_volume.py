"""Partial volumes on real data: what each downsampling rule does to brain tissue volumes.

The ICBM152 2009 template that nilearn's wheel ships (T1 and grey/white-matter probability maps,
197 x 233 x 189 at 1 mm; nothing is downloaded) gives a hard 1 mm tissue segmentation (the argmax
of background, grey matter and white matter) and, independently, the *real* partial-volume maps.
At 2, 3 and 4 mm each rule turns the hard segmentation into per-voxel tissue fractions:

* ``nearest`` (torch ``nearest``, MONAI ``Resize(mode="nearest")``) and ``nearest-exact``: one-hot;
* ``nnU-Net`` (order-1 interpolation of each class's one-hot, the voxels where a class reaches 0.5
  take it, the rest stay background: nnU-Net's ``resize_segmentation``, here with the trilinear
  weights of torch's ``F.interpolate``, ``align_corners=False``);
* ``area`` (softprep's soft labels): the exact share of each tissue in each coarse voxel.

Reported per tissue: (a) the volume drift in mL against the 1 mm segmentation (``area`` keeps
every volume exactly: rational weights), (b) the mean absolute error of the rule's fractions
against the real probability maps averaged (area) to the same grid: how much of the true partial
volume each rule recovers.

    python -m softprep.partial_volume --out docs/volumes-icbm     # writes table.json, table.md, slices.png
    python -m softprep.partial_volume --msd icbm                  # the template as an MSD dataset folder
"""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from softprep.errors import SoftprepError
from softprep.kernels import axis_weights
from softprep.plan import plan_for_size
from softprep.resample import nearest_labels, resample_axes, soft_label_axes

TISSUES = ("background", "grey matter", "white matter")
RULES = ("nearest", "nearest-exact", "nnU-Net", "area")
SPACINGS = (2, 3, 4)


def icbm152() -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, ...]]:
    """``(T1 (X, Y, Z) float32, hard tissues (X, Y, Z) uint8, real fractions (3, X, Y, Z) float32, spacing mm)``
    of the 1 mm template nilearn ships."""
    try:
        from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template
    except ImportError:
        raise SoftprepError("the ICBM152 template comes with nilearn: pip install nilearn") from None
    t1 = load_mni152_template(resolution=1)
    grey = np.asarray(load_mni152_gm_template(resolution=1).get_fdata(), np.float32)
    white = np.asarray(load_mni152_wm_template(resolution=1).get_fdata(), np.float32)
    fractions = np.stack([np.clip(1 - grey - white, 0, 1), grey, white])
    hard = np.argmax(fractions, axis=0).astype(np.uint8)
    spacing = tuple(float(v) for v in t1.header.get_zooms()[:3])
    return np.asarray(t1.get_fdata(), np.float32), hard, fractions, spacing


def write_msd(folder: Path) -> Path:
    """The template as a Medical Segmentation Decathlon folder (one case: the T1 and its hard tissues),
    for trying ``softprep build --dataset nifti`` on real data offline."""
    import nibabel

    from nilearn.datasets import load_mni152_template

    t1, hard, _, _ = icbm152()
    affine = load_mni152_template(resolution=1).affine
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(t1, affine), folder / "imagesTr" / "icbm152_000.nii.gz")
    nibabel.save(nibabel.Nifti1Image(hard, affine), folder / "labelsTr" / "icbm152_000.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({"name": "ICBM152 2009 tissues", "modality": {"0": "T1"},
                                                     "labels": {str(c): name for c, name in enumerate(TISSUES)}}, indent=2))
    return folder


def rule_fractions(hard: np.ndarray, size: tuple[int, ...], rule: str) -> np.ndarray:
    """``(3, x, y, z) float64`` tissue fractions per output voxel under ``rule``."""
    if rule in ("nearest", "nearest-exact"):
        labels = nearest_labels(hard, *(axis_weights(rule, n, m) for n, m in zip(hard.shape, size)))
        return np.stack([labels == c for c in range(len(TISSUES))]).astype(np.float64)
    kernel = "area" if rule == "area" else "bilinear"
    soft = soft_label_axes(hard, [axis_weights(kernel, n, m) for n, m in zip(hard.shape, size)], len(TISSUES)).dense()
    if rule == "area":
        return soft.astype(np.float64)
    labels = np.zeros(size, np.uint8)  # nnU-Net: each class where its interpolated one-hot reaches 0.5, else background
    for c in range(1, len(TISSUES)):
        labels[soft[c] >= 0.5] = c
    return np.stack([labels == c for c in range(len(TISSUES))]).astype(np.float64)


def study(spacings=SPACINGS) -> dict:
    """The table: per spacing, rule and tissue, the volume drift in mL and the MAE against the real maps."""
    _, hard, real, spacing = icbm152()
    voxel_ml = math.prod(spacing) / 1000
    counts = np.bincount(hard.ravel(), minlength=len(TISSUES))
    rows = []
    for mm in spacings:
        size = tuple(max(1, round(n * s / mm)) for n, s in zip(hard.shape, spacing))
        out_ml = voxel_ml * math.prod(hard.shape) / math.prod(size)  # the output voxel's volume, extent kept
        truth = resample_axes(np.moveaxis(real, 0, -1), plan_for_size("area", False, hard.shape, size).axes)
        truth = np.moveaxis(truth, -1, 0).astype(np.float64)
        for rule in RULES:
            fractions = rule_fractions(hard, size, rule)
            drift = [float(fractions[c].sum() * out_ml - counts[c] * voxel_ml) for c in range(len(TISSUES))]
            if rule == "area":  # exact: rational weights
                drift = [float(_exact_area_drift(hard, size, c)) for c in range(len(TISSUES))]
            mae = [float(np.abs(fractions[c] - truth[c]).mean()) for c in range(len(TISSUES))]
            rows.append({"spacing_mm": mm, "size": list(size), "rule": rule, "drift_ml": drift, "mae": mae})
    return {"source": "ICBM152 2009 (nilearn), 1 mm, 197x233x189", "tissues": list(TISSUES),
            "volumes_ml": [float(c * voxel_ml) for c in counts], "rows": rows}


def _exact_area_drift(hard: np.ndarray, size: tuple[int, ...], c: int) -> Fraction:
    """The area soft label's volume change of tissue ``c``, in rational arithmetic (voxels of 1 mm^3)."""
    soft = soft_label_axes(hard, [axis_weights("area", n, m) for n, m in zip(hard.shape, size)], len(TISSUES))
    voxels = Fraction(int(soft.class_mass()[c]), soft.denominator) * Fraction(math.prod(hard.shape), math.prod(size))
    return voxels - int(np.count_nonzero(hard == c))


def markdown(result: dict) -> str:
    lines = ["| spacing | rule | " + " | ".join(f"{t} drift (mL)" for t in result["tissues"][1:]) + " | "
             + " | ".join(f"{t} MAE" for t in result["tissues"][1:]) + " |", "|---|---|" + "---|" * 4]
    for row in result["rows"]:
        drift = " | ".join("0 (exact)" if row["rule"] == "area" else f"{v:+.2f}" for v in row["drift_ml"][1:])
        mae = " | ".join(f"{v:.4f}" for v in row["mae"][1:])
        lines.append(f"| {row['spacing_mm']} mm | {row['rule']} | {drift} | {mae} |")
    return "\n".join(lines) + "\n"


def slices(path: Path, mm: int = 3) -> Path:
    """Three orthogonal central slices at ``mm``: T1, the nearest-exact hard tissues, the area weight of grey matter."""
    from softprep.plot import _pyplot

    plt = _pyplot()
    t1, hard, _, spacing = icbm152()
    size = tuple(max(1, round(n * s / mm)) for n, s in zip(hard.shape, spacing))
    image = resample_axes(t1, plan_for_size("area", False, hard.shape, size).axes)
    labels = np.argmax(rule_fractions(hard, size, "nearest-exact"), axis=0)
    grey = rule_fractions(hard, size, "area")[1]
    centre = [n // 2 for n in size]
    views = [("sagittal", lambda a: a[centre[0]]), ("coronal", lambda a: a[:, centre[1]]), ("axial", lambda a: a[:, :, centre[2]])]
    fig, axes = plt.subplots(3, 3, figsize=(9, 9))
    for row, (name, cut) in enumerate(views):
        for col, (title, data, cmap) in enumerate((("T1", image, "gray"), ("tissues (nearest-exact)", labels, "viridis"),
                                                   ("grey matter, area weight", grey, "magma"))):
            ax = axes[row][col]
            ax.imshow(np.rot90(cut(data)), cmap=cmap, vmin=0 if col else None, vmax=(2 if col == 1 else 1) if col else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=10)
            if col == 0:
                ax.set_ylabel(name)
    fig.suptitle(f"ICBM152 at {mm} mm: a coarse voxel holds a mixture of tissues", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Write the study (table.json, table.md, slices.png) here.")
    parser.add_argument("--msd", type=Path, help="Write the template as an MSD dataset folder here instead.")
    args = parser.parse_args()
    if args.msd:
        print(f"wrote {write_msd(args.msd)}: imagesTr/, labelsTr/, dataset.json")
        return
    if not args.out:
        parser.error("pass --out FOLDER (the study) or --msd FOLDER (the dataset)")
    args.out.mkdir(parents=True, exist_ok=True)
    result = study()
    (args.out / "table.json").write_text(json.dumps(result, indent=2))
    (args.out / "table.md").write_text(markdown(result))
    slices(args.out / "slices.png")
    print(markdown(result), end="")


if __name__ == "__main__":
    main()
