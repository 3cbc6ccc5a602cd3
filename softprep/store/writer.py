"""Writing a store: array creation, shard and per-image record writes, completion.

Every write goes through :func:`writing`: chunks equal to the fill value are written too, so a
complete store has every chunk file."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from softprep.plan import output_affine
from softprep.softlabel import IGNORE_INDEX, PackedSoftLabel, SoftLabel, pack, unpack
from softprep.store.layout import (FORMAT, IMAGE_ZSTD_LEVEL, LIST_CHUNK_MIN, LIST_CHUNK_SHARE, RECORD_CHUNK, ZSTD_LEVEL, BucketLayout,
                                   SplitSpec, StoreSpec, Task, map_arrays)

def writing():
    """Zarr settings of every store write: chunks equal to the fill value are written too (zarr skips
    them by default), so every chunk of a complete store exists: an all-black image, an all-ignored
    label or an all-zero record is data, and a missing file always means damage."""
    return zarr.config.set({"array.write_empty_chunks": True})


def chunk_codecs(level: int = ZSTD_LEVEL) -> dict:
    """The codecs of every store chunk: zstd at ``level``, then a crc32c checksum."""
    return {"compressors": [ZstdCodec(level=level), Crc32cCodec()]}


def _record_array(group, name: str, shape: tuple, dtype: str, fill=0):
    return group.create_array(name, shape=shape, chunks=(min(shape[0], RECORD_CHUNK), *shape[1:]) if shape[0] else shape,
                              dtype=dtype, fill_value=fill, **chunk_codecs())


def create_store(path: str | Path, spec: StoreSpec) -> None:
    """Create an empty store for ``spec``: every array, the planned sizes and denominators, ``complete = False``.
    The root's ``softprep`` attributes are written last: until then the folder is not a softprep store."""
    with writing():
        _create_store(path, spec)


def _create_store(path: str | Path, spec: StoreSpec) -> None:
    # softprep's marker goes into the very write that creates the root: whatever a kill leaves of a
    # creation is recognisably softprep's (and nothing without it is ever deleted as a store).
    root = zarr.open_group(str(path), mode="w-", zarr_format=3, attributes={"softprep": {"format": FORMAT, "creating": True}})
    c = spec.num_classes
    for split, split_spec in spec.splits.items():
        n = len(split_spec.ids)
        group = root.create_group(split, attributes=split_spec.attrs())
        _record_array(group, "counts", (n, c), "int64")
        _record_array(group, "done", (n,), "uint8")
        for target in spec.target_names:
            tg = group.create_group(target, attributes={"target": target})
            plans = [spec.plan(split, i, target) for i in range(n)]
            ndim = split_spec.ndim
            _record_array(tg, "sizes", (n, ndim), "int32")[:] = np.array([p.size for p in plans], dtype=np.int32).reshape(n, ndim)
            _record_array(tg, "denominator", (n,), "int64")[:] = [p.denominator or 0 for p in plans]
            if split_spec.affines is not None:  # volumes: each output grid's voxel-to-world affine
                _record_array(tg, "affine", (n, 4, 4), "float64")[:] = np.stack(
                    [output_affine(a, p.source, p.size) for a, p in zip(split_spec.affines, plans)])
            _record_array(tg, "planes", (n,), "uint8")
            _record_array(tg, "mass", (n, c), "float64")
            _record_array(tg, "mass_numerator", (n, c), "int64")
            _record_array(tg, "nn_counts", (n, c), "int64")
            _record_array(tg, "nn_floor_counts", (n, c), "int64")
            if ndim == 3:  # volumes: the voxels per class of nnU-Net's rule, for priors' volume drift
                _record_array(tg, "nnunet_counts", (n, c), "int64")
            for bucket, members in split_spec.members.items():
                _create_bucket(tg.create_group(bucket), len(members), spec.shard_images(split, bucket),
                               spec.bucket_layout(split, bucket, target), spec)
    # A fresh identity per creation: readers holding this store open notice a rebuild by it.
    root.attrs["softprep"] = {**spec.root_attrs(complete=False), "build_id": uuid.uuid4().hex}


def _create_bucket(group, n: int, shard: int, layout: BucketLayout, spec: StoreSpec) -> None:
    shape, k, channels = layout.shape, layout.planes, spec.image_channels
    pixels = int(np.prod(shape))
    group.attrs.update({"exact": layout.exact, "nn_floor": layout.nn_floor})
    group.create_array("image", shape=(n, *shape, channels), chunks=(1, *shape, channels), shards=(shard, *shape, channels),
                       dtype=spec.image_dtype, fill_value=0, **chunk_codecs(IMAGE_ZSTD_LEVEL))
    for name in map_arrays(layout.nn_floor):
        group.create_array(name, shape=(n, *shape), chunks=(1, *shape), shards=(shard, *shape),
                           dtype="uint8", fill_value=IGNORE_INDEX, **chunk_codecs())
    chunk = min(pixels, max(LIST_CHUNK_MIN, -(-pixels // LIST_CHUNK_SHARE)))
    length = -(-pixels // chunk) * chunk  # whole chunks: a shard is a whole number of chunks
    for name, dtype, fill in (("mixed_classes", "uint8", IGNORE_INDEX), ("mixed_weights", layout.weights_dtype, 0)):
        group.create_array(name, shape=(n, k, length), chunks=(1, k, chunk), shards=(shard, k, length),
                           dtype=dtype, fill_value=fill, **chunk_codecs())


@dataclass
class TargetResult:
    """One image at one target: ``image (h, w, 3) uint8`` (a volume: ``(x, y, z, C) float32``), its packed soft label, and its hard labels
    ``nn (h, w) uint8`` (``nearest-exact``) and ``nn_floor (h, w) uint8`` (torch ``nearest``); a volume
    also nnU-Net's order-1-then-0.5 labels ``nnunet (x, y, z) uint8`` (only counted, never stored)."""

    image: np.ndarray
    soft: PackedSoftLabel
    nn: np.ndarray
    nn_floor: np.ndarray
    nnunet: np.ndarray | None = None


@dataclass
class SampleResult:
    """One image at every target, plus its full-resolution ``counts (C,) int64``."""

    counts: np.ndarray
    targets: dict[str, TargetResult]


@dataclass
class SampleRecords:
    """What the parent records for one image once its shard is written (small: no pixels)."""

    index: int
    counts: np.ndarray  # (C,) int64
    planes: dict[str, int]
    mass: dict[str, np.ndarray]  # (C,) float64
    mass_numerator: dict[str, np.ndarray]  # (C,) int64, zeros when the weights are floats
    nn_counts: dict[str, np.ndarray]  # (C,) int64
    nn_floor_counts: dict[str, np.ndarray]  # (C,) int64
    nnunet_counts: dict[str, np.ndarray]  # (C,) int64, volumes only

    @classmethod
    def of(cls, index: int, result: SampleResult) -> "SampleRecords":
        planes, mass, numerator, nn_counts, floor_counts, nnunet_counts = {}, {}, {}, {}, {}, {}
        c = len(result.counts)
        for target, r in result.targets.items():
            planes[target] = r.soft.planes
            exact_mass = r.soft.class_mass()
            numerator[target] = exact_mass if r.soft.exact else np.zeros(c, dtype=np.int64)
            mass[target] = exact_mass / r.soft.denominator if r.soft.exact else exact_mass
            nn_counts[target] = np.bincount(r.nn.ravel(), minlength=256)[:c].astype(np.int64)
            floor_counts[target] = np.bincount(r.nn_floor.ravel(), minlength=256)[:c].astype(np.int64)
            if r.nnunet is not None:
                nnunet_counts[target] = np.bincount(r.nnunet.ravel(), minlength=256)[:c].astype(np.int64)
        return cls(index, result.counts, planes, mass, numerator, nn_counts, floor_counts, nnunet_counts)


def write_shard(path: str | Path, spec: StoreSpec, task: Task, results: list[SampleResult]) -> None:
    """Write the pixels of one shard (images ``task.indices``, every target) into the bucket arrays."""
    with writing():
        _write_shard(zarr.open_group(str(path), mode="r+"), spec, task, results)


def _write_shard(root, spec: StoreSpec, task: Task, results: list[SampleResult]) -> None:
    start, stop = task.start, task.start + len(results)
    for target in spec.target_names:
        bucket = root[task.split][target][task.bucket]
        per_image = [r.targets[target] for r in results]
        shape = bucket["classes"].shape[1:]
        packed = [_as_stored(s.soft, bucket["mixed_weights"].dtype) for s in per_image]
        image = np.zeros((len(results), *bucket["image"].shape[1:]), bucket["image"].dtype)
        maps = {name: np.full((len(results), *shape), IGNORE_INDEX, np.uint8) for name in ("classes", "nn", "nn_floor")}
        for i, (s, p) in enumerate(zip(per_image, packed)):
            region = (i, *(slice(0, side) for side in s.nn.shape))  # the image in its padded bucket
            image[region] = s.image
            for name, values in (("classes", p.classes), ("nn", s.nn), ("nn_floor", s.nn_floor)):
                maps[name][region] = values
        bucket["image"][start:stop] = image
        for name in map_arrays(bucket.attrs["nn_floor"]):
            bucket[name][start:stop] = maps[name]
        _write_lists(bucket, start, packed)


def _as_stored(soft: PackedSoftLabel, dtype: np.dtype) -> PackedSoftLabel:
    """``soft`` with the weight encoding of its bucket (an exact image in a float bucket: float weights)."""
    if dtype.kind == "u" or not soft.exact:
        return soft
    plain = unpack(soft)
    return pack(SoftLabel(plain.classes, plain.scaled_weights(), plain.num_classes, None))


def _write_lists(bucket, start: int, packed: list[PackedSoftLabel]) -> None:
    """The mixed-pixel lists of a shard's images, as far as the longest reaches."""
    longest = max(p.mixed for p in packed)
    if not longest:
        return
    used = max(p.mixed_classes.shape[0] for p in packed)
    classes = np.full((len(packed), used, longest), IGNORE_INDEX, np.uint8)
    weights = np.zeros((len(packed), used, longest), bucket["mixed_weights"].dtype)
    for i, p in enumerate(packed):
        k, m = p.mixed_classes.shape
        classes[i, :k, :m] = p.mixed_classes
        weights[i, :k, :m] = p.mixed_weights
    bucket["mixed_classes"][start:start + len(packed), :used, :longest] = classes
    bucket["mixed_weights"][start:start + len(packed), :used, :longest] = weights


def write_split_attrs(path: str | Path, split: str, split_spec: SplitSpec) -> None:
    """Rewrite a split's attributes (the label digests of images not yet built, after a file was fixed)."""
    zarr.open_group(str(path), mode="r+")[split].attrs.update(split_spec.attrs())


def write_records(path: str | Path, split: str, records: list[SampleRecords]) -> None:
    """Record the per-image statistics of finished images, then mark them done (parent process only)."""
    with writing():
        _write_records(zarr.open_group(str(path), mode="r+"), split, records)


def _write_records(root, split: str, records: list[SampleRecords]) -> None:
    group = root[split]
    index = np.array([r.index for r in records])
    order = np.argsort(index)
    index, records = index[order], [records[i] for i in order]
    group["counts"].oindex[index] = np.stack([r.counts for r in records])
    for target in root.attrs["softprep"]["targets"]:
        tg = group[target]
        tg["planes"].oindex[index] = [r.planes[target] for r in records]
        tg["mass"].oindex[index] = np.stack([r.mass[target] for r in records])
        tg["mass_numerator"].oindex[index] = np.stack([r.mass_numerator[target] for r in records])
        tg["nn_counts"].oindex[index] = np.stack([r.nn_counts[target] for r in records])
        tg["nn_floor_counts"].oindex[index] = np.stack([r.nn_floor_counts[target] for r in records])
        if records[0].nnunet_counts:
            tg["nnunet_counts"].oindex[index] = np.stack([r.nnunet_counts[target] for r in records])
    group["done"].oindex[index] = 1


def attrs_digest(root) -> str:
    """sha256 of every attribute that describes the content (root minus ``complete``, the build
    identity and the digest itself, every split, target and bucket group): metadata damage shows as
    a different digest, and two builds of one spec have one digest."""
    digest = hashlib.sha256()
    for path, group in sorted(_groups(root), key=lambda item: item[0]):
        attrs = dict(group.attrs)
        if path == "":
            attrs = {k: v for k, v in attrs["softprep"].items() if k not in ("complete", "attrs_sha256", "build_id")}
        digest.update(path.encode() + b"\0" + json.dumps(attrs, sort_keys=True).encode() + b"\0")
    return digest.hexdigest()


def _groups(root) -> list:
    out, todo = [], [("", root)]
    while todo:
        path, group = todo.pop()
        out.append((path, group))
        todo += [(f"{path}/{name}".lstrip("/"), child) for name, child in group.groups()]
    return out


def mark_complete(path: str | Path, spec: StoreSpec) -> None:
    """Set ``complete`` with the digest of the store's attributes (written last)."""
    root = zarr.open_group(str(path), mode="r+")
    build_id = root.attrs["softprep"].get("build_id")
    root.attrs["softprep"] = {**spec.root_attrs(complete=True), "build_id": build_id, "attrs_sha256": attrs_digest(root)}
