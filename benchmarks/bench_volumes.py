"""Volume builds against torch: the ICBM152 1 mm volume to 2 mm and 4 mm, with 3 and with 100 classes.

softprep's label path (the exact area soft labels at both sizes and their packed encoding) on the
decoded label volume, and its whole `build` of an MSD-layout folder holding the volume (NIfTI decode,
the intensity volume resampled, the soft labels, both hard maps, nnU-Net's counts, compression and
writes), one worker. torch, measured in the same run on the same decoded label volume: one-hot
``(C, X, Y, Z) float32``, ``F.interpolate(mode="area")`` to the same two sizes, and a sparse
encoding of the result (classes sorted by weight, the planes any voxel uses), one thread (the
build's one core). The 3 classes are background / grey / white matter (argmax of the template's
maps); the 100 are a parcellation of the same brain (99 regions grown from seeds spread over it),
the label count of whole-body sets. Targets: label-path ratio >= 1 with 3 classes, >= 5 with 100 (the
whole build's ratio reported beside it); the build's peak memory (a fresh process) <= 1 GiB.

    python benchmarks/bench_volumes.py [--repeats 3] [--json bench-volumes.json] [--readme docs/performance.md] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from measure import peak_rss_mib

import numpy as np

TARGETS = ("2mm", "4mm")


def parcellation(hard: np.ndarray, regions: int = 99, seed: int = 0) -> np.ndarray:
    """``(X, Y, Z) uint8``: 0 outside the brain, else the nearest of ``regions`` seeds drawn among its voxels (1..regions)."""
    from scipy.spatial import cKDTree

    brain = np.argwhere(hard > 0)
    seeds = brain[np.random.default_rng(seed).choice(len(brain), regions, replace=False)]
    labels = np.zeros(hard.shape, np.uint8)
    labels[tuple(brain.T)] = cKDTree(seeds).query(brain)[1] + 1
    return labels


def write_case(folder: Path, image: np.ndarray, labels: np.ndarray, affine: np.ndarray, classes: int) -> Path:
    """An MSD-layout folder with one case."""
    import nibabel

    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    nibabel.save(nibabel.Nifti1Image(image, affine), folder / "imagesTr" / "icbm_000.nii.gz")
    nibabel.save(nibabel.Nifti1Image(labels, affine), folder / "labelsTr" / "icbm_000.nii.gz")
    names = {"0": "background", **{str(c): f"region {c}" for c in range(1, classes)}}
    (folder / "dataset.json").write_text(json.dumps({"name": "ICBM152", "modality": {"0": "T1"}, "labels": names}))
    return folder


def softprep_labels(labels: np.ndarray, classes: int, sizes: list[tuple[int, ...]]) -> float:
    """Seconds of softprep's label path alone, on the same decoded volume as torch: the exact area soft
    labels at every size and their packed (stored) encoding."""
    from softprep.kernels import axis_weights
    from softprep.resample import prepare_label, soft_label_axes
    from softprep.softlabel import pack

    start = time.perf_counter()
    prepared = prepare_label(labels, classes)
    for size in sizes:
        pack(soft_label_axes(prepared, [axis_weights("area", n, m) for n, m in zip(labels.shape, size)]))
    return time.perf_counter() - start


def softprep_build(folder: Path, out: Path) -> float:
    """Seconds of one whole build of ``folder`` to both targets (one worker)."""
    from softprep.build import build
    from softprep.datasets import get_dataset

    start = time.perf_counter()
    build(get_dataset("nifti", folder), out, list(TARGETS), jobs=1, overwrite=True)
    return time.perf_counter() - start


def torch_baseline(labels: np.ndarray, classes: int, sizes: list[tuple[int, ...]]) -> float:
    """Seconds of one-hot + F.interpolate(area) + sparse encoding to every size (one thread)."""
    import torch
    import torch.nn.functional as F

    start = time.perf_counter()
    one_hot = F.one_hot(torch.from_numpy(labels).long(), classes).permute(3, 0, 1, 2)[None].float()
    for size in sizes:
        dense = F.interpolate(one_hot, size=size, mode="area")[0]
        weights, order = torch.sort(dense, dim=0, descending=True)
        planes = int((weights > 0).sum(0).max())
        encoded = (order[:planes].to(torch.uint8), weights[:planes])
        del dense, encoded
    return time.perf_counter() - start


def build_code(folder: Path, out: Path) -> str:
    return (f"from softprep.build import build; from softprep.datasets import get_dataset\n"
            f"build(get_dataset('nifti', {str(folder)!r}), {str(out)!r}, {list(TARGETS)!r}, jobs=1, overwrite=True)")


def torch_code(folder: Path, classes: int, sizes) -> str:
    return (f"import nibabel, numpy as np, torch; torch.set_num_threads(1); from bench_volumes import torch_baseline\n"
            f"labels = np.asarray(nibabel.load({str(folder / 'labelsTr' / 'icbm_000.nii.gz')!r}).dataobj)\n"
            f"torch_baseline(labels, {classes}, {[tuple(s) for s in sizes]!r})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a 64^3 corner of the volume, one repeat: proves the script runs")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--readme", type=Path, help="Regenerate the volume table (its bench-volumes block) in this file.")
    args = parser.parse_args()
    import torch

    from softprep.partial_volume import icbm152
    from softprep.plan import resampling_plan

    torch.set_num_threads(1)
    t1, tissues, _, spacing = icbm152()
    if args.smoke:
        t1, tissues = t1[60:124, 80:144, 60:124], tissues[60:124, 80:144, 60:124]
    repeats = 1 if args.smoke else args.repeats
    affine = np.diag([*spacing, 1.0])
    sizes = [resampling_plan("area", False, tissues.shape, t, spacing=spacing).size for t in TARGETS]
    results = {"shape": list(tissues.shape), "targets": list(TARGETS), "sizes": [list(s) for s in sizes], "torch_threads": 1,
               "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for classes, labels in ((3, tissues), (100, parcellation(tissues))):
            folder = write_case(Path(tmp) / f"c{classes}", t1, labels.astype(np.uint8), affine, classes)
            out = Path(tmp) / f"c{classes}.zarr"
            ours = statistics.median(softprep_build(folder, out) for _ in range(repeats))
            label_path = statistics.median(softprep_labels(labels, classes, sizes) for _ in range(repeats))
            theirs = statistics.median(torch_baseline(labels, classes, sizes) for _ in range(repeats))
            rss = None if args.smoke else peak_rss_mib(build_code(folder, out))
            torch_rss = None if args.smoke else peak_rss_mib(torch_code(folder, classes, sizes))
            row = {"classes": classes, "softprep_build_s": ours, "softprep_labels_s": label_path, "torch_s": theirs,
                   "labels_ratio": theirs / label_path, "build_ratio": theirs / ours, "build_peak_rss_mib": rss,
                   "torch_peak_rss_mib": torch_rss}
            results["rows"].append(row)
            target = 1 if classes == 3 else 5
            print(f"{classes:3d} classes: torch one-hot + area + sparse {theirs:.2f} s; softprep's exact soft labels "
                  f"{label_path:.2f} s: x{theirs / label_path:.2f} (target >= {target}); the whole softprep build "
                  f"{ours:.2f} s: x{theirs / ours:.2f}"
                  + (f"; peak memory: build {rss:.0f} MiB (<= 1024), torch {torch_rss:.0f} MiB" if rss else ""))
    print(f"volume {'x'.join(map(str, tissues.shape))} at 1 mm -> {', '.join('x'.join(map(str, s)) for s in sizes)}; "
          f"median of {repeats}; torch on 1 thread, the build on 1 worker")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.readme:
        from blocks import update_block

        update_block(args.readme, "bench-volumes", markdown(results, repeats))
        print(f"updated the volume table in {args.readme}")


def markdown(results: dict, repeats: int) -> str:
    """The figures as docs/performance.md shows them."""
    sizes = " and ".join("x".join(map(str, s)) for s in results["sizes"])
    lines = [f"ICBM152, {'x'.join(map(str, results['shape']))} at 1 mm, to {' and '.join(results['targets'])} ({sizes}) "
             f"in one build; median of {repeats}; torch on one thread, the build on one worker.", "",
             "| classes | torch one-hot + area + sparse | softprep soft labels | ratio | target | whole softprep build | "
             "ratio | peak memory: build / torch |", "|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        target = ">= 1x" if row["classes"] == 3 else ">= 5x"
        memory = (f"{row['build_peak_rss_mib']:.0f} / {row['torch_peak_rss_mib']:.0f} MiB (<= 1024 MiB)"
                  if row["build_peak_rss_mib"] else "")
        lines.append(f"| {row['classes']} | {row['torch_s']:.2f} s | {row['softprep_labels_s']:.2f} s | "
                     f"{row['labels_ratio']:.1f}x | {target} | {row['softprep_build_s']:.2f} s | {row['build_ratio']:.2f}x | {memory} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
