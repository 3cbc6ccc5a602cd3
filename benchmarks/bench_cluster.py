"""Scale-out: shards per second on a Dask ``LocalCluster`` against joblib's loky processes (same
worker count, same data), and the bytes a build moves to and from object storage (moto's S3
server on loopback). Needs the ``cloud`` and ``dask`` extras and ``moto[server]``.

    python benchmarks/bench_cluster.py [--images 32] [--size 512x1024] [--jobs 2] [--smoke]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from softprep.build import build
from softprep.datasets import get_dataset
from softprep.demo import make_demo
from softprep.location import location, tree_bytes

from blocks import Report

REPORT = Report()

SCALES = (0.125, 0.25, 0.5)


def timed_build(dataset, out, jobs: int, scheduler: str | None, shard_size: int) -> float:
    start = time.perf_counter()
    build(dataset, out, SCALES, jobs=jobs, overwrite=True, shard_size=shard_size, scheduler=scheduler, splits=["train"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", default="512x1024")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="4 images of 64x128: proves the script runs")
    parser.add_argument("--readme", type=Path, help="Write the figures into this file's cluster block.")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.size, args.shard_size = 4, "64x128", 2
    size = tuple(int(v) for v in args.size.split("x"))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = make_demo(tmp / "demo", train=args.images, val=0, size=size, seed=1)
        dataset = get_dataset("cityscapes", root)
        shards = -(-args.images // args.shard_size)
        REPORT.say(f"{args.images} demo images {size[1]}x{size[0]}, scales {' '.join(map(str, SCALES))}, "
              f"{shards} shards of {args.shard_size}, {args.jobs} workers, {os.cpu_count()} cores")
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=args.jobs, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster):
            timings = {}
            for name, scheduler in (("loky (default)", None), ("dask LocalCluster", cluster.scheduler_address)) * 2:
                elapsed = timed_build(dataset, tmp / "s.zarr", args.jobs, scheduler, args.shard_size)
                timings[name] = min(timings.get(name, elapsed), elapsed)
            for name, elapsed in timings.items():
                REPORT.say(f"  {name:<20} {elapsed:6.2f} s  {shards / elapsed:5.2f} shards/s  {args.images / elapsed:5.2f} images/s")

            from moto.server import ThreadedMotoServer

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                              AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://{host}:{port}")
            import s3fs

            fs = s3fs.S3FileSystem(use_listings_cache=False)
            fs.mkdir("bench")
            fs.put(str(root), "bench/demo", recursive=True)
            with LocalCluster(n_workers=args.jobs, threads_per_worker=1, processes=True, dashboard_address=None) as s3_cluster:
                start = time.perf_counter()
                build(get_dataset("cityscapes", "s3://bench/demo"), "s3://bench/s.zarr", SCALES, shard_size=args.shard_size, splits=["train"],
                      scheduler=s3_cluster.scheduler_address)
                elapsed = time.perf_counter() - start
            read, written = tree_bytes(location("s3://bench/demo")), tree_bytes(location("s3://bench/s.zarr"))
            REPORT.say(f"  S3 -> S3 on the cluster (moto on loopback): {elapsed:6.2f} s, {args.images / elapsed:5.2f} images/s; "
                  f"read {read / 2**20:.1f} MiB of PNGs, wrote a {written / 2**20:.1f} MiB store "
                  f"({len(fs.find('bench/s.zarr'))} objects)")
            server.stop()
    REPORT.write(args.readme, "cluster", f"python benchmarks/bench_cluster.py --images {args.images}")


if __name__ == "__main__":
    main()
