"""Training data path: where to densify sparse soft labels, measured in one run.

For a store (default: demo-store.zarr from `make demo`) at one scale with the paper's
augmentation, times a batch of samples both ways on this machine:

* worker: read + densify + geometry in the DataLoader worker; the batch carries (C, h, w) float32.
* device: the worker reads sparse planes only; densify + geometry run where the model runs.

Reported per image: read (zarr decode), finish (densify + geometry), and bytes a batch moves
from worker to trainer. On a GPU machine the "device" finish runs on the GPU (pass --device cuda).

    python benchmarks/bench_loader.py [STORE] [--scale 0.5] [--crop 256x512] [--device cpu] [--readme FILE] [--smoke]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from blocks import Report
from softprep_train.data import Augment, StoreDataset, finish_sample

REPORT = Report()


def tensor_bytes(item: dict) -> int:
    return sum(v.numel() * v.element_size() for v in item.values() if torch.is_tensor(v))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="?", default="demo-store.zarr")
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--crop", default="256x512")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="a tiny store of its own, 2 samples: proves the script runs")
    parser.add_argument("--readme", type=Path, help="Write the figures into this file's bench-loader block.")
    args = parser.parse_args()
    if args.smoke:
        import tempfile

        from softprep.build import build
        from softprep.datasets import get_dataset
        from softprep.demo import make_demo

        tmp = Path(tempfile.mkdtemp())
        args.store, args.crop, args.images = str(tmp / "s.zarr"), "32x64", 2
        build(get_dataset("cityscapes", make_demo(tmp / "d", train=2, val=1, size=(128, 256))), args.store, [args.scale],
              jobs=1)
    crop = tuple(int(v) for v in args.crop.split("x"))
    device = torch.device(args.device)
    dataset = StoreDataset(args.store, "train", args.scale, Augment(crop), densify="device")
    keys = [(i % len(dataset), 1000 + i) for i in range(args.images)]

    start = time.perf_counter()
    raws = [dataset.raw(i, seed) for i, seed in keys]
    read = (time.perf_counter() - start) / len(keys)

    start = time.perf_counter()
    finished_cpu = [finish_sample(raw, dataset.num_classes) for raw in raws]
    finish_cpu = (time.perf_counter() - start) / len(keys)

    start = time.perf_counter()
    for raw in raws:
        on_device = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in raw.items()}
        finish_sample(on_device, dataset.num_classes)
    if device.type == "cuda":
        torch.cuda.synchronize()
    finish_device = (time.perf_counter() - start) / len(keys)

    sparse = sum(tensor_bytes(r) for r in raws) / len(raws)
    dense = sum(tensor_bytes(f) for f in finished_cpu) / len(finished_cpu)
    REPORT.say(f"store {args.store}, scale {args.scale}, crop {crop[0]}x{crop[1]}, {len(keys)} augmented samples, torch threads {torch.get_num_threads()}")
    REPORT.say(f"read (zarr decode, sparse)         {1e3 * read:7.1f} ms/img")
    REPORT.say(f"densify + geometry on CPU (worker) {1e3 * finish_cpu:7.1f} ms/img")
    REPORT.say(f"densify + geometry on {device.type:<4} (device) {1e3 * finish_device:7.1f} ms/img")
    REPORT.say(f"worker -> trainer bytes: dense {dense / 2**20:.2f} MiB/img, sparse {sparse / 2**20:.2f} MiB/img ({dense / sparse:.1f}x)")

    REPORT.write(args.readme, "bench-loader", "python benchmarks/bench_loader.py")

if __name__ == "__main__":
    main()
