"""Reading a store: the one reader that priors, verify, show, stats and training all use. A store
from an unknown source is bounded before anything is allocated (:func:`check_store_files`)."""

from __future__ import annotations

import json
import os
import math
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from softprep.errors import SoftprepError, printable
from softprep.location import is_remote, location
from softprep.softlabel import MIXED, PackedSoftLabel, SoftLabel, unpack
from softprep.plan import parse_target
from softprep.store.layout import FORMAT, NN_RULE, READABLE_FORMATS, SplitSpec, StoreSpec, target_name

def shard_file(array, position: int, store_path: str | Path) -> Path:
    """The file (or object) holding bucket position ``position`` of a sharded per-image array."""
    coords = (position // array.shards[0],) + (0,) * (array.ndim - 1)
    return location(store_path) / array.path / array.metadata.encode_chunk_key(coords)



#: What a softprep store's arrays may declare; anything else is refused before a byte is decoded.
ALLOWED_CODECS = frozenset({"bytes", "zstd", "crc32c", "sharding_indexed"})
ALLOWED_DTYPES = frozenset({"uint8", "uint16", "uint32", "int32", "int64", "float32", "float64"})
#: Most elements one image may hold in any array (colour: 3 per pixel of the largest allowed image).
MAX_IMAGE_ELEMENTS = 3 * 32_000_000
#: Most images a split may hold.
MAX_IMAGES = 10_000_000
#: Most bytes of a split group's attributes per image it declares (an id, two paths, a size, a digest).
SPLIT_METADATA_BYTES_PER_IMAGE = 4096


#: Zarr v2 metadata file names: a softprep store is Zarr v3 alone, and v2 metadata would let an
#: array escape the bounds below (zarr reads either).
ZARR_V2_FILES = frozenset({".zarray", ".zgroup", ".zattrs", ".zmetadata"})


def softprep_marker(path) -> dict | None:
    """The ``softprep`` attributes of the Zarr v3 group at ``path`` when they carry softprep's format
    marker (written in the very file write that creates a store's root), else None. Reads one file."""
    try:
        meta = json.loads((location(path) / "zarr.json").read_bytes())
        marker = meta["attributes"]["softprep"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == FORMAT else None


def check_store_files(path) -> None:
    """Bound a store from an unknown source before anything is allocated or decoded: Zarr v3
    metadata alone (no v2 ``.zarray``/``.zgroup``/``.zattrs``), every array's codecs, dtype and
    per-image size within what softprep writes, and (locally) every file a regular file inside the
    store (no links to devices or system files).

    Raises:
        SoftprepError: one line naming the file and what is wrong with it.
    """
    local = not is_remote(path)
    for file in path.rglob("*"):
        if local and not file.is_symlink() and not os.path.lexists(file):
            continue  # renamed or removed since listed: a live build's temporary chunk file
        if local and (file.is_symlink() or not (file.is_file() or file.is_dir())):
            raise SoftprepError(f"{file}: not a regular file inside the store (a link or device); refusing to read "
                                "this store: rebuild it or restore the file")
        if file.name in ZARR_V2_FILES:
            raise SoftprepError(f"{file}: Zarr v2 metadata; a softprep store is Zarr v3 alone (zarr.json per node), "
                                "refusing to read it: rebuild the store with `softprep build`")
        if file.name == "zarr.json" and file.is_file():
            _check_array_metadata(file)


def _check_array_metadata(file) -> None:
    try:
        meta = json.loads(file.read_bytes())
    except (OSError, ValueError):
        return  # damaged metadata declares no codec zarr would build; the read of that array fails, verify names it
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
        marker = softprep_marker(self.path)  # one small read first: a stranger's folder is never walked
        if marker is None:
            raise SoftprepError(f"{self.path}: not a softprep store (no zarr.json with softprep's marker); build one "
                                "with `softprep build`")
        if marker.get("creating"):
            raise SoftprepError(f"{self.path}: the creation of this store was interrupted; rerun the `softprep build` "
                                "that made it (it starts the store again)")
        version = marker.get("format_version")
        if version not in READABLE_FORMATS:
            raise SoftprepError(f"{self.path}: store format {version} cannot be read by this softprep (it reads formats "
                                f"{', '.join(map(str, READABLE_FORMATS))}); rebuild it: softprep build --dataset "
                                f"{printable(marker.get('dataset', 'NAME'))} --root DATA --out {self.path} --scales ... --overwrite")
        check_store_files(self.path)
        try:
            self.root = zarr.open_group(str(self.path), mode="r", zarr_format=3)
            self.attrs = dict(self.root.attrs["softprep"])
        except (FileNotFoundError, KeyError, ValueError) as error:
            raise SoftprepError(f"{self.path}: not a softprep store ({type(error).__name__}); build one with `softprep build`") from None
        self.build_id = self.attrs.get("build_id")
        self.spec  # noqa: B018 - the per-image lists, bounded by the declared image counts, checked at open

    def check_unchanged(self, where: str) -> None:
        """Refuse to go on reading once the store at this path has been rebuilt (or deleted) since it
        was opened: what this reader holds (sizes, slot counts, completeness) belongs to the old one.

        Raises:
            SoftprepError: one line naming ``where`` and what to do (reopen the store).
        """
        current = (softprep_marker(self.path) or {}).get("build_id", "(none)")
        if current != self.build_id:
            raise SoftprepError(f"{where}: the store was rebuilt or removed since this reader opened it (it is not "
                                "damaged); open it again (restart the training or reader) to read the new store")

    @cached_property
    def spec(self) -> StoreSpec:
        a = self.attrs
        splits = {s: self._split_spec(s) for s in a["splits"]}
        return StoreSpec(a["dataset"], a["classes"], a["palette"], a["ignore_index"], a["kernel"], a["antialias"],
                         tuple(parse_target(t) for t in a["targets"]), a["shard_size"], splits,
                         a.get("image_kernel", a["kernel"]), a.get("image_channels", 3), a.get("image_dtype", "uint8"))

    def _split_spec(self, split: str) -> SplitSpec:
        """A split's spec, its per-image lists bounded by the image count its ``done`` array declares
        (checked on the metadata's size before the lists are parsed)."""
        declared = self.root[split]["done"].shape[0]
        metadata = self.path / split / "zarr.json"
        if metadata.stat().st_size > SPLIT_METADATA_BYTES_PER_IMAGE * declared + 65536:
            raise SoftprepError(f"{metadata}: {metadata.stat().st_size} bytes of attributes for the {declared} images its "
                                "done array declares; the store is damaged or crafted: rebuild it")
        attrs = self.root[split].attrs
        fields = {k: attrs[k] for k in ("ids", "images", "labels", "sizes")}
        for name in ("label_digests", "spacings", "affines"):
            fields[name] = attrs.get(name)
        lengths = {k: len(v) if isinstance(v, list) else -1 for k, v in fields.items() if v is not None}
        if any(n != declared for n in lengths.values()):
            detail = ", ".join(f"{k} {n}" for k, n in lengths.items())
            raise SoftprepError(f"{metadata}: per-image lists ({detail}) do not match the {declared} images its done "
                                "array declares; the store is damaged or crafted: rebuild it")
        return SplitSpec(**fields)

    @property
    def complete(self) -> bool:
        return bool(self.attrs["complete"])

    @property
    def format_version(self) -> int:
        return int(self.attrs["format_version"])

    @property
    def nn_rule(self) -> str:
        """How the ``nn`` maps are sampled: ``"nearest-exact"`` (format 4: pixel centres, aligned with
        the image) or ``"nearest"`` (format 3: torch ``nearest``)."""
        return NN_RULE[self.format_version]

    @property
    def recorded_digest(self) -> str | None:
        """The attribute digest recorded when the build finished (None before)."""
        return self.attrs.get("attrs_sha256")

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
        split_spec = store.spec.splits[split]
        self.ids: list[str] = split_spec.ids
        self.buckets, self.positions = split_spec.buckets, split_spec.positions
        self.group = self._records(lambda: store.root[split][target])
        self.sizes: np.ndarray = self.record("sizes", (len(self.ids), split_spec.ndim))
        self.denominators: np.ndarray = self.record("denominator", (len(self.ids),))
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

    def _records(self, read):
        """``read()``, with any failure (a damaged or missing chunk, a store rebuilt or deleted under
        the reader) as one line naming split and target."""
        try:
            return read()
        except SoftprepError:
            raise
        except Exception as error:  # noqa: BLE001 - zarr, codec and OS errors of every kind
            self.store.check_unchanged(f"{self.store.path}: {self.split}/{self.target}")  # a rebuild is no damage
            text = str(error).splitlines()[0][:120] if str(error) else ""
            raise SoftprepError(f"{self.store.path}: {self.split}/{self.target}: records cannot be read "
                                f"({type(error).__name__}: {text}); the store is damaged or being rebuilt: run "
                                "`softprep verify`, rebuild it if needed") from None

    def record(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A per-image record array, checked to hold ``shape`` (one row per image)."""
        values = self._records(lambda: self.group[name][:])
        if values.shape != shape:
            raise SoftprepError(f"{self.store.path}: {self.split}/{self.target}/{name} has shape {values.shape}, "
                                f"expected {shape}; the store is damaged: run `softprep verify`, rebuild it")
        return values

    def mass(self) -> np.ndarray:
        """``(N, C) float64`` soft-label weight per class."""
        return self.record("mass", (len(self.ids), self.store.spec.num_classes))

    def mass_numerator(self) -> np.ndarray:
        """``(N, C) int64`` exact class weights over :attr:`denominators` (zeros for float images)."""
        return self.record("mass_numerator", (len(self.ids), self.store.spec.num_classes))

    def affines(self) -> np.ndarray:
        """Volumes: ``(N, 4, 4) float64`` each output grid's voxel-to-world affine (mm)."""
        return self.record("affine", (len(self.ids), 4, 4))

    def spacings(self) -> np.ndarray:
        """Volumes: ``(N, 3) float64`` each output grid's voxel size in mm (from :meth:`affines`)."""
        return np.linalg.norm(self.affines()[:, :3, :3], axis=1)

    def nn_counts(self) -> np.ndarray:
        """``(N, C) int64`` pixels per class of the ``nn`` maps (:attr:`Store.nn_rule`)."""
        return self.record("nn_counts", (len(self.ids), self.store.spec.num_classes))

    def nn_floor_counts(self) -> np.ndarray:
        """``(N, C) int64`` pixels per class of torch ``nearest`` maps (format 3: its ``nn`` maps)."""
        name = "nn_floor_counts" if self.store.nn_rule != "nearest" else "nn_counts"
        return self.record(name, (len(self.ids), self.store.spec.num_classes))

    def nnunet_counts(self) -> np.ndarray | None:
        """Volumes: ``(N, C) int64`` voxels per class of nnU-Net's order-1-then-0.5 labels (not stored
        as maps; :func:`softprep.resample.threshold_labels`), None for images."""
        if self.store.spec.splits[self.split].ndim != 3:
            return None
        return self.record("nnunet_counts", (len(self.ids), self.store.spec.num_classes))

    def planes(self) -> np.ndarray:
        """``(N,) uint8`` soft-label slots used per image (read once: a complete store never changes them)."""
        if self._planes is None or not self.store.complete:
            self._planes = self.record("planes", (len(self.ids),))
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
        self.shape: tuple[int, ...] = tuple(int(v) for v in view.sizes[index])  # (h, w), a volume's (x, y, z)
        self.position = view.positions[index]
        self._done_checked = False

    @property
    def where(self) -> str:
        return f"{self.view.store.path}: {self.view.split}/{self.view.target}: image {self.id} (#{self.index})"

    def _read(self, name: str, planes: int | None = None, entries: int = 0) -> np.ndarray:
        """The ``name`` array of this image cropped to its size; a list array: its first ``planes``
        rows and ``entries`` entries."""
        crop = tuple(slice(0, side) for side in self.shape)
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
            values = array[(self.position, *crop)] if planes is None else array[self.position, :planes, :entries]
            self.view.store.check_unchanged(self.where)  # after the read: a rebuild during it is caught too
            return values
        except SoftprepError:
            self.view.store.check_unchanged(self.where)  # "not built" or "missing" of a rebuilt store: say rebuilt
            raise
        except Exception as error:  # noqa: BLE001 - zstd/crc32c failures, missing metadata: name the image
            self.view.store.check_unchanged(self.where)  # a store rebuilt during the read is no damage: say so
            text = str(error).splitlines()[0] if str(error) else ""
            raise SoftprepError(f"{self.where}: {name} cannot be read ({type(error).__name__}: {text[:120]}); "
                                "run `softprep verify` and rebuild damaged stores") from None

    @property
    def image(self) -> np.ndarray:
        """``(h, w, 3) uint8`` colour image (a volume: ``(x, y, z, C) float32`` intensities)."""
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
        return PackedSoftLabel(classes, mixed_classes, mixed_weights, self.view.store.spec.num_classes, denominator)

    def soft(self, dense: bool = True) -> np.ndarray | SoftLabel:
        """``(C, h, w) float32`` per-class weights (``dense=False``: the sparse SoftLabel)."""
        soft = self.soft_label()
        return soft.dense() if dense else soft

    def hard(self) -> np.ndarray:
        """``(h, w) uint8`` argmax of the soft label (255 where fully ignored)."""
        return self.soft_label().argmax()

    def nn(self) -> np.ndarray:
        """``(h, w) uint8`` hard labels (255 = ignore), sampled by :attr:`Store.nn_rule`: at pixel
        centres (``nearest-exact``, aligned with the image) in format 4."""
        return self._read("nn")

    def nn_floor(self) -> np.ndarray:
        """``(h, w) uint8`` hard labels by torch ``nearest`` (what most pipelines do; the paper's NN)."""
        if self.view.store.nn_rule == "nearest" or not self.view.bucket(self.index).attrs.get("nn_floor", True):
            return self._read("nn")  # format 3's nn map, or a target where both rules sample alike (1:1)
        return self._read("nn_floor")
