"""The Zarr v3 store (format 3): layout, creation, shard writes and the one reader everything uses.

Layout (``docs/store-format.md`` is the full specification)::

    STORE.zarr/                       attrs["softprep"]: format, dataset, classes, palette, kernel, targets, ...
      {split}/                        attrs: ids, images, labels, sizes (full resolution), buckets
        counts   (N, C) int64         full-resolution pixels per class
        done     (N,)   uint8         1 once the image and its records are completely written
        {target}/                     attrs: target
          sizes          (N, 2) int32     output [h, w] of each image
          denominator    (N,)   int64     exact weight denominator of each image (0: float weights)
          planes         (N,)   uint8     soft-label slots used by each image
          mass           (N, C) float64   soft-label weight per class
          mass_numerator (N, C) int64     the same, exact numerators over ``denominator`` (0 where float)
          nn_counts      (N, C) int64     NN pixels per class
          {bucket}/                   images whose full-resolution size falls in one size bucket
            image          (Nb, Hb, Wb, 3) uint8
            classes        (Nb, Hb, Wb) uint8    single-class pixels' class, 254 = mixed, 255 = nothing
            mixed_classes  (Nb, K, L) uint8      slot classes of the mixed pixels, in row-major order
            mixed_weights  (Nb, K, L) uint8|uint16|uint32|float32  their weights (row 0: ignored share)
            nn             (Nb, Hb, Wb) uint8    nearest-neighbour train ids (255 = ignore)

Images are grouped into *size buckets* by their full-resolution size (each side rounded up to a
grid of four steps per octave): a bucket's arrays are as large as its largest member, so reading
image ``n`` decodes at most ~1.4x its own pixels, whatever the split's largest image. Buckets are
sharded ``S_b`` images to a shard file; one process writes one shard. Per-image records are
written by the build's parent process only, ``done`` last.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from softprep.errors import SoftprepError
from softprep.location import is_remote, location, remove_tree
from softprep.plan import ResamplingPlan, parse_target, resampling_plan
from softprep.softlabel import EMPTY, MIXED, PackedSoftLabel, SoftLabel, pack, unpack, weight_dtype

FORMAT = "softprep-store"
FORMAT_VERSION = 3
ZSTD_LEVEL = 3
#: Colour images compress little better at level 3 than at 1 and take 2.4x as long to
#: (measured on real Cityscapes frames: 1.84 vs 2.08 bytes per pixel, 22 vs 9 ms per 512x1024).
IMAGE_ZSTD_LEVEL = 1
#: Most images per shard file (the resume unit).
DEFAULT_SHARD_SIZE = 8
#: Size-bucket grid: steps per octave of each side (2**(1/4): at most ~1.19x padding a side).
BUCKET_STEPS_PER_OCTAVE = 4
#: Output pixels (all targets summed) one shard may hold: bounds a worker's memory, since a worker
#: keeps one shard's results until it writes them (24 MP images get one image per shard).
SHARD_PIXEL_BUDGET = 6_000_000
#: The bucket arrays that hold a soft label (the rest: ``image``, ``nn``).
SOFT_LABEL_ARRAYS = ("classes", "mixed_classes", "mixed_weights")
#: Entries per chunk of the mixed-pixel lists (all slots of an entry in one chunk): 1/16 of the
#: bucket's pixels, at least 4096. A few percent of pixels are mixed, so an image's ``M`` entries
#: mostly fit the first chunk, and the shard index holds only 16 entries per image.
LIST_CHUNK_SHARE, LIST_CHUNK_MIN = 16, 4_096
#: Images per chunk of the per-image record arrays.
RECORD_CHUNK = 1024


def target_name(target) -> str:
    """Group name of a target: ``0.125 -> "0.125"``, ``"short512" -> "short512"``."""
    return parse_target(target).name


def _grid(side: int) -> int:
    """Smallest value ``ceil(2**(k / steps))`` that is >= ``side``."""
    k = math.ceil(BUCKET_STEPS_PER_OCTAVE * math.log2(max(side, 1)))
    while math.ceil(2 ** (k / BUCKET_STEPS_PER_OCTAVE)) < side:
        k += 1
    return math.ceil(2 ** (k / BUCKET_STEPS_PER_OCTAVE))


def bucket_of(height: int, width: int) -> str:
    """Size bucket of a full-resolution ``(H, W)``: ``"{H_max}x{W_max}"`` of the grid cell it falls in."""
    return f"{_grid(height)}x{_grid(width)}"


@dataclass
class SplitSpec:
    """The images of one split. ``sizes`` are full-resolution ``[H, W]``; paths are relative to the root."""

    ids: list[str]
    images: list[str]
    labels: list[str]
    sizes: list[list[int]]

    @cached_property
    def buckets(self) -> list[str]:
        """Size bucket of each image."""
        return [bucket_of(h, w) for h, w in self.sizes]

    @cached_property
    def members(self) -> dict[str, list[int]]:
        """Image indices of each bucket, in split order (position in the bucket = position in this list)."""
        out: dict[str, list[int]] = {}
        for i, bucket in enumerate(self.buckets):
            out.setdefault(bucket, []).append(i)
        return out

    @cached_property
    def positions(self) -> list[int]:
        """Position of each image within its bucket."""
        out = [0] * len(self.ids)
        for indices in self.members.values():
            for position, i in enumerate(indices):
                out[i] = position
        return out

    def attrs(self) -> dict:
        return {**asdict(self), "buckets": self.buckets}


@dataclass(frozen=True)
class BucketLayout:
    """Arrays of one bucket at one target: ``shape (Hb, Wb)``, ``planes`` K, weight dtype, exactness."""

    shape: tuple[int, int]
    planes: int
    exact: bool
    weights_dtype: str


@dataclass(frozen=True)
class Task:
    """One shard of work: images ``indices`` (split order) at bucket positions ``start ..``."""

    split: str
    bucket: str
    start: int
    indices: tuple[int, ...]


@dataclass
class StoreSpec:
    """Everything that defines a store's content; two builds with equal specs write equal stores."""

    dataset: str
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    kernel: str
    antialias: bool
    targets: list[str]
    shard_size: int
    splits: dict[str, SplitSpec] = field(default_factory=dict)
    #: Kernel of the colour images when it differs from the labels' ``kernel`` (the paper's Table IV).
    image_kernel: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def colour_kernel(self) -> str:
        """The kernel that resamples the colour images: ``image_kernel``, else ``kernel``."""
        return self.image_kernel or self.kernel

    def root_attrs(self, complete: bool) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "dataset": self.dataset,
            "classes": self.classes, "palette": self.palette, "ignore_index": self.ignore_index,
            "kernel": self.kernel, "image_kernel": self.colour_kernel, "antialias": self.antialias, "targets": self.targets,
            "splits": list(self.splits), "shard_size": self.shard_size, "complete": complete,
        }

    def plan(self, split: str, index: int, target) -> ResamplingPlan:
        """The resampling plan of image ``index`` of ``split`` at ``target`` (the labels' kernel)."""
        return resampling_plan(self.kernel, self.antialias, tuple(self.splits[split].sizes[index]), target)

    def image_plan(self, split: str, index: int, target) -> ResamplingPlan:
        """The plan of the colour image: :meth:`plan` with :attr:`colour_kernel` (the same output size)."""
        return resampling_plan(self.colour_kernel, self.antialias, tuple(self.splits[split].sizes[index]), target)

    def bucket_layout(self, split: str, bucket: str, target) -> BucketLayout:
        """Shape, slot count and weight encoding of a bucket's arrays at ``target``."""
        plans = [self.plan(split, i, target) for i in self.splits[split].members[bucket]]
        shape = (max(p.size[0] for p in plans), max(p.size[1] for p in plans))
        denominators = [p.denominator for p in plans]
        exact = None not in denominators
        dtype = weight_dtype(max(denominators) if exact else None)
        return BucketLayout(shape, max(p.max_classes(self.num_classes) for p in plans), exact, dtype.name)

    def shard_images(self, split: str, bucket: str) -> int:
        """Images per shard of a bucket: ``shard_size``, fewer where their outputs exceed the pixel budget."""
        first = self.splits[split].members[bucket][0]
        h, w = self.splits[split].sizes[first]
        cell = (_grid(h), _grid(w))
        pixels = sum(math.prod(parse_target(t).output_size(*cell)) for t in self.targets)
        return max(1, min(self.shard_size, SHARD_PIXEL_BUDGET // max(pixels, 1)))

    def tasks(self, split: str) -> list[Task]:
        """The shards of a split, bucket by bucket."""
        out = []
        for bucket, indices in self.splits[split].members.items():
            step = self.shard_images(split, bucket)
            out += [Task(split, bucket, start, tuple(indices[start:start + step])) for start in range(0, len(indices), step)]
        return out


def writing():
    """Zarr settings of every store write: chunks equal to the fill value are written too (zarr skips
    them by default), so every chunk of a complete store exists: an all-black image, an all-ignored
    label or an all-zero record is data, and a missing file always means damage."""
    return zarr.config.set({"array.write_empty_chunks": True})


def _codecs(level: int = ZSTD_LEVEL) -> dict:
    return {"compressors": [ZstdCodec(level=level), Crc32cCodec()]}


def _record_array(group, name: str, shape: tuple, dtype: str, fill=0):
    return group.create_array(name, shape=shape, chunks=(min(shape[0], RECORD_CHUNK), *shape[1:]) if shape[0] else shape,
                              dtype=dtype, fill_value=fill, **_codecs())


def create_store(path: str | Path, spec: StoreSpec) -> None:
    """Create an empty store for ``spec``: every array, the planned sizes and denominators, ``complete = False``.
    The root's ``softprep`` attributes are written last: until then the folder is not a softprep store."""
    with writing():
        _create_store(path, spec)


def _create_store(path: str | Path, spec: StoreSpec) -> None:
    root = zarr.open_group(str(path), mode="w-")
    c = spec.num_classes
    for split, split_spec in spec.splits.items():
        n = len(split_spec.ids)
        group = root.create_group(split, attributes=split_spec.attrs())
        _record_array(group, "counts", (n, c), "int64")
        _record_array(group, "done", (n,), "uint8")
        for target in spec.targets:
            tg = group.create_group(target, attributes={"target": target})
            plans = [spec.plan(split, i, target) for i in range(n)]
            _record_array(tg, "sizes", (n, 2), "int32")[:] = np.array([p.size for p in plans], dtype=np.int32).reshape(n, 2)
            _record_array(tg, "denominator", (n,), "int64")[:] = [p.denominator or 0 for p in plans]
            _record_array(tg, "planes", (n,), "uint8")
            _record_array(tg, "mass", (n, c), "float64")
            _record_array(tg, "mass_numerator", (n, c), "int64")
            _record_array(tg, "nn_counts", (n, c), "int64")
            for bucket, members in split_spec.members.items():
                _create_bucket(tg.create_group(bucket), len(members), spec.shard_images(split, bucket),
                               spec.bucket_layout(split, bucket, target))
    # A fresh identity per creation: readers holding this store open notice a rebuild by it.
    root.attrs["softprep"] = {**spec.root_attrs(complete=False), "build_id": uuid.uuid4().hex}


def _create_bucket(group, n: int, shard: int, layout: BucketLayout) -> None:
    (h, w), k = layout.shape, layout.planes
    group.attrs["exact"] = layout.exact
    group.create_array("image", shape=(n, h, w, 3), chunks=(1, h, w, 3), shards=(shard, h, w, 3),
                       dtype="uint8", fill_value=0, **_codecs(IMAGE_ZSTD_LEVEL))
    for name in ("classes", "nn"):
        group.create_array(name, shape=(n, h, w), chunks=(1, h, w), shards=(shard, h, w),
                           dtype="uint8", fill_value=EMPTY, **_codecs())
    chunk = min(h * w, max(LIST_CHUNK_MIN, -(-h * w // LIST_CHUNK_SHARE)))
    length = -(-h * w // chunk) * chunk  # whole chunks: a shard is a whole number of chunks
    for name, dtype, fill in (("mixed_classes", "uint8", EMPTY), ("mixed_weights", layout.weights_dtype, 0)):
        group.create_array(name, shape=(n, k, length), chunks=(1, k, chunk), shards=(shard, k, length),
                           dtype=dtype, fill_value=fill, **_codecs())


@dataclass
class TargetResult:
    """One image at one target: ``image (h, w, 3) uint8``, its packed soft label, ``nn (h, w) uint8``."""

    image: np.ndarray
    soft: PackedSoftLabel
    nn: np.ndarray


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

    @classmethod
    def of(cls, index: int, result: SampleResult) -> "SampleRecords":
        planes, mass, numerator, nn_counts = {}, {}, {}, {}
        c = len(result.counts)
        for target, r in result.targets.items():
            planes[target] = r.soft.planes
            exact_mass = r.soft.class_mass()
            numerator[target] = exact_mass if r.soft.exact else np.zeros(c, dtype=np.int64)
            mass[target] = exact_mass / r.soft.denominator if r.soft.exact else exact_mass
            nn_counts[target] = np.bincount(r.nn.ravel(), minlength=256)[:c].astype(np.int64)
        return cls(index, result.counts, planes, mass, numerator, nn_counts)


def write_shard(path: str | Path, spec: StoreSpec, task: Task, results: list[SampleResult]) -> None:
    """Write the pixels of one shard (images ``task.indices``, every target) into the bucket arrays."""
    with writing():
        _write_shard(zarr.open_group(str(path), mode="r+"), spec, task, results)


def _write_shard(root, spec: StoreSpec, task: Task, results: list[SampleResult]) -> None:
    start, stop = task.start, task.start + len(results)
    for target in spec.targets:
        bucket = root[task.split][target][task.bucket]
        per_image = [r.targets[target] for r in results]
        _, h, w = bucket["classes"].shape
        packed = [_as_stored(s.soft, bucket["mixed_weights"].dtype) for s in per_image]
        image = np.zeros((len(results), h, w, 3), np.uint8)
        classes = np.full((len(results), h, w), EMPTY, np.uint8)
        nn = np.full((len(results), h, w), EMPTY, np.uint8)
        for i, (s, p) in enumerate(zip(per_image, packed)):
            hh, ww = s.nn.shape
            image[i, :hh, :ww] = s.image
            classes[i, :hh, :ww] = p.classes
            nn[i, :hh, :ww] = s.nn
        bucket["image"][start:stop] = image
        bucket["classes"][start:stop] = classes
        bucket["nn"][start:stop] = nn
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
    classes = np.full((len(packed), used, longest), EMPTY, np.uint8)
    weights = np.zeros((len(packed), used, longest), bucket["mixed_weights"].dtype)
    for i, p in enumerate(packed):
        k, m = p.mixed_classes.shape
        classes[i, :k, :m] = p.mixed_classes
        weights[i, :k, :m] = p.mixed_weights
    bucket["mixed_classes"][start:start + len(packed), :used, :longest] = classes
    bucket["mixed_weights"][start:start + len(packed), :used, :longest] = weights


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


@contextlib.contextmanager
def store_lock(path: str | Path, writer: str = "softprep build", what: str = "store"):
    """Hold the write lock of the store at ``path``: a lock file beside it, released when the
    process ends however it ends; on object storage, a lock object created only if absent.

    Raises:
        SoftprepError: another process holds it (one line naming it).
    """
    path = location(path)
    if is_remote(path):
        with _object_lock(path):
            yield
        return
    path = Path(os.path.realpath(path))  # one lock per store, whichever link or alias names it
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")
    except OSError as error:
        raise SoftprepError(f"{path}: cannot create the lock file {lock_path} ({error.strerror}); "
                            "choose an --out in a folder you can write to") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise SoftprepError(f"{path}: another {writer} (pid {holder}) is writing this {what}; wait for it "
                            "to finish or stop it, then rerun") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def _object_lock(path):
    """The lock of a store on object storage: ``.NAME.lock`` beside it, created with a conditional
    write (fails if it exists), deleted when the build ends. A crashed build leaves it behind: the
    message says which build holds it and how to clear it."""
    lock = path.with_name(f".{path.name}.lock")
    holder = f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    try:
        with lock.fs.open(lock.path, "xb") as file:
            file.write(holder.encode())
    except FileExistsError:
        try:
            holder = lock.read_text()
        except OSError:
            holder = "?"
        raise SoftprepError(f"{path}: another softprep build ({holder}) holds the lock {lock}; wait for it, or if "
                            "none is running (it crashed), delete that object and rerun") from None
    try:
        yield
    finally:
        lock.fs.rm(lock.path)


def creating_path(path: str | Path) -> Path:
    """Where a local store is created before it is renamed to ``path`` in one step."""
    path = Path(path)
    return path.with_name(f"{path.name}.creating")


def create_store_atomically(path: str | Path, spec: StoreSpec) -> None:
    """Create the store so that an interruption at any point leaves either no store or a complete
    empty one. Locally: in :func:`creating_path`, renamed to ``path`` (a leftover is removed by the
    next try). Object storage has no rename: the store is created in place and its root attributes
    are written last, so an interrupted creation is not a softprep store (:func:`unfinished_creation`)."""
    path = location(path)
    if is_remote(path):
        if path.exists():
            remove_tree(path)
        create_store(path, spec)
        return
    temp = creating_path(path)
    for leftover in (temp, deleting_path(path)):  # of a killed creation or deletion
        if leftover.exists():
            shutil.rmtree(leftover)
    create_store(temp, spec)
    os.rename(temp, path)


def unfinished_creation(path) -> bool:
    """True for an object-storage store whose creation was interrupted (arrays without root attributes)."""
    path = location(path)
    if not is_remote(path) or not (path / "zarr.json").is_file():
        return False
    return "softprep" not in json.loads((path / "zarr.json").read_text()).get("attributes", {})


def remove_partial_files(path: str | Path) -> int:
    """Delete temporary files a killed writer left behind (local stores; object writes are atomic);
    returns how many."""
    path = location(path)
    if is_remote(path):
        return 0
    partial = list(path.rglob("*.partial"))
    for file in partial:
        file.unlink(missing_ok=True)
    return len(partial)


def deleting_path(path: str | Path) -> Path:
    """Where a local store is moved, in one step, before its files are removed."""
    path = Path(path)
    return path.with_name(f"{path.name}.deleting")


def _looks_like_zarr(path: Path) -> bool:
    """A zarr hierarchy, or what is left of one whose root metadata went first (an older softprep's
    interrupted deletion): ``zarr.json`` at the root or in a direct child folder."""
    return (path / "zarr.json").is_file() or any((child / "zarr.json").is_file() for child in path.iterdir()
                                                 if child.is_dir())


def delete_store(path: str | Path) -> None:
    """Delete a store (or an empty folder) at ``path``; anything else is refused.

    Locally the store is first renamed to :func:`deleting_path` (one atomic step), then removed: a
    kill at any moment leaves either the whole store or none at ``path``, and the leftover is
    removed by the next build or deletion."""
    path = location(path)
    if is_remote(path):
        if path.exists():
            if not (path / "zarr.json").is_file():
                raise SoftprepError(f"{path}: exists and is not a zarr store; refusing to delete it, choose another --out")
            remove_tree(path)
        return
    trash = deleting_path(path)
    if trash.exists():
        shutil.rmtree(trash)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    elif path.exists():
        if not path.is_dir() or not _looks_like_zarr(path):
            raise SoftprepError(f"{path}: exists and is not a zarr store; refusing to delete it, choose another --out")
        os.rename(path, trash)
        shutil.rmtree(trash)
    if creating_path(path).exists():
        shutil.rmtree(creating_path(path))


def shard_file(array, position: int, store_path: str | Path) -> Path:
    """The file (or object) holding bucket position ``position`` of a sharded per-image array."""
    coords = (position // array.shards[0],) + (0,) * (array.ndim - 1)
    return location(store_path) / array.path / array.metadata.encode_chunk_key(coords)


# ------------------------------------------------------------------------------------------ reading


#: What a softprep store's arrays may declare; anything else is refused before a byte is decoded.
ALLOWED_CODECS = frozenset({"bytes", "zstd", "crc32c", "sharding_indexed"})
ALLOWED_DTYPES = frozenset({"uint8", "uint16", "uint32", "int32", "int64", "float32", "float64"})
#: Most elements one image may hold in any array (colour: 3 per pixel of the largest allowed image).
MAX_IMAGE_ELEMENTS = 3 * 32_000_000
#: Most images a split may hold.
MAX_IMAGES = 10_000_000


def check_store_files(path) -> None:
    """Bound a store from an unknown source before anything is allocated or decoded: every array's
    codecs, dtype and per-image size within what softprep writes, and (locally) every file a
    regular file inside the store (no links to devices or system files).

    Raises:
        SoftprepError: one line naming the file and what is wrong with it.
    """
    local = not is_remote(path)
    for file in (path.rglob("*") if local else path.rglob("zarr.json")):
        if local and (file.is_symlink() or not (file.is_file() or file.is_dir())):
            raise SoftprepError(f"{file}: not a regular file inside the store (a link or device); refusing to read "
                                "this store: rebuild it or restore the file")
        if file.name == "zarr.json" and file.is_file():
            _check_array_metadata(file)


def _check_array_metadata(file) -> None:
    try:
        meta = json.loads(file.read_bytes())
    except (OSError, ValueError) as error:
        raise SoftprepError(f"{file}: unreadable metadata ({type(error).__name__}); run `softprep verify`, rebuild "
                            "the store") from None
    if not isinstance(meta, dict) or meta.get("node_type") != "array":
        return
    names = _codec_names(meta.get("codecs", []))
    unknown = sorted(set(names) - ALLOWED_CODECS)
    if unknown:
        raise SoftprepError(f"{file}: codec {unknown[0]!r} is not one a softprep store uses ({', '.join(sorted(ALLOWED_CODECS))}); "
                            "refusing to read it")
    dtype = meta.get("data_type")
    if dtype not in ALLOWED_DTYPES:
        raise SoftprepError(f"{file}: data type {str(dtype)[:40]!r} is not one a softprep store uses; refusing to read it")
    shape = meta.get("shape") or [0]
    chunks = (meta.get("chunk_grid", {}).get("configuration", {}) or {}).get("chunk_shape") or shape
    if (not all(isinstance(v, int) and v >= 0 for v in [*shape, *chunks]) or shape[0] > MAX_IMAGES
            or math.prod(shape[1:]) > MAX_IMAGE_ELEMENTS or math.prod(chunks) > MAX_IMAGE_ELEMENTS):
        raise SoftprepError(f"{file}: array shape {shape[:4]} (chunks {chunks[:4]}) is beyond what a softprep store "
                            f"holds (at most {MAX_IMAGES} images of {MAX_IMAGE_ELEMENTS} values); refusing to read it")


def _codec_names(codecs) -> list[str]:
    out = []
    for codec in codecs if isinstance(codecs, list) else []:
        if isinstance(codec, dict):
            out.append(str(codec.get("name")))
            config = codec.get("configuration") or {}
            out += _codec_names(config.get("codecs", [])) + _codec_names(config.get("index_codecs", []))
        else:
            out.append(str(codec))
    return out


def open_store(path: str | Path) -> "Store":
    """Open a store for reading (also an unfinished one: check ``store.complete``)."""
    return Store(path)


class Store:
    """Read access to a softprep store.

    ``store.samples("train", 0.125)[i]`` is a :class:`StoredSample`; ``store.spec`` holds the settings.
    """

    def __init__(self, path: str | Path):
        self.path = location(path)
        try:
            self.root = zarr.open_group(str(self.path), mode="r")
            self.attrs = dict(self.root.attrs["softprep"])
        except (FileNotFoundError, KeyError, ValueError) as error:
            raise SoftprepError(f"{self.path}: not a softprep store ({type(error).__name__}); build one with `softprep build`") from None
        self.build_id = self.attrs.get("build_id")
        check_store_files(self.path)
        version = self.attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise SoftprepError(f"{self.path}: store format {version} cannot be read by this softprep (it reads format "
                                f"{FORMAT_VERSION}); rebuild it: softprep build --dataset {self.attrs.get('dataset', 'NAME')} "
                                f"--root DATA --out {self.path} --scales ... --overwrite")

    def check_unchanged(self, where: str) -> None:
        """Refuse to go on reading once the store at this path has been rebuilt (or deleted) since it
        was opened: what this reader holds (sizes, slot counts, completeness) belongs to the old one.

        Raises:
            SoftprepError: one line naming ``where`` and what to do (reopen the store).
        """
        try:
            current = json.loads((self.path / "zarr.json").read_bytes())["attributes"]["softprep"].get("build_id")
        except (OSError, ValueError, KeyError, TypeError):
            current = "(none)"
        if current != self.build_id:
            raise SoftprepError(f"{where}: the store was rebuilt or removed since this reader opened it; open it again "
                                "(restart the training or reader) to read the new store")

    @cached_property
    def spec(self) -> StoreSpec:
        a = self.attrs
        splits = {s: SplitSpec(**{k: self.root[s].attrs[k] for k in ("ids", "images", "labels", "sizes")}) for s in a["splits"]}
        return StoreSpec(a["dataset"], a["classes"], a["palette"], a["ignore_index"], a["kernel"],
                         a["antialias"], a["targets"], a["shard_size"], splits, a.get("image_kernel", a["kernel"]))

    @property
    def complete(self) -> bool:
        return bool(self.attrs["complete"])

    @property
    def splits(self) -> list[str]:
        return list(self.attrs["splits"])

    @property
    def targets(self) -> list[str]:
        """Target names, e.g. ``["0.125", "0.25", "short512"]``."""
        return list(self.attrs["targets"])

    @property
    def classes(self) -> list[str]:
        return list(self.attrs["classes"])

    def done(self, split: str) -> np.ndarray:
        """``(N,) bool``: images completely written. A damaged marker reads as not done."""
        array = self.root[split]["done"]
        out = np.zeros(array.shape[0], dtype=bool)
        step = array.chunks[0] or 1
        for start in range(0, array.shape[0], step):
            try:
                out[start:start + step] = array[start:start + step] == 1
            except Exception:  # noqa: BLE001 - a torn or corrupt marker means "redo this shard"
                pass
        return out

    def counts(self, split: str) -> np.ndarray:
        """``(N, C) int64`` full-resolution pixels per class."""
        return self.root[split]["counts"][:]

    def samples(self, split: str, target) -> "TargetView":
        """The images of ``split`` at ``target`` (a factor such as ``0.125`` or a name such as ``"short512"``)."""
        if split not in self.splits:
            raise SoftprepError(f"{self.path}: no split {split!r}; the store has {', '.join(self.splits)}")
        name = target_name(target)
        if name not in self.targets:
            raise SoftprepError(f"{self.path}: no target {name}; the store has {', '.join(self.targets)}")
        return TargetView(self, split, name)


class TargetView:
    """The images of one split at one target: ``len``, iteration and indexing by position or id."""

    def __init__(self, store: Store, split: str, target: str):
        self.store, self.split, self.target = store, split, target
        self.group = store.root[split][target]
        split_spec = store.spec.splits[split]
        self.ids: list[str] = split_spec.ids
        self.buckets, self.positions = split_spec.buckets, split_spec.positions
        self.sizes: np.ndarray = self.group["sizes"][:]  # (N, 2)
        self.denominators: np.ndarray = self.group["denominator"][:]  # (N,)
        self._planes: np.ndarray | None = None
        self._bucket_groups: dict = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, key: int | str) -> "StoredSample":
        index = self.ids.index(key) if isinstance(key, str) else range(len(self))[key]
        return StoredSample(self, index)

    def bucket(self, index: int):
        """The zarr group holding image ``index``'s pixels."""
        name = self.buckets[index]
        if name not in self._bucket_groups:
            self._bucket_groups[name] = self.group[name]
        return self._bucket_groups[name]

    @property
    def exact(self) -> bool:
        """Every image's weights are exact integers over its denominator (rational priors)."""
        return bool((self.denominators > 0).all())

    def mass(self) -> np.ndarray:
        """``(N, C) float64`` soft-label weight per class."""
        return self.group["mass"][:]

    def mass_numerator(self) -> np.ndarray:
        """``(N, C) int64`` exact class weights over :attr:`denominators` (zeros for float images)."""
        return self.group["mass_numerator"][:]

    def nn_counts(self) -> np.ndarray:
        """``(N, C) int64`` nearest-neighbour pixels per class."""
        return self.group["nn_counts"][:]

    def planes(self) -> np.ndarray:
        """``(N,) uint8`` soft-label slots used per image (read once: a complete store never changes them)."""
        if self._planes is None or not self.store.complete:
            self._planes = self.group["planes"][:]
        return self._planes


class StoredSample:
    """One image of a :class:`TargetView`; arrays are read on access.

    Every read first checks that the image is marked done and its shard files exist, and turns a
    decode or checksum failure into a one-line :class:`SoftprepError` naming split, target and image:
    a reader never returns the zeros of data that is missing, unfinished or being rebuilt.
    """

    def __init__(self, view: TargetView, index: int):
        self.view, self.index = view, index
        self.id = view.ids[index]
        self.shape: tuple[int, int] = tuple(int(v) for v in view.sizes[index])
        self.position = view.positions[index]
        self._done_checked = False

    @property
    def where(self) -> str:
        return f"{self.view.store.path}: {self.view.split}/{self.view.target}: image {self.id} (#{self.index})"

    def _read(self, name: str, planes: int | None = None, entries: int = 0) -> np.ndarray:
        """The ``name`` array of this image cropped to its size; a list array: its first ``planes``
        rows and ``entries`` entries."""
        h, w = self.shape
        try:
            if not self._done_checked:  # once per sample object: one small chunk read, not one per array
                if not self.view.store.root[self.view.split]["done"][self.index]:
                    raise SoftprepError(f"{self.where}: not built (its shard is unfinished, or being rebuilt); "
                                        "finish the store with `softprep build`")
                self._done_checked = True
            array = self.view.bucket(self.index)[name]
            if planes is not None and not entries:  # no mixed pixel: nothing was written, nothing to read
                return np.zeros((planes, 0), array.dtype)
            if not shard_file(array, self.position, self.view.store.path).is_file():
                raise SoftprepError(f"{self.where}: the {name} shard file is missing; rebuild the store "
                                    "(softprep build ... --overwrite) or restore the file")
            values = array[self.position, :h, :w] if planes is None else array[self.position, :planes, :entries]
            self.view.store.check_unchanged(self.where)  # after the read: a rebuild during it is caught too
            return values
        except SoftprepError:
            raise
        except Exception as error:  # noqa: BLE001 - zstd/crc32c failures, missing metadata: name the image
            text = str(error).splitlines()[0] if str(error) else ""
            raise SoftprepError(f"{self.where}: {name} cannot be read ({type(error).__name__}: {text[:120]}); "
                                "run `softprep verify` and rebuild damaged stores") from None

    @property
    def image(self) -> np.ndarray:
        """``(h, w, 3) uint8`` colour image."""
        return self._read("image")

    def soft_label(self) -> SoftLabel:
        """The sparse :class:`SoftLabel` as stored."""
        return unpack(self.packed())

    def packed(self) -> PackedSoftLabel:
        """The :class:`PackedSoftLabel` as stored (class map and mixed-pixel lists)."""
        classes = self._read("classes")
        mixed = int(np.count_nonzero(classes == MIXED))
        k = max(1, int(self.view.planes()[self.index]))
        mixed_classes, mixed_weights = self._read("mixed_classes", k, mixed), self._read("mixed_weights", k, mixed)
        denominator = int(self.view.denominators[self.index]) if mixed_weights.dtype.kind == "u" else None
        return PackedSoftLabel(classes, mixed_classes, mixed_weights, len(self.view.store.classes), denominator)

    def soft(self, dense: bool = True) -> np.ndarray | SoftLabel:
        """``(C, h, w) float32`` per-class weights (``dense=False``: the sparse SoftLabel)."""
        soft = self.soft_label()
        return soft.dense() if dense else soft

    def hard(self) -> np.ndarray:
        """``(h, w) uint8`` argmax of the soft label (255 where fully ignored)."""
        return self.soft_label().argmax()

    def nn(self) -> np.ndarray:
        """``(h, w) uint8`` nearest-neighbour train ids (255 = ignore), the usual baseline label."""
        return self._read("nn")
