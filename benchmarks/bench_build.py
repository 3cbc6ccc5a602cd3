"""`make bench`: speed and size of softprep against the naive peer, measured in one run, one core.

1. Soft-label compute per scale: ours vs torch dense one-hot + F.interpolate (bilinear).
2. Build throughput vs decode-only throughput (PNG decode of image + label alone).
3. Bytes per pixel on disk: soft label vs the NN label map vs dense float16 (same codecs).

Data: the real Cityscapes samples in ../shared/fixtures when present, else demo scenes at 1024x2048.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import zarr  # noqa: E402

from softprep.build import build  # noqa: E402
from softprep.datasets import get_dataset  # noqa: E402
from softprep.info import disk_bytes  # noqa: E402
from softprep.plan import resampling_plan  # noqa: E402
from softprep.resample import prepare_label, soft_label  # noqa: E402
from softprep.store import _codecs, open_store, target_name  # noqa: E402

SCALES = (0.125, 0.25, 0.5)
REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cityscapes-real"


def best_of(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def dataset_root(tmp: Path) -> tuple[Path, str]:
    if REAL.is_dir():
        return REAL, "real Cityscapes samples (8 frames, 1024x2048)"
    from softprep.demo import make_demo

    return make_demo(tmp / "demo", train=6, val=2, size=(1024, 2048)), "demo scenes (8 frames, 1024x2048)"


def bench_compute(dataset, kernel: str) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    _, label = dataset.read_pair(dataset.samples("train")[0])
    h, w = label.shape
    c = dataset.num_classes
    print(f"\n1. soft-label compute, {h}x{w} label map, kernel {kernel}, one core (best of 3)")
    print(f"   {'scale':>6} {'softprep':>10} {'torch one-hot+interp':>22} {'speed-up':>9}")
    for scale in SCALES:
        plan = resampling_plan(kernel, False, (h, w), scale)
        size = plan.size
        ours = best_of(lambda: soft_label(prepare_label(label, c), plan.rows, plan.cols))

        def peer():
            codes = torch.from_numpy(np.where(label == 255, c, label)).long()
            one_hot = F.one_hot(codes, c + 1).permute(2, 0, 1)[None].float()
            F.interpolate(one_hot, size=size, mode=kernel, align_corners=False)

        theirs = best_of(peer)
        print(f"   {scale:>6} {ours * 1e3:>8.1f}ms {theirs * 1e3:>20.1f}ms {theirs / ours:>8.1f}x")


def bench_build(dataset, root: Path, tmp: Path, kernel: str) -> Path:
    samples = [s for split in dataset.splits() for s in dataset.samples(split)]
    decode = best_of(lambda: [dataset.read_pair(s) for s in samples], repeat=2)
    out = tmp / "bench.zarr"

    def run():
        build(dataset, out, SCALES, kernel=kernel, jobs=1, overwrite=True)

    full = best_of(run, repeat=2)
    n = len(samples)
    print(f"\n2. build throughput, {n} images, scales {', '.join(map(str, SCALES))}, one process")
    print(f"   decode only (image + label PNG): {decode / n * 1e3:6.1f} ms/image  {n / decode:5.2f} images/s")
    print(f"   softprep build (decode + all) : {full / n * 1e3:6.1f} ms/image  {n / full:5.2f} images/s")
    print(f"   build / decode-only throughput: {decode / full:.2f}  (target >= 0.70)")
    return out


def bench_size(store_path: Path, tmp: Path) -> None:
    store = open_store(store_path)
    c = len(store.classes)
    print("\n3. bytes per pixel on disk (zstd-3 + crc32c, all splits)")
    print(f"   {'scale':>6} {'soft label':>11} {'NN map':>8} {'dense f16':>10} {'soft/NN':>8} {'f16/soft':>9}")
    for scale in SCALES:
        soft = nn = pixels = 0
        dense_path = tmp / f"dense-{scale}.zarr"
        for split in store.splits:
            group = store_path / split / target_name(scale)
            buckets = [group / b for b in store.spec.splits[split].members]
            soft += sum(disk_bytes(b / name) for b in buckets for name in ("classes", "weights")) + disk_bytes(group / "planes")
            nn += sum(disk_bytes(b / "nn") for b in buckets)
            view = store.samples(split, scale)
            h, w = (int(v) for v in view.sizes[0])
            pixels += len(view) * h * w
            dense = zarr.create_array(str(dense_path / split), shape=(len(view), c, h, w), chunks=(1, c, h, w),
                                      dtype="float16", fill_value=0, overwrite=True, **_codecs())
            for i, sample in enumerate(view):
                dense[i] = sample.soft().astype(np.float16)
        f16 = disk_bytes(dense_path)
        print(f"   {scale:>6} {soft / pixels:>9.3f}B {nn / pixels:>6.3f}B {f16 / pixels:>8.3f}B "
              f"{soft / nn:>7.2f}x {f16 / soft:>8.1f}x")
    print("   targets: soft/NN <= 3x, dense f16 / soft >= 20x")


def main() -> None:
    kernel = sys.argv[1] if len(sys.argv) > 1 else "bilinear"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root, what = dataset_root(tmp)
        print(f"softprep benchmark on {what}")
        dataset = get_dataset("cityscapes", root)
        bench_compute(dataset, kernel)
        store = bench_build(dataset, root, tmp, kernel)
        bench_size(store, tmp)


if __name__ == "__main__":
    main()
