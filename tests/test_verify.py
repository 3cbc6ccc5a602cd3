"""`softprep verify`: a sound store passes; a flipped byte, a tampered statistic, a missing shard,
an unfinished image and a changed label file are each named on one line, with exit status 1."""

from __future__ import annotations

import re

import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr
from PIL import Image

from softprep import open_store
from softprep.build import build
from softprep.datasets import get_dataset
from softprep.verify import verify

SCALE = 0.25


@pytest.fixture(scope="module")
def sound_store(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "sound.zarr"
    build(get_dataset("cityscapes", demo_root), out, [SCALE, 0.5], kernel="bilinear", shard_size=4, jobs=1)
    return out


@pytest.fixture()
def store(sound_store, tmp_path):
    copy = tmp_path / "store.zarr"
    shutil.copytree(sound_store, copy)
    return copy


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "softprep.cli", "verify", *map(str, args), "--jobs", "1"],
                          capture_output=True, text=True)


def inner_chunk_bytes(store_path, array_path, image, plane=0):
    """(file, offset, nbytes) of one inner chunk of image ``image`` of a sharded bucket array, from the shard index."""
    array = zarr.open_array(str(store_path / array_path), mode="r")
    per_shard = array.shards[0]
    per_image = int(np.prod([s // c for s, c in zip(array.shards[1:], array.chunks[1:])]))
    path = store_path / array_path / array.metadata.encode_chunk_key((image // per_shard,) + (0,) * (array.ndim - 1))
    data = path.read_bytes()
    n = per_shard * per_image
    index = np.frombuffer(data[-(16 * n + 4):-4], dtype="<u8").reshape(n, 2)
    offset, nbytes = index[(image % per_shard) * per_image + plane]
    return path, int(offset), int(nbytes)


def test_sound_store_passes(sound_store, demo_root):
    assert verify(sound_store, jobs=1) == []
    assert verify(sound_store, root=demo_root, jobs=2) == []
    result = _cli(sound_store, "--root", demo_root)
    assert result.returncode == 0, result.stdout
    n = sum(len(ids) for ids in (open_store(sound_store).spec.splits[s].ids for s in open_store(sound_store).splits))
    assert re.search(rf": ok \({n} images x \d+ targets, \d+ chunk files: every chunk's crc32c, every recorded statistic, "
                     r"the full-resolution labels\)$", result.stdout.strip()), result.stdout


def test_one_flipped_byte_is_named(store):
    ids = open_store(store).spec.splits["train"].ids
    bucket = open_store(store).spec.splits["train"].buckets[5]
    path, offset, nbytes = inner_chunk_bytes(store, f"train/{SCALE!r}/{bucket}/classes", image=5)
    data = bytearray(path.read_bytes())
    data[offset + nbytes // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = _cli(store)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"train/{SCALE!r}: image {ids[5]} (#5): classes cannot be read")
    assert "1 problem(s)" in result.stderr


def test_tampered_statistic_is_named(store):
    numerator = zarr.open_array(str(store / "train" / "0.5" / "mass_numerator"), mode="r+")
    numerator[2, 0] = numerator[2, 0] + 1
    mass = zarr.open_array(str(store / "train" / "0.5" / "mass"), mode="r+")
    mass[3, 1] = mass[3, 1] + 0.25
    ids = open_store(store).spec.splits["train"].ids
    assert verify(store, jobs=1) == [
        f"train/0.5: image {ids[2]} (#2): mass_numerator: recorded exact class masses differ from the stored soft label's (classes 0)",
        f"train/0.5: image {ids[3]} (#3): mass: recorded class masses differ from the stored soft label's (classes 1)"]


def test_recorded_counts_are_checked_without_the_dataset(demo_root, tmp_path):
    """Issue 25.9: full-resolution counts are derivable from the store itself: never negative, at most
    H W per image, and under the exact area kernel equal to every target's class mass times
    ``H W / (h w)``. Counts of -1e15 (which made `priors` print sum|D| 10228) and one pixel moved
    between classes are each named without --root."""
    out = tmp_path / "area.zarr"
    build(get_dataset("cityscapes", demo_root), out, [SCALE, 0.5], shard_size=4, jobs=1)
    assert verify(out, jobs=1) == []
    counts = zarr.open_array(str(out / "train" / "counts"), mode="r+")
    counts[1, 2] = -10**15
    row = counts[3]
    moved = int(np.flatnonzero(row)[0])
    row[moved] -= 1
    row[moved + 1] += 1
    counts[3] = row
    ids = open_store(out).spec.splits["train"].ids
    problems = verify(out, jobs=1)
    assert any(p.startswith(f"train: image {ids[1]} (#1): counts: recorded class counts (min -1000000000000000") for p in problems)
    for target in (SCALE, 0.5):
        assert (f"train/{target!r}: image {ids[3]} (#3): counts: recorded full-resolution counts differ from the stored "
                f"soft label's class mass (classes {moved}, {moved + 1})") in problems
    assert len(problems) == 1 + 2 + 2  # image 1 also fails the area check at both targets


def test_missing_shard_and_unfinished_image(store):
    ids = open_store(store).spec.splits["val"].ids
    (bucket,) = set(open_store(store).spec.splits["val"].buckets)
    shutil.rmtree(store / "val" / repr(SCALE) / bucket / "nn" / "c")
    done = zarr.open_array(str(store / "train" / "done"), mode="r+")
    done[0] = 0
    problems = verify(store, jobs=1)
    train_ids = open_store(store).spec.splits["train"].ids
    assert f"train: image {train_ids[0]} (#0) not built (rerun `softprep build`)" in problems
    for i, image_id in enumerate(ids):
        assert f"val/{SCALE!r}: image {image_id} (#{i}): nn shard file missing" in problems
    assert len(problems) == 1 + len(ids)


def test_changed_label_file_is_found_with_root(store, demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    label_path = root / open_store(store).spec.splits["val"].labels[1]
    label = np.array(Image.open(label_path))
    label[:8] = 7  # label id 7 = road
    Image.fromarray(label).save(label_path)
    problems = verify(store, root=root, jobs=1)
    image_id = open_store(store).spec.splits["val"].ids[1]
    assert any(p.startswith(f"val: image {image_id} (#1): counts: recorded full-resolution counts differ") for p in problems)
    assert f"val: image {image_id} (#1): label file {open_store(store).spec.splits['val'].labels[1]} differs from the one " \
           "the store was built from" in problems
    assert all(image_id in p for p in problems)
