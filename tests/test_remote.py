"""Past one machine, on loopback only: a dataset and a store on S3 (moto's server on 127.0.0.1) and a
Dask cluster (``distributed.LocalCluster``, 2 worker processes). Needs the ``cloud`` and ``dask`` extras."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

moto_server = pytest.importorskip("moto.server", reason="needs the cloud extra's test server: pip install -e '.[cloud,dask]' moto[server]")
s3fs = pytest.importorskip("s3fs", reason="needs the cloud extra: pip install -e '.[cloud]'")
distributed = pytest.importorskip("distributed", reason="needs the dask extra: pip install -e '.[dask]'")

from softprep import SoftprepError, open_store  # noqa: E402
from softprep.build import build  # noqa: E402
from softprep.datasets import get_dataset  # noqa: E402
from softprep.demo import make_demo  # noqa: E402
from softprep.info import describe  # noqa: E402
from softprep.priors import store_priors  # noqa: E402
from softprep.verify import verify  # noqa: E402

SCALES = (0.5,)


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port; credentials and endpoint only in the environment."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    fs.mkdir("data")
    fs.mkdir("out")
    yield fs
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def local_demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("remote") / "demo", train=4, val=1, size=(48, 96), seed=5)


@pytest.fixture(scope="module")
def s3_demo(s3, local_demo):
    s3.put(str(local_demo), "data/demo", recursive=True)
    return "s3://data/demo"


@pytest.fixture(scope="module")
def local_store(local_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("remote") / "local.zarr"
    build(get_dataset("cityscapes", local_demo), out, SCALES, jobs=1, shard_size=2)
    return out


@pytest.fixture(scope="module")
def cluster(s3):  # after s3: the workers inherit its environment
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster


def assert_same_store(a, b):
    a, b = open_store(a), open_store(b)
    identity = ("build_id",)  # a fresh random id per creation
    assert ({k: v for k, v in a.attrs.items() if k not in identity} == {k: v for k, v in b.attrs.items() if k not in identity}
            and a.complete and b.complete)
    for split in a.splits:
        np.testing.assert_array_equal(a.counts(split), b.counts(split))
        for target in a.targets:
            va, vb = a.samples(split, target), b.samples(split, target)
            for name in ("mass_numerator", "nn_counts", "planes"):
                np.testing.assert_array_equal(getattr(va, name)(), getattr(vb, name)())
            for sa, sb in zip(va, vb):
                np.testing.assert_array_equal(sa.image, sb.image)
                np.testing.assert_array_equal(sa.nn(), sb.nn())
                pa, pb = sa.packed(), sb.packed()
                for name in ("classes", "mixed_classes", "mixed_weights"):
                    np.testing.assert_array_equal(getattr(pa, name), getattr(pb, name))


def test_build_from_s3_into_s3_on_a_cluster_equals_a_local_build(s3, s3_demo, local_store, cluster):
    done = []
    result = build(get_dataset("cityscapes", s3_demo), "s3://out/cs.zarr", SCALES, shard_size=2,
                   scheduler=cluster.scheduler_address, progress=lambda n, total: done.append(n))
    assert result == {"built": 5, "skipped": 0, "total": 5} and sum(done) == 5 and len(done) == 4  # start + 3 shards
    assert_same_store(local_store, "s3://out/cs.zarr")
    assert verify("s3://out/cs.zarr", root=s3_demo, jobs=1) == []
    remote, local = store_priors(open_store("s3://out/cs.zarr"), "train"), store_priors(open_store(local_store), "train")
    assert remote.rows == local.rows
    assert describe("s3://out/cs.zarr")["splits"]["train"]["done"] == 4
    again = build(get_dataset("cityscapes", s3_demo), "s3://out/cs.zarr", SCALES, shard_size=2, scheduler=cluster.scheduler_address)
    assert again == {"built": 0, "skipped": 5, "total": 5}  # resumes: nothing left to do
    assert not s3.exists("out/.cs.zarr.lock")  # the lock is released


def test_killed_worker_is_retried_and_a_rerun_is_identical(s3, s3_demo, local_store, cluster):
    client = distributed.Client(cluster)
    pids = list(client.run(os.getpid).values())
    killed = []

    def kill_one(n, total):
        if n and not killed:  # after the first finished shard: one worker dies mid-build
            os.kill(pids[0], 9)
            killed.append(pids[0])

    try:
        build(get_dataset("cityscapes", s3_demo), "s3://out/killed.zarr", SCALES, shard_size=2,
              scheduler=cluster.scheduler_address, progress=kill_one)
    except SoftprepError as error:  # allowed: one line, and the rerun below finishes the job
        assert "\n" not in str(error)
    assert killed
    build(get_dataset("cityscapes", s3_demo), "s3://out/killed.zarr", SCALES, shard_size=2, scheduler=cluster.scheduler_address)
    assert_same_store(local_store, "s3://out/killed.zarr")
    client.close()


def test_cli_builds_on_a_local_cluster_and_reads_back(s3, s3_demo, local_store):
    run = [sys.executable, "-m", "softprep.cli"]
    result = subprocess.run(run + ["build", "--dataset", "cityscapes", "--root", s3_demo, "--out", "s3://out/cli.zarr",
                                   "--scales", *map(str, SCALES), "--shard-size", "2", "--scheduler", "local", "--jobs", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "testing" not in result.stdout + result.stderr  # no credentials in logs
    assert_same_store(local_store, "s3://out/cli.zarr")
    info = subprocess.run(run + ["info", "s3://out/cli.zarr"], capture_output=True, text=True)
    assert info.returncode == 0 and "complete" in info.stdout


def test_training_reads_batches_from_s3(s3, s3_demo, local_store):
    torch = pytest.importorskip("torch")
    from softprep_train.data import Augment, StoreDataset, TrainSampler, collate

    if not s3.exists("out/cs.zarr/zarr.json"):
        build(get_dataset("cityscapes", s3_demo), "s3://out/cs.zarr", SCALES, jobs=1, shard_size=2)
    remote = StoreDataset("s3://out/cs.zarr", "train", 0.5, Augment((16, 32)))
    local = StoreDataset(str(local_store), "train", 0.5, Augment((16, 32)))
    loader = torch.utils.data.DataLoader(remote, batch_size=2, sampler=TrainSampler(remote, batch_size=2, seed=3),
                                         collate_fn=collate, num_workers=2)
    for step, batch in zip(range(3), loader):
        assert batch["soft"].shape == (2, 19, 16, 32) and batch["image"].shape == (2, 3, 16, 32)
        assert torch.isfinite(batch["soft"]).all() and torch.isfinite(batch["image"]).all()
    for key in ((0, 11), (3, 12)):  # the same augmented samples as from the local store
        a, b = remote[key], local[key]
        torch.testing.assert_close(a["soft"], b["soft"], rtol=0, atol=0)
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
