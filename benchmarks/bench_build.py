"""`make bench`: softprep's speed and size against baselines measured in the same run.

Each figure is printed beside its target (issue 11) and its baseline:

1. soft-label compute vs torch one-hot + ``F.interpolate`` (same output, checked)  target >= 20x
2. build throughput vs decoding the PNGs alone, one process, 3 scales             target >= 0.7x
   at Cityscapes size (2048x1024) and at 24 MP (Mapillary size), with the time split
   (decode, colour, soft label, NN, write); ``--jobs 2`` vs ``--jobs 1``           target >= 1.8x
3. soft-label bytes on disk vs the NN map and vs zstd dense float16              targets <= 2x, <= 0.5x
4. training read path (store read + densify + geometry) vs on-the-fly PNG decode
   + one-hot + interpolate, one worker                                           target >= 5x

Data: the real Cityscapes frames in ../shared/fixtures when present (25 MP frames are 4x3
mosaics of them), else demo scenes of the same sizes.

    python benchmarks/bench_build.py [--kernel area] [--json FILE] [--readme docs/performance.md] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import zarr  # noqa: E402
from PIL import Image  # noqa: E402

from softprep.build import build, plan_store, process_sample  # noqa: E402
from softprep.datasets import get_dataset  # noqa: E402
from softprep.softlabel import IGNORE_INDEX  # noqa: E402
from softprep.info import disk_bytes  # noqa: E402
from softprep.plan import resampling_plan  # noqa: E402
from blocks import update_block  # noqa: E402
from softprep.resample import nearest_labels, prepare_label, resize_image, soft_label  # noqa: E402
from softprep.softlabel import pack  # noqa: E402
from softprep.store import SOFT_LABEL_ARRAYS, chunk_codecs, create_store, open_store, write_shard  # noqa: E402

SCALES = (0.125, 0.25, 0.5)
REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cityscapes-real"
TARGETS = {"compute_speedup": 20.0, "build_vs_decode": 0.7, "jobs2_speedup": 1.8, "soft_over_nn": 2.0,
           "soft_over_f16": 0.5, "read_speedup": 5.0}
#: torch's mode for each softprep kernel (same output at these integer factors).
TORCH_MODE = {"area": "area", "bilinear": "bilinear"}


#: Repeats of each timing (1 with --smoke).
REPEAT = 3


def best_of(fn, repeat: int | None = None) -> float:
    times = []
    for _ in range(repeat or REPEAT):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ------------------------------------------------------------------------------------------ data


def cityscapes_copies(source: Path, out: Path, copies: int) -> Path:
    """A Cityscapes-layout folder whose train split holds ``copies`` links to each source frame."""
    for image in sorted(source.glob("leftImg8bit/*/*/*_leftImg8bit.png")):
        label = next(source.glob(f"gtFine/*/*/{image.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png')}"))
        city, seq, frame = image.name.split("_")[:3]
        for k in range(copies):
            stem = f"{city}_{seq}_{int(frame) + 1000000 * k:06d}"
            for src, rel in ((image, f"leftImg8bit/train/{city}/{stem}_leftImg8bit.png"),
                             (label, f"gtFine/train/{city}/{stem}_gtFine_labelIds.png")):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).symlink_to(src.resolve())
    return out


def mosaic_frames(source: Path, out: Path, count: int, tiles: tuple[int, int] = (4, 3)) -> Path:
    """``count`` 24-megapixel frames (Mapillary size), each a mosaic of real Cityscapes frames."""
    images = sorted(source.glob("leftImg8bit/*/*/*_leftImg8bit.png"))
    for n in range(count):
        rows_img, rows_lab = [], []
        for r in range(tiles[0]):
            row = [images[(n + r * tiles[1] + c) % len(images)] for c in range(tiles[1])]
            rows_img.append(np.concatenate([np.asarray(Image.open(p).convert("RGB")) for p in row], axis=1))
            labels = [next(source.glob(f"gtFine/*/*/{p.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png')}")) for p in row]
            rows_lab.append(np.concatenate([np.asarray(Image.open(p)) for p in labels], axis=1))
        stem = f"mosaic_000000_{n:06d}"
        for array, rel in ((np.concatenate(rows_img), f"leftImg8bit/train/mosaic/{stem}_leftImg8bit.png"),
                           (np.concatenate(rows_lab), f"gtFine/train/mosaic/{stem}_gtFine_labelIds.png")):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(out / rel)
    return out


def source_frames(tmp: Path, smoke: bool = False) -> tuple[Path, str]:
    if smoke:
        from softprep.demo import make_demo

        return make_demo(tmp / "demo", train=2, val=1, size=(128, 256)), "3 demo scenes of 256x128 (--smoke)"
    if REAL.is_dir():
        return REAL, "the 8 real Cityscapes frames (2048x1024)"
    from softprep.demo import make_demo

    return make_demo(tmp / "demo", train=6, val=2, size=(1024, 2048)), "8 demo scenes (2048x1024; no ../shared/fixtures)"


# ------------------------------------------------------------------------------------------ 1. compute


def bench_compute(dataset, kernels: list[str]) -> list[dict]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    _, label = dataset.read_pair(dataset.samples("train")[0])
    c = dataset.num_classes
    rows = []
    for kernel in kernels:
        for scale in SCALES:
            plan = resampling_plan(kernel, False, label.shape, scale)
            ours = best_of(lambda: pack(soft_label(prepare_label(label, c), plan.rows, plan.cols)))

            def peer():
                codes = torch.from_numpy(np.where(label == IGNORE_INDEX, c, label)).long()
                one_hot = F.one_hot(codes, c + 1).permute(2, 0, 1)[None].float()
                extra = {"align_corners": False} if kernel != "area" else {}
                return F.interpolate(one_hot, size=plan.size, mode=TORCH_MODE[kernel], **extra)[0, :c].numpy()

            theirs = best_of(peer)
            equal = bool(np.allclose(soft_label(label, plan.rows, plan.cols, c).dense(), peer(), atol=1e-6))
            rows.append({"kernel": kernel, "scale": scale, "softprep_ms": ours * 1e3, "torch_ms": theirs * 1e3,
                         "speedup": theirs / ours, "same_output": equal})
    return rows


# ------------------------------------------------------------------------------------------ 2. build


def split_profile(dataset, kernel: str) -> dict:
    """Per-image milliseconds of each build stage, run one after the other in this process."""
    samples = dataset.samples("train")
    spec = plan_store(dataset, ["train"], SCALES, kernel, False, shard_size=len(samples))
    times = dict.fromkeys(("decode", "colour", "soft label", "nn", "write"), 0.0)
    results = []
    for i, sample in enumerate(samples):
        start = time.perf_counter()
        image, label = dataset.read_pair(sample)
        times["decode"] += time.perf_counter() - start
        plans = [spec.plan("train", i, t) for t in spec.targets]
        start = time.perf_counter()
        [resize_image(image, p.rows, p.cols) for p in plans]
        times["colour"] += time.perf_counter() - start
        start = time.perf_counter()
        prepared = prepare_label(label, dataset.num_classes)
        [pack(soft_label(prepared, p.rows, p.cols)) for p in plans]
        times["soft label"] += time.perf_counter() - start
        start = time.perf_counter()
        [nearest_labels(label, p.nearest_rows, p.nearest_cols) for p in plans]
        times["nn"] += time.perf_counter() - start
        results.append(process_sample(dataset, image, label, dict(zip(spec.target_names, plans))))
    with tempfile.TemporaryDirectory() as tmp:
        create_store(Path(tmp) / "s.zarr", spec)
        task = spec.tasks("train")[0]
        start = time.perf_counter()
        write_shard(Path(tmp) / "s.zarr", spec, task, results[: len(task.indices)])
        times["write"] = (time.perf_counter() - start) * len(samples) / len(task.indices)
    return {name: seconds / len(samples) * 1e3 for name, seconds in times.items()}


def build_throughput(small: Path, large: Path, tmp: Path, kernel: str, jobs: int = 1, read_ahead: bool = True) -> dict:
    """Marginal ms/image of decoding alone and of a full build: (time(large) - time(small)) / extra
    images, so store creation and worker start-up cancel out."""
    def decode_all(root):
        ds = get_dataset("cityscapes", root)
        return lambda: [ds.read_pair(s) for s in ds.samples("train")]

    def build_all(root):
        ds = get_dataset("cityscapes", root)
        return lambda: build(ds, tmp / "throughput.zarr", SCALES, kernel=kernel, jobs=jobs, overwrite=True,
                             read_ahead=read_ahead)

    n_small = len(get_dataset("cityscapes", small).samples("train"))
    n_large = len(get_dataset("cityscapes", large).samples("train"))
    decode = (best_of(decode_all(large), 2) - best_of(decode_all(small), 2)) / (n_large - n_small)
    full = (best_of(build_all(large), 2) - best_of(build_all(small), 2)) / (n_large - n_small)
    return {"images": n_large - n_small, "decode_ms": decode * 1e3, "build_ms": full * 1e3, "ratio": decode / full}


# ------------------------------------------------------------------------------------------ 3. size


def data_bytes(folder: Path) -> int:
    """Bytes of an array's shard files (chunks + shard index), without its ``zarr.json``: the
    metadata is a fixed ~1 kB per array and bucket, not a per-image cost."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name != "zarr.json")


def bench_size(store_path: Path, tmp: Path) -> list[dict]:
    store = open_store(store_path)
    c = len(store.classes)
    rows = []
    for scale in SCALES:
        soft = nn = f16 = 0
        for split in store.splits:
            view = store.samples(split, scale)
            for bucket in store.spec.splits[split].members:
                folder = store_path / split / view.target / bucket
                soft += sum(data_bytes(folder / name) for name in SOFT_LABEL_ARRAYS)
                nn += data_bytes(folder / "nn")
            h, w = (int(v) for v in view.sizes[0])
            dense_path = tmp / f"dense-{scale}-{split}.zarr"
            dense = zarr.create_array(str(dense_path), shape=(len(view), c, h, w), chunks=(1, c, h, w),
                                      dtype="float16", fill_value=0, overwrite=True, **chunk_codecs())
            for i, sample in enumerate(view):
                dense[i] = sample.soft().astype(np.float16)
            f16 += data_bytes(dense_path)
        pixels = sum(int(np.prod(store.samples(s, scale).sizes, axis=1).sum()) for s in store.splits)
        rows.append({"scale": scale, "soft_bpp": soft / pixels, "nn_bpp": nn / pixels, "f16_bpp": f16 / pixels,
                     "soft_over_nn": soft / nn, "soft_over_f16": soft / f16})
    return rows


# ------------------------------------------------------------------------------------------ 4. read path


def bench_read(store_path: Path, dataset, kernel: str, scale: float, samples: int) -> dict:
    import torch
    import torch.nn.functional as F

    from softprep_train.data import Augment, StoreDataset

    torch.set_num_threads(1)
    view = open_store(store_path).samples("train", scale)
    h, w = (int(v) for v in view.sizes[0])
    train = StoreDataset(str(store_path), "train", scale, Augment((h, w)))
    keys = [(i % len(train), 7000 + i) for i in range(samples)]
    ours = best_of(lambda: [train[k] for k in keys], 2) / samples

    pairs = dataset.samples("train")
    c = dataset.num_classes
    mode, extra = TORCH_MODE[kernel], ({} if kernel == "area" else {"align_corners": False})

    def on_the_fly(i: int, seed: int):
        rng = np.random.default_rng(seed)
        image, label = dataset.read_pair(pairs[i % len(pairs)])
        ratio = rng.uniform(0.5, 2.0)
        size = (max(1, round(h * ratio)), max(1, round(w * ratio)))
        colour = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=size, mode=mode, **extra)
        codes = torch.from_numpy(np.where(label == IGNORE_INDEX, c, label)).long()
        soft = F.interpolate(F.one_hot(codes, c + 1).permute(2, 0, 1)[None].float(), size=size, mode=mode, **extra)
        top, left = int(rng.integers(0, max(size[0] - h, 0) + 1)), int(rng.integers(0, max(size[1] - w, 0) + 1))
        return colour[..., top:top + h, left:left + w], soft[:, :c, top:top + h, left:left + w]

    theirs = best_of(lambda: [on_the_fly(i, seed) for i, seed in keys], 2) / samples
    png_bytes = sum(p.image.stat().st_size + p.label.stat().st_size for p in pairs) / len(pairs)
    group = store_path / "train" / view.target
    store_bytes = sum(disk_bytes(group / b) for b in open_store(store_path).spec.splits["train"].members) / len(view)
    return {"scale": scale, "crop": [h, w], "store_ms": ours * 1e3, "png_ms": theirs * 1e3, "speedup": theirs / ours,
            "store_bytes": store_bytes, "png_bytes": png_bytes}


# ------------------------------------------------------------------------------------------ report


def verdict(value: float, target: float, at_least: bool) -> str:
    met = value >= target if at_least else value <= target
    return f"{'met' if met else 'MISSED'} ({'>=' if at_least else '<='} {target:g})"


def report(r: dict) -> None:
    print(f"softprep benchmark: {r['data']}; kernel {r['kernel']}; {r['machine']}")
    print("\n1. soft-label compute, one core (best of 3), torch one-hot + F.interpolate as baseline")
    for row in r["compute"]:
        print(f"   {row['kernel']:>8} {row['scale']:>6}: softprep {row['softprep_ms']:6.1f} ms, torch {row['torch_ms']:6.1f} ms "
              f"-> {row['speedup']:5.1f}x  {verdict(row['speedup'], TARGETS['compute_speedup'], True)}"
              f"{'' if row['same_output'] else '  OUTPUT DIFFERS'}")
    b = r["build"]
    print("\n2. build, 3 scales, one process; baseline: decoding the PNG pairs alone (marginal ms/image)")
    for name, row in b["throughput"].items():
        print(f"   {name:>24}: decode {row['decode_ms']:6.1f} ms, build {row['build_ms']:6.1f} ms "
              f"-> {row['ratio']:.2f}x  {verdict(row['ratio'], TARGETS['build_vs_decode'], True)}")
    print("   time split, stages run one after another (ms/image): "
          + ", ".join(f"{k} {v:.1f}" for k, v in b["profile_ms"].items()))
    j = b["jobs"]
    print(f"   --jobs 2 vs --jobs 1 (no read-ahead), {j['images']} images: {j['two_ms']:.1f} vs {j['one_ms']:.1f} ms/image "
          f"-> {j['speedup']:.2f}x  {verdict(j['speedup'], TARGETS['jobs2_speedup'], True)}")
    print("\n3. bytes per output pixel on disk (zstd-3 + crc32c, shard files without zarr.json); baselines: NN map, "
          "dense float16 (same codecs)")
    for row in r["size"]:
        print(f"   {row['kernel']:>8} {row['scale']:>6}: soft {row['soft_bpp']:.4f}, NN {row['nn_bpp']:.4f}, f16 {row['f16_bpp']:.4f} "
              f"-> {row['soft_over_nn']:.2f}x NN {verdict(row['soft_over_nn'], TARGETS['soft_over_nn'], False)}, "
              f"{row['soft_over_f16']:.2f}x f16 {verdict(row['soft_over_f16'], TARGETS['soft_over_f16'], False)}")
    d = r["read"]
    print(f"\n4. training read path, one worker, scale {d['scale']} crop {d['crop'][0]}x{d['crop'][1]}: store "
          f"{d['store_ms']:.1f} ms/sample ({d['store_bytes'] / 1e3:.0f} kB), PNG decode + one-hot + interpolate "
          f"{d['png_ms']:.1f} ms/sample ({d['png_bytes'] / 1e3:.0f} kB) -> {d['speedup']:.1f}x  "
          f"{verdict(d['speedup'], TARGETS['read_speedup'], True)}")


def markdown(r: dict) -> str:
    """The README's performance table."""
    lines = [f"Measured by `make bench` ({r['data']}, kernel `{r['kernel']}`, {r['machine']}); "
             "each baseline in the same run.", "",
             "| figure | 0.125 | 0.25 | 0.5 | target |", "|---|---|---|---|---|"]
    compute = [row for row in r["compute"] if row["kernel"] == r["kernel"]]
    lines.append("| soft label, softprep (ms) | " + " | ".join(f"{x['softprep_ms']:.1f}" for x in compute) + " | |")
    lines.append("| torch one-hot + interpolate (ms) | " + " | ".join(f"{x['torch_ms']:.0f}" for x in compute) + " | |")
    lines.append("| compute speed-up | " + " | ".join(f"{x['speedup']:.0f}x" for x in compute) + " | >= 20x |")
    for kernel in dict.fromkeys(x["kernel"] for x in r["size"]):
        size = [x for x in r["size"] if x["kernel"] == kernel]
        lines.append(f"| {kernel}: soft label on disk (B/px) | " + " | ".join(f"{x['soft_bpp']:.3f}" for x in size) + " | |")
        lines.append(f"| {kernel}: NN map / dense float16 (B/px) | "
                     + " | ".join(f"{x['nn_bpp']:.3f} / {x['f16_bpp']:.3f}" for x in size) + " | |")
        lines.append(f"| {kernel}: soft / NN | " + " | ".join(f"{x['soft_over_nn']:.2f}x" for x in size) + " | <= 2x |")
        lines.append(f"| {kernel}: soft / dense float16 | " + " | ".join(f"{x['soft_over_f16']:.2f}x" for x in size) + " | <= 0.5x |")
    lines += ["", "| build, 3 scales, one process | decode only | build | build / decode throughput | target |",
              "|---|---|---|---|---|"]
    for name, row in r["build"]["throughput"].items():
        lines.append(f"| {name} | {row['decode_ms']:.0f} ms/image | {row['build_ms']:.0f} ms/image | {row['ratio']:.2f}x | >= 0.7x |")
    j, d = r["build"]["jobs"], r["read"]
    lines.append(f"| `--jobs 2` vs `--jobs 1` without read-ahead | | {j['two_ms']:.0f} vs {j['one_ms']:.0f} ms/image | "
                 f"{j['speedup']:.2f}x | >= 1.8x |")
    lines += ["", "Time split of a build (ms/image, stages one after another): "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["build"]["profile_ms"].items()) + ".",
              "", f"Training read path, one worker, scale {d['scale']}: {d['store_ms']:.1f} ms/sample from the store "
              f"(read + densify + geometry, {d['store_bytes'] / 1e3:.0f} kB on disk) vs {d['png_ms']:.1f} ms/sample "
              f"decoding the PNGs + one-hot + interpolate ({d['png_bytes'] / 1e3:.0f} kB): {d['speedup']:.1f}x (target >= 5x)."]
    return "\n".join(lines)


def update_readme(path: Path, table: str) -> None:
    update_block(path, "bench", table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="area", choices=sorted(TORCH_MODE))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--readme", type=Path, help="regenerate the performance table in this README")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and no 24 MP frames")
    parser.add_argument("--smoke", action="store_true", help="tiny demo frames, one repeat: proves the script runs")
    args = parser.parse_args()
    if args.smoke:
        global REPEAT
        REPEAT, args.quick = 1, True
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source, what = source_frames(tmp, args.smoke)
        dataset = get_dataset("cityscapes", source)
        result = {"data": what, "kernel": args.kernel, "targets": TARGETS,
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
        kernels = [args.kernel] + [k for k in TORCH_MODE if k != args.kernel]
        result["compute"] = bench_compute(dataset, kernels)
        once, twice = cityscapes_copies(source, tmp / "x1", 1), cityscapes_copies(source, tmp / "x2", 2)
        frames = "256x128 (smoke)" if args.smoke else "2048x1024"
        throughput = {frames: build_throughput(once, twice, tmp, args.kernel)}
        if not args.quick:
            two_large = mosaic_frames(source, tmp / "mp2", 2)
            one_large = tmp / "mp1"
            for path in sorted(two_large.rglob("*_000000_000000_*.png")):  # the first mosaic only
                (one_large / path.relative_to(two_large)).parent.mkdir(parents=True, exist_ok=True)
                (one_large / path.relative_to(two_large)).symlink_to(path)
            throughput["25 MP (6144x4096)"] = build_throughput(one_large, two_large, tmp, args.kernel)
        four = cityscapes_copies(source, tmp / "x4", 4)
        one = build_throughput(twice, four, tmp, args.kernel, jobs=1, read_ahead=False)
        two = build_throughput(twice, four, tmp, args.kernel, jobs=2)
        throughput[f"{frames}, no read-ahead thread"] = one
        result["build"] = {"throughput": throughput, "profile_ms": split_profile(get_dataset("cityscapes", once), args.kernel),
                           "jobs": {"images": one["images"], "one_ms": one["build_ms"], "two_ms": two["build_ms"],
                                    "speedup": one["build_ms"] / two["build_ms"]}}
        result["size"] = []
        for kernel in kernels:
            store = tmp / f"sizes-{kernel}.zarr"
            build(dataset, store, SCALES, kernel=kernel, jobs=1)
            result["size"] += [{"kernel": kernel, **row} for row in bench_size(store, tmp)]
        store = tmp / f"sizes-{args.kernel}.zarr"
        result["read"] = bench_read(store, dataset, args.kernel, 0.25, 2 if args.smoke else 8 if args.quick else 24)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    if args.readme:
        update_readme(args.readme, markdown(result))
        print(f"updated the performance table in {args.readme}")


if __name__ == "__main__":
    sys.exit(main())
