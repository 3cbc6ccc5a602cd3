"""The store's layout (no zarr calls): format constants, size buckets, the typed spec of a store
(:class:`StoreSpec`, what two equal builds share), its per-bucket array layout and the shard tasks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property

from softprep.plan import ResamplingPlan, Target, resampling_plan, target_name  # noqa: F401 - target_name re-exported
from softprep.softlabel import weight_dtype

FORMAT = "softprep-store"
#: The format this softprep writes. 4: the ``nn`` map is ``nearest-exact`` (pixel centres, aligned
#: with the image; torch ``nearest`` kept as ``nn_floor``), and each label file's digest is recorded.
FORMAT_VERSION = 4
#: How each format samples its ``nn`` map (``softprep.kernels``' kernel names).
NN_RULE = {3: "nearest", 4: "nearest-exact"}
#: The formats it reads.
READABLE_FORMATS = (3, 4)
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


def _grid(side: int) -> int:
    """Smallest value ``ceil(2**(k / steps))`` that is >= ``side``."""
    k = math.ceil(BUCKET_STEPS_PER_OCTAVE * math.log2(max(side, 1)))
    while math.ceil(2 ** (k / BUCKET_STEPS_PER_OCTAVE)) < side:
        k += 1
    return math.ceil(2 ** (k / BUCKET_STEPS_PER_OCTAVE))


def bucket_of(*sides: int) -> str:
    """Size bucket of a full-resolution ``(H, W)`` (a volume: ``(X, Y, Z)``): ``"{H_max}x{W_max}"`` of
    the grid cell it falls in."""
    return "x".join(str(_grid(side)) for side in sides)


@dataclass(frozen=True)
class SplitSpec:
    """The images of one split. ``sizes`` are full-resolution ``[H, W]``; paths are relative to the root;
    ``label_digests`` identify each label file's bytes (:func:`softprep.datasets.base.file_digest`;
    None in format-3 stores): the store's source, checked on resume and by ``eval --root``."""

    ids: list[str]
    images: list[str]
    labels: list[str]
    sizes: list[list[int]]
    label_digests: list[str] | None = None
    #: Volumes: each image's voxel size in mm per axis, and its voxel-to-world affine (4 x 4), from its header.
    spacings: list[list[float]] | None = None
    affines: list[list[list[float]]] | None = None

    @property
    def ndim(self) -> int:
        """Spatial axes of the split's images: 2, or 3 for volumes."""
        return len(self.sizes[0]) if self.sizes else 2

    def spacing(self, index: int) -> tuple[float, ...] | None:
        """Image ``index``'s voxel size in mm per axis (None for 2-D images)."""
        return tuple(self.spacings[index]) if self.spacings is not None else None

    @cached_property
    def buckets(self) -> list[str]:
        """Size bucket of each image."""
        return [bucket_of(*size) for size in self.sizes]

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
        return {**{k: v for k, v in asdict(self).items() if v is not None}, "buckets": self.buckets}


def map_arrays(nn_floor: bool) -> tuple[str, ...]:
    """The ``(Nb, Hb, Wb) uint8`` per-pixel maps of a bucket: the soft label's class map, the ``nn``
    map, and the torch ``nearest`` map where it differs (bucket attribute ``nn_floor``)."""
    return ("classes", "nn", "nn_floor") if nn_floor else ("classes", "nn")


@dataclass(frozen=True)
class BucketLayout:
    """Arrays of one bucket at one target: ``shape (Hb, Wb)`` (a volume: three sides), ``planes`` K,
    weight dtype, exactness, and whether torch ``nearest`` needs its own map (``nn_floor``; not where
    it equals ``nn``, at 1:1)."""

    shape: tuple[int, ...]
    planes: int
    exact: bool
    weights_dtype: str
    nn_floor: bool = True


@dataclass(frozen=True)
class Task:
    """One shard of work: images ``indices`` (split order) at bucket positions ``start ..``."""

    split: str
    bucket: str
    start: int
    indices: tuple[int, ...]


@dataclass(frozen=True)
class StoreSpec:
    """Everything that defines a store's content; two builds with equal specs write equal stores.

    Frozen and typed: a target is a :class:`~softprep.plan.Target` from the command line to the
    written chunk; its name appears only where metadata is written or read (:meth:`root_attrs`,
    group names: :attr:`target_names`)."""

    dataset: str
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    kernel: str
    antialias: bool
    targets: tuple[Target, ...]
    shard_size: int
    splits: dict[str, SplitSpec] = field(default_factory=dict)
    #: Kernel of the colour images when it differs from the labels' ``kernel`` (the paper's Table IV).
    image_kernel: str | None = None
    #: The image arrays' trailing channels and dtype: RGB ``uint8`` images, or a volume's
    #: modalities as ``float32`` intensities.
    image_channels: int = 3
    image_dtype: str = "uint8"

    @property
    def target_names(self) -> list[str]:
        """The targets' canonical names, also their group names: ``["0.125", "short512"]``."""
        return [t.name for t in self.targets]

    def describe(self) -> dict:
        """The spec as plain values (targets by name): what two builds compare, and what a refusal shows."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("targets", "splits")},
                "targets": self.target_names, "splits": {name: asdict(split) for name, split in self.splits.items()}}

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
            "kernel": self.kernel, "image_kernel": self.colour_kernel, "antialias": self.antialias,
            "targets": self.target_names,
            "nn_rule": NN_RULE[FORMAT_VERSION], "image_channels": self.image_channels, "image_dtype": self.image_dtype,
            "splits": list(self.splits), "shard_size": self.shard_size, "complete": complete,
        }

    def plan(self, split: str, index: int, target) -> ResamplingPlan:
        """The resampling plan of image ``index`` of ``split`` at ``target`` (the labels' kernel)."""
        found = self.splits[split]
        return resampling_plan(self.kernel, self.antialias, tuple(found.sizes[index]), target, found.spacing(index))

    def image_plan(self, split: str, index: int, target) -> ResamplingPlan:
        """The plan of the colour image: :meth:`plan` with :attr:`colour_kernel` (the same output size)."""
        found = self.splits[split]
        return resampling_plan(self.colour_kernel, self.antialias, tuple(found.sizes[index]), target, found.spacing(index))

    def bucket_layout(self, split: str, bucket: str, target) -> BucketLayout:
        """Shape, slot count and weight encoding of a bucket's arrays at ``target``."""
        plans = [self.plan(split, i, target) for i in self.splits[split].members[bucket]]
        shape = tuple(max(p.size[axis] for p in plans) for axis in range(len(plans[0].size)))
        denominators = [p.denominator for p in plans]
        exact = None not in denominators
        dtype = weight_dtype(max(denominators) if exact else None)
        return BucketLayout(shape, max(p.max_classes(self.num_classes) for p in plans), exact, dtype.name,
                            any(p.floor_differs for p in plans))

    def shard_images(self, split: str, bucket: str) -> int:
        """Images per shard of a bucket: ``shard_size``, fewer where their outputs exceed the pixel budget."""
        found = self.splits[split]
        first = found.members[bucket][0]
        cell = tuple(_grid(side) for side in found.sizes[first])
        pixels = sum(math.prod(t.output_size(*cell, spacing=found.spacing(first))) for t in self.targets)
        return max(1, min(self.shard_size, SHARD_PIXEL_BUDGET // max(pixels, 1)))

    def tasks(self, split: str) -> list[Task]:
        """The shards of a split, bucket by bucket."""
        out = []
        for bucket, indices in self.splits[split].members.items():
            step = self.shard_images(split, bucket)
            out += [Task(split, bucket, start, tuple(indices[start:start + step])) for start in range(0, len(indices), step)]
        return out
