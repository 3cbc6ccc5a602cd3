"""Mixed image sizes: what reading one image costs, and what one build worker holds in memory.

1. Read cost: a 256x256 image in a store whose largest image is 2100x2100, against the same image
   in a store of its own (bytes read from disk, from /proc/self/io, and decode time; best of 20).
   Goal: <= 2x.
2. Peak RSS of one build process (``--jobs 1``: the worker is the process): a 24-megapixel image
   (6000x4000, Mapillary's largest) at 0.125 0.25 0.5; and 24 images of 2048x1024 at scale 1.0
   with ``--shard-size 24`` (1.1 GiB in softprep 0.1, growing with the shard size). Goal: <= 1 GiB.

    python benchmarks/bench_datasets.py [--json OUT.json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from blocks import Report
from measure import peak_rss_mib

REPORT = Report()

import numpy as np
from PIL import Image

READ_REPEATS = 20


def _write_pairs(root: Path, sizes, seed: int = 0) -> Path:
    """Cityscapes-layout pairs with natural-looking content (noise + gradients), train-id labels."""
    rng = np.random.default_rng(seed)
    image_dir, label_dir = root / "leftImg8bit" / "train" / "x", root / "gtFine" / "train" / "x"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for k, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[:h, :w]
        image = np.stack([(yy * 255 // h), (xx * 255 // w), rng.integers(0, 60, (h, w))], -1).astype(np.uint8)
        label = ((yy // 17 + xx // 23) % 19).astype(np.uint8)
        name = f"x_{k:06d}_000019"
        Image.fromarray(image).save(image_dir / f"{name}_leftImg8bit.png")
        Image.fromarray(label).save(label_dir / f"{name}_gtFine_labelTrainIds.png")
    return root


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def _read_cost(store_path: Path, image_id: str) -> tuple[float, int]:
    """(seconds, bytes) to read image, soft label and NN map of one sample, opened afresh each time."""
    from softprep import open_store

    best, nbytes = float("inf"), 0
    for _ in range(READ_REPEATS):
        view = open_store(store_path).samples("train", 1.0)
        sample = view[image_id]
        before, start = _bytes_read(), time.perf_counter()
        sample.image, sample.soft_label(), sample.nn()
        elapsed, read = time.perf_counter() - start, _bytes_read() - before
        if elapsed < best:
            best, nbytes = elapsed, read
    return best, nbytes


def bench_read(tmp: Path, scale: int = 1) -> dict:
    from softprep.build import build
    from softprep.datasets import get_dataset

    mixed = _write_pairs(tmp / "mixed", [(2100 // scale, 2100 // scale), (256, 256), (1500 // scale, 900 // scale)])
    alone = _write_pairs(tmp / "alone", [(256, 256)], seed=0)
    # the same 256x256 pixels in both stores
    for name in ("leftImg8bit/train/x/x_000000_000019_leftImg8bit.png", "gtFine/train/x/x_000000_000019_gtFine_labelTrainIds.png"):
        (alone / name).write_bytes((mixed / name.replace("x_000000", "x_000001")).read_bytes())
    for root in (mixed, alone):
        build(get_dataset("cityscapes", root), root / "store.zarr", [1.0], kernel="area", jobs=1)
    mixed_s, mixed_b = _read_cost(mixed / "store.zarr", "x_000001_000019")
    alone_s, alone_b = _read_cost(alone / "store.zarr", "x_000000_000019")
    result = {"mixed_ms": mixed_s * 1e3, "alone_ms": alone_s * 1e3, "mixed_bytes": mixed_b, "alone_bytes": alone_b,
              "time_ratio": mixed_s / alone_s, "bytes_ratio": mixed_b / alone_b}
    REPORT.say("1. read a 256x256 sample (image + soft label + NN), store with a 2100x2100 image vs its own store")
    REPORT.say(f"   time  {mixed_s * 1e3:6.2f} ms vs {alone_s * 1e3:6.2f} ms  ratio {result['time_ratio']:.2f}  (goal <= 2)")
    REPORT.say(f"   bytes {mixed_b:8d} vs {alone_b:8d}     ratio {result['bytes_ratio']:.2f}  (goal <= 2)")
    return result


_BUILD = """
import sys
from softprep.build import build
from softprep.datasets import get_dataset
build(get_dataset("cityscapes", sys.argv[1]), sys.argv[2], [float(s) for s in sys.argv[4].split(",")],
      jobs=1, shard_size=int(sys.argv[3]), splits=["train"])
"""


def _peak_rss_mib(root: Path, scales: str, shard_size: int) -> float:
    return peak_rss_mib(_BUILD, str(root), str(root / f"peak-{shard_size}.zarr"), str(shard_size), scales)


def bench_memory(tmp: Path, scale: int = 1) -> dict:
    big = _write_pairs(tmp / "big", [(4000 // scale, 6000 // scale)])
    many = _write_pairs(tmp / "many", [(1024 // scale, 2048 // scale)] * (24 // scale))
    result = {"rss_24mp_mib": _peak_rss_mib(big, "0.125,0.25,0.5", 8),
              "rss_24x2mp_scale1_shard24_mib": _peak_rss_mib(many, "1.0", 24)}
    REPORT.say("2. peak RSS of one build process (goal <= 1024 MiB)")
    REPORT.say(f"   one 6000x4000 image at 0.125 0.25 0.5        {result['rss_24mp_mib']:7.0f} MiB")
    REPORT.say(f"   24 images 2048x1024 at 1.0, --shard-size 24  {result['rss_24x2mp_scale1_shard24_mib']:7.0f} MiB")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--smoke", action="store_true", help="images 8x smaller, fewer reads: proves the script runs")
    parser.add_argument("--readme", type=Path, help="Write the figures into this file's bench-datasets block.")
    args = parser.parse_args()
    global READ_REPEATS
    scale = 8 if args.smoke else 1
    if args.smoke:
        READ_REPEATS = 2
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        result = {"read": bench_read(tmp, scale), "memory": bench_memory(tmp, scale)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    REPORT.write(args.readme, "bench-datasets", "python benchmarks/bench_datasets.py")


if __name__ == "__main__":
    main()
