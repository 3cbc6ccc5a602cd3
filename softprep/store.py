"""The Zarr v3 store: layout, creation, shard writes and the one reader everything uses.

Layout (``docs/store-format.md`` is the full specification)::

    STORE.zarr/                      attrs["softprep"]: format, dataset, classes, palette, kernel, ...
      {split}/                       attrs: ids, images, labels, sizes
        counts   (N, C) int64        full-resolution pixels per class
        done     (N,)   uint8        1 once the shard holding the image is completely written
        {scale}/                     attrs: scale, sizes, denominator, weights_dtype
          image    (N, H', W', 3) uint8
          classes  (N, K, H', W') uint8         soft-label slot classes, 255 = empty
          weights  (N, K, H', W') uint8|uint16|uint32|float32
          planes   (N,) uint8                   slots used by each image (<= K)
          nn       (N, H', W') uint8            nearest-neighbour train ids (255 = ignore)
          mass     (N, C) int64|float64         soft-label weight per class (numerators when exact)
          nn_counts (N, C) int64                NN pixels per class

Arrays of ``N`` images are sharded ``S`` images to a shard. Exactly one writer owns a shard
(zarr-python loses data when two write inner chunks of one shard), and ``done`` is written last.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from softprep.errors import SoftprepError
from softprep.kernels import axis_weights, output_size
from softprep.softlabel import EMPTY, SoftLabel, weight_dtype

FORMAT = "softprep-store"
FORMAT_VERSION = 1
ZSTD_LEVEL = 3


def scale_name(scale: float) -> str:
    """Group name of a scale: ``0.125 -> "0.125"``, ``1.0 -> "1.0"``."""
    return repr(float(scale))


@dataclass
class SplitSpec:
    """The images of one split. ``sizes`` are full-resolution ``[H, W]``; paths are relative to the root."""

    ids: list[str]
    images: list[str]
    labels: list[str]
    sizes: list[list[int]]


@dataclass
class StoreSpec:
    """Everything that defines a store's content; two builds with equal specs write equal stores."""

    dataset: str
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    kernel: str
    antialias: bool
    scales: list[float]
    shard_size: int
    splits: dict[str, SplitSpec] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def root_attrs(self, complete: bool) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "dataset": self.dataset,
            "classes": self.classes, "palette": self.palette, "ignore_index": self.ignore_index,
            "kernel": self.kernel, "antialias": self.antialias, "scales": self.scales,
            "splits": list(self.splits), "shard_size": self.shard_size, "complete": complete,
        }

    def scale_layout(self, split: str, scale: float) -> dict:
        """Per-image output sizes, the common weight denominator (or None) and slot count K."""
        sizes, denominators, planes = [], set(), 1
        for h, w in self.splits[split].sizes:
            out = (output_size(h, scale), output_size(w, scale))
            wy = axis_weights(self.kernel, h, out[0], self.antialias)
            wx = axis_weights(self.kernel, w, out[1], self.antialias)
            exact = wy.denominator is not None and wx.denominator is not None
            denominators.add(wy.denominator * wx.denominator if exact else None)
            planes = max(planes, min(self.num_classes, wy.taps * wx.taps))
            sizes.append(list(out))
        # One denominator per array: images of mixed sizes with different ones fall back to float.
        denominator = denominators.pop() if len(denominators) == 1 else None
        return {"sizes": sizes, "denominator": denominator, "planes": planes}


def _codecs() -> dict:
    return {"compressors": [ZstdCodec(level=ZSTD_LEVEL), Crc32cCodec()]}


def create_store(path: str | Path, spec: StoreSpec) -> None:
    """Create an empty store for ``spec`` (all arrays, ``complete = False``)."""
    root = zarr.open_group(str(path), mode="w-", attributes={"softprep": spec.root_attrs(complete=False)})
    c, s = spec.num_classes, spec.shard_size
    for split, split_spec in spec.splits.items():
        n = len(split_spec.ids)
        group = root.create_group(split, attributes=asdict(split_spec))
        group.create_array("counts", shape=(n, c), chunks=(s, c), dtype="int64", fill_value=0, **_codecs())
        group.create_array("done", shape=(n,), chunks=(s,), dtype="uint8", fill_value=0, **_codecs())
        for scale in spec.scales:
            layout = spec.scale_layout(split, scale)
            h = max(size[0] for size in layout["sizes"])
            w = max(size[1] for size in layout["sizes"])
            k, denominator = layout["planes"], layout["denominator"]
            dtype = weight_dtype(denominator)
            sg = group.create_group(scale_name(scale), attributes={
                "scale": scale, "sizes": layout["sizes"], "denominator": denominator, "weights_dtype": dtype.name,
            })
            sg.create_array("image", shape=(n, h, w, 3), chunks=(1, h, w, 3), shards=(s, h, w, 3),
                            dtype="uint8", fill_value=0, **_codecs())
            for name, dt, fill in (("classes", "uint8", EMPTY), ("weights", dtype.name, 0)):
                sg.create_array(name, shape=(n, k, h, w), chunks=(1, 1, h, w), shards=(s, k, h, w),
                                dtype=dt, fill_value=fill, **_codecs())
            sg.create_array("planes", shape=(n,), chunks=(s,), dtype="uint8", fill_value=0, **_codecs())
            sg.create_array("nn", shape=(n, h, w), chunks=(1, h, w), shards=(s, h, w),
                            dtype="uint8", fill_value=EMPTY, **_codecs())
            sg.create_array("mass", shape=(n, c), chunks=(s, c), fill_value=0,
                            dtype="int64" if denominator is not None else "float64", **_codecs())
            sg.create_array("nn_counts", shape=(n, c), chunks=(s, c), dtype="int64", fill_value=0, **_codecs())


@dataclass
class ScaleResult:
    """One image at one scale: ``image (H', W', 3) uint8``, its soft label, ``nn (H', W') uint8``."""

    image: np.ndarray
    soft: SoftLabel
    nn: np.ndarray


@dataclass
class SampleResult:
    """One image at every scale, plus its full-resolution ``counts (C,) int64``."""

    counts: np.ndarray
    scales: dict[float, ScaleResult]


def write_shard(path: str | Path, split: str, start: int, results: list[SampleResult]) -> None:
    """Write images ``start .. start + len(results)`` (one whole shard) of ``split``, ``done`` last."""
    root = zarr.open_group(str(path), mode="r+")
    group = root[split]
    stop = start + len(results)
    c = group["counts"].shape[1]
    for scale in root.attrs["softprep"]["scales"]:
        sg = group[scale_name(scale)]
        per_image = [r.scales[scale] for r in results]
        _, k, h, w = sg["classes"].shape
        used = max(s.soft.planes for s in per_image)
        image = np.zeros((len(results), h, w, 3), np.uint8)
        classes = np.full((len(results), used, h, w), EMPTY, np.uint8)
        weights = np.zeros((len(results), used, h, w), sg["weights"].dtype)
        nn = np.full((len(results), h, w), EMPTY, np.uint8)
        for i, s in enumerate(per_image):
            hh, ww = s.nn.shape
            image[i, :hh, :ww] = s.image
            classes[i, : s.soft.planes, :hh, :ww] = s.soft.classes
            weights[i, : s.soft.planes, :hh, :ww] = s.soft.weights
            nn[i, :hh, :ww] = s.nn
        sg["image"][start:stop] = image
        sg["classes"][start:stop, :used] = classes
        sg["weights"][start:stop, :used] = weights
        sg["nn"][start:stop] = nn
        sg["planes"][start:stop] = [s.soft.planes for s in per_image]
        sg["mass"][start:stop] = np.stack([s.soft.class_mass() for s in per_image])
        sg["nn_counts"][start:stop] = np.stack([np.bincount(s.nn.ravel(), minlength=256)[:c] for s in per_image])
    group["counts"][start:stop] = np.stack([r.counts for r in results])
    group["done"][start:stop] = 1


def remove_partial_files(path: str | Path) -> int:
    """Delete temporary files a killed writer left behind; returns how many."""
    partial = list(Path(path).rglob("*.partial"))
    for file in partial:
        file.unlink(missing_ok=True)
    return len(partial)


def delete_store(path: str | Path) -> None:
    path = Path(path)
    if path.exists():
        if not (path / "zarr.json").is_file():
            raise SoftprepError(f"{path}: exists and is not a zarr store; refusing to delete it, choose another --out")
        shutil.rmtree(path)


# ------------------------------------------------------------------------------------------ reading


def open_store(path: str | Path) -> "Store":
    """Open a store for reading (also an unfinished one: check ``store.complete``)."""
    return Store(path)


class Store:
    """Read access to a softprep store.

    ``store.samples("train", 0.125)[i]`` is a :class:`StoredSample`; ``store.spec`` holds the settings.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.root = zarr.open_group(str(self.path), mode="r")
            self.attrs = dict(self.root.attrs["softprep"])
        except (FileNotFoundError, KeyError, ValueError) as error:
            raise SoftprepError(f"{self.path}: not a softprep store ({type(error).__name__}); build one with `softprep build`") from None
        if self.attrs.get("format_version") != FORMAT_VERSION:
            raise SoftprepError(f"{self.path}: store format {self.attrs.get('format_version')} is not supported (this softprep reads {FORMAT_VERSION})")

    @cached_property
    def spec(self) -> StoreSpec:
        a = self.attrs
        splits = {s: SplitSpec(**{k: self.root[s].attrs[k] for k in ("ids", "images", "labels", "sizes")}) for s in a["splits"]}
        return StoreSpec(a["dataset"], a["classes"], a["palette"], a["ignore_index"], a["kernel"],
                         a["antialias"], a["scales"], a["shard_size"], splits)

    @property
    def complete(self) -> bool:
        return bool(self.attrs["complete"])

    @property
    def splits(self) -> list[str]:
        return list(self.attrs["splits"])

    @property
    def scales(self) -> list[float]:
        return list(self.attrs["scales"])

    @property
    def classes(self) -> list[str]:
        return list(self.attrs["classes"])

    def done(self, split: str) -> np.ndarray:
        """``(N,) bool``: images whose shard is completely written. A damaged marker reads as not done."""
        array = self.root[split]["done"]
        out = np.zeros(array.shape[0], dtype=bool)
        step = array.chunks[0]
        for start in range(0, array.shape[0], step):
            try:
                out[start:start + step] = array[start:start + step] == 1
            except Exception:  # noqa: BLE001 - a torn or corrupt marker means "redo this shard"
                pass
        return out

    def counts(self, split: str) -> np.ndarray:
        """``(N, C) int64`` full-resolution pixels per class."""
        return self.root[split]["counts"][:]

    def samples(self, split: str, scale: float) -> "ScaleView":
        if split not in self.splits:
            raise SoftprepError(f"{self.path}: no split {split!r}; the store has {', '.join(self.splits)}")
        if float(scale) not in [float(s) for s in self.scales]:
            raise SoftprepError(f"{self.path}: no scale {scale}; the store has {', '.join(map(str, self.scales))}")
        return ScaleView(self, split, float(scale))


class ScaleView:
    """The images of one split at one scale: ``len``, iteration and indexing by position or id."""

    def __init__(self, store: Store, split: str, scale: float):
        self.store, self.split, self.scale = store, split, scale
        self.group = store.root[split][scale_name(scale)]
        self.ids: list[str] = list(store.root[split].attrs["ids"])
        self.sizes: list[list[int]] = list(self.group.attrs["sizes"])
        self.denominator: int | None = self.group.attrs["denominator"]

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, key: int | str) -> "StoredSample":
        index = self.ids.index(key) if isinstance(key, str) else range(len(self))[key]
        return StoredSample(self, index)

    def mass(self) -> np.ndarray:
        """``(N, C)`` soft-label weight per class (``int64`` numerators over ``denominator`` when exact)."""
        return self.group["mass"][:]

    def nn_counts(self) -> np.ndarray:
        """``(N, C) int64`` nearest-neighbour pixels per class."""
        return self.group["nn_counts"][:]


class StoredSample:
    """One image of a :class:`ScaleView`; arrays are read on access."""

    def __init__(self, view: ScaleView, index: int):
        self.view, self.index = view, index
        self.id = view.ids[index]
        self.shape: tuple[int, int] = tuple(view.sizes[index])

    @property
    def image(self) -> np.ndarray:
        """``(H', W', 3) uint8`` colour image."""
        h, w = self.shape
        return self.view.group["image"][self.index, :h, :w]

    def soft_label(self) -> SoftLabel:
        """The sparse :class:`SoftLabel` as stored."""
        h, w = self.shape
        k = max(1, int(self.view.group["planes"][self.index]))
        classes = self.view.group["classes"][self.index, :k, :h, :w]
        weights = self.view.group["weights"][self.index, :k, :h, :w]
        return SoftLabel(classes, weights, len(self.view.store.classes), self.view.denominator)

    def soft(self, dense: bool = True) -> np.ndarray | SoftLabel:
        """``(C, H', W') float32`` per-class weights (``dense=False``: the sparse SoftLabel)."""
        soft = self.soft_label()
        return soft.dense() if dense else soft

    def hard(self) -> np.ndarray:
        """``(H', W') uint8`` argmax of the soft label (255 where fully ignored)."""
        return self.soft_label().argmax()

    def nn(self) -> np.ndarray:
        """``(H', W') uint8`` nearest-neighbour train ids (255 = ignore), the usual baseline label."""
        h, w = self.shape
        return self.view.group["nn"][self.index, :h, :w]
