"""What every dataset adapter provides, and the PNG/JPEG reading they share."""

from __future__ import annotations

import contextlib
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from softprep.errors import SoftprepError
from softprep.location import is_remote, location
from softprep.softlabel import IGNORE_INDEX  # the adapters' ignore value (re-exported for them)


@dataclass(frozen=True)
class Sample:
    """One image/label pair on disk.

    Attributes:
        id: stable name of the pair, e.g. ``aachen_000000_000019``.
        image: path of the colour image.
        label: path of the label map.
    """

    id: str
    image: Path
    label: Path


class Dataset:
    """Base adapter. Subclasses set the class table and implement :meth:`samples` and
    :meth:`_label_to_train_ids`.

    Attributes:
        name: registry name.
        classes: ``C`` class names, index = train id.
        palette: ``C`` RGB colours.
        root: dataset root folder.
    """

    name: str = ""
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = IGNORE_INDEX
    #: Splits built when ``--splits`` is not given (those found under the root).
    default_splits: tuple[str, ...] = ("train", "val")
    #: The image arrays it reads: RGB ``uint8`` (a volume adapter: its modalities, ``float32``).
    image_channels: int = 3
    image_dtype: str = "uint8"

    def __init__(self, root: str | Path):
        self.root = location(root)
        if not self.root.is_dir():
            raise SoftprepError(f"{self.root}: dataset root is not a folder; pass --root pointing at the {self.name} folder")

    #: ``(256,) uint8`` train id -> the dataset's official label id, for datasets whose evaluators
    #: read label ids (Cityscapes: cityscapesScripts); None where train ids are what is evaluated.
    train_id_to_label_id = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def splits(self) -> list[str]:
        """Default splits found under the root, in canonical order."""
        return [s for s in self.default_splits if self.has_split(s)]

    def has_split(self, split: str) -> bool:
        """Whether ``split`` exists under the root."""
        raise NotImplementedError

    def samples(self, split: str) -> list[Sample]:
        """Pairs of a split, sorted by id; raises :class:`SoftprepError` on a missing pair."""
        raise NotImplementedError

    def read_image(self, sample: Sample) -> np.ndarray:
        """``(H, W, 3) uint8`` RGB."""
        return read_array(sample.image, mode="RGB")

    def read_label(self, sample: Sample) -> np.ndarray:
        """``(H, W) uint8`` train ids in ``[0, C)``, ``ignore_index`` for unlabelled pixels."""
        return self._label_to_train_ids(read_label_array(sample.label), sample.label)

    def read_pair(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """Colour image and train-id label, checked to have the same size."""
        image, label = self.read_image(sample), self.read_label(sample)
        if image.shape[:2] != label.shape:
            raise SoftprepError(
                f"{sample.label}: label is {label.shape[1]}x{label.shape[0]} but its image {sample.image.name} is "
                f"{image.shape[1]}x{image.shape[0]} (WxH); fix or remove the pair"
            )
        return image, label

    def size(self, sample: Sample) -> tuple[int, int]:
        """``(H, W)`` from the file headers, without decoding; checks image and label agree."""
        image, label = header_size(sample.image), header_size(sample.label)
        if image != label:
            raise SoftprepError(
                f"{sample.label}: label is {label[1]}x{label[0]} but its image {sample.image.name} is "
                f"{image[1]}x{image[0]} (WxH); fix or remove the pair"
            )
        return image

    def geometry(self, sample: Sample) -> tuple[tuple[float, ...], np.ndarray] | None:
        """A volume's ``(spacing in mm per axis, 4 x 4 voxel-to-world affine)`` from its header; None
        for 2-D images."""
        return None

    def _label_to_train_ids(self, raw: np.ndarray, path: Path) -> np.ndarray:
        raise NotImplementedError

    def _map_ids(self, raw: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
        """Map raw ids through ``lut`` (``(256,) int16``, -1 = not in the table)."""
        if raw.ndim != 2:
            raise SoftprepError(f"{path}: label map must be single-channel, got shape {raw.shape}")
        mapped = lut[raw]
        if (mapped < 0).any():
            bad = np.unique(raw[mapped < 0])
            raise SoftprepError(
                f"{path}: label ids {bad.tolist()} are not in the {self.name} label table; "
                f"is this a {self.name} label map?"
            )
        return mapped.astype(np.uint8)


@contextlib.contextmanager
def open_image(path: Path, header_only: bool = False):
    """A PIL image of a local or a remote file (:mod:`softprep.location`): a remote file is fetched
    in one read, or only its first 64 kB for ``header_only``."""
    if not is_remote(path):
        with Image.open(path) as im:
            yield im
        return
    if header_only:
        with path.open("rb", block_size=2**16) as file, Image.open(file) as im:
            yield im
        return
    with Image.open(io.BytesIO(path.read_bytes())) as im:
        yield im


def header_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header."""
    try:
        with open_image(path, header_only=True) as im:
            return im.size[1], im.size[0]
    except FileNotFoundError:
        raise SoftprepError(f"{path}: file not found") from None
    except Exception as error:
        raise SoftprepError(f"{path}: cannot read image header ({error}); re-extract or remove the file") from None


#: PIL modes a label map may have: 8-bit single channel (grey or palette indices), or 16-bit
#: integers whose values all fit 8 bits.
LABEL_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I")


def read_label_array(path: Path) -> np.ndarray:
    """``(H, W) uint8`` raw label values of a lossless single-channel label file.

    Refused with one line: JPEG (lossy: compression invents values at every boundary),
    multi-channel or 1-bit maps, and 16-bit maps with values above 255.
    """
    try:
        with open_image(path) as im:
            if im.format == "JPEG":
                raise SoftprepError(f"{path}: label map is a JPEG (lossy compression changes label values at "
                                    "every boundary); use the dataset's PNG labels")
            if im.mode not in LABEL_MODES:
                raise SoftprepError(f"{path}: label map has PIL mode {im.mode!r}; expected a single-channel 8-bit "
                                    "map of class values (mode L or P)")
            raw = np.asarray(im)
    except SoftprepError:
        raise
    except FileNotFoundError:
        raise SoftprepError(f"{path}: file not found") from None
    except Exception as error:
        raise SoftprepError(f"{path}: cannot decode label map ({error}); the file is damaged, re-extract it") from None
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise SoftprepError(f"{path}: 16-bit label map with values up to {int(raw.max())}; "
                                "at most 255 classes (values 0..255) are supported")
        raw = raw.astype(np.uint8)
    return raw


def read_array(path: Path, mode: str | None) -> np.ndarray:
    """Decode an image file to an array (``mode``: PIL mode to convert to, or None to keep)."""
    try:
        with open_image(path) as im:
            if mode is not None and im.mode != mode:
                im = im.convert(mode)
            return np.asarray(im)
    except FileNotFoundError:
        raise SoftprepError(f"{path}: file not found") from None
    except Exception as error:
        raise SoftprepError(f"{path}: cannot decode image ({error}); the file is damaged, re-extract it") from None


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def pair_by_stem(image_dir: Path, label_dir: Path, label_suffix: str = ".png",
                 image_suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Sample]:
    """Image/label pairs of two flat folders matched by file stem, sorted by id (the stem).

    Raises:
        SoftprepError: a folder is missing, an image has no label, or a label has no image
            (one line naming the first such file).
    """
    for folder, what in ((image_dir, "image"), (label_dir, "label")):
        if not folder.is_dir():
            raise SoftprepError(f"{folder}: {what} folder not found; check --root")
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in image_suffixes and p.is_file()}
    labels = {p.name[: -len(label_suffix)]: p for p in sorted(label_dir.iterdir())
              if p.name.endswith(label_suffix) and p.is_file()}
    unlabelled = sorted(set(images) - set(labels))
    lossy = [p for p in sorted(label_dir.iterdir()) if p.stem in unlabelled and p.suffix.lower() in (".jpg", ".jpeg")]
    if lossy:  # a mask saved as JPEG: say so, not "no label"
        raise SoftprepError(f"{lossy[0]}: label map is a JPEG (lossy compression changes label values at every "
                            f"boundary); save the masks as PNG ({len(lossy)} JPEG mask(s) in {label_dir})")
    if unlabelled:
        raise SoftprepError(f"{images[unlabelled[0]]}: no label {label_dir / (unlabelled[0] + label_suffix)} "
                            f"({len(unlabelled)} image(s) without a label); restore the labels or remove the images")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise SoftprepError(f"{labels[orphans[0]]}: no image {orphans[0]}.* in {image_dir} "
                            f"({len(orphans)} label(s) without an image); restore the images or remove the labels")
    return [Sample(stem, images[stem], labels[stem]) for stem in sorted(images)]


def lookup_table(table: dict[int, int]) -> np.ndarray:
    """``(256,) int16`` raw value -> train id (255 = ignore), -1 for values not in ``table``."""
    lut = np.full(256, -1, dtype=np.int16)
    for raw, train in table.items():
        lut[raw] = train
    return lut


class StemPairedDataset(Dataset):
    """An adapter whose splits are an image folder and a label folder paired by file stem.

    Subclasses implement :meth:`folders` and set ``layout`` (the expected layout, for errors).
    """

    layout: str = ""

    def folders(self, split: str) -> tuple[Path, Path]:
        """``(image folder, label folder)`` of ``split``."""
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        return all(folder.is_dir() for folder in self.folders(split))

    def samples(self, split: str) -> list[Sample]:
        if not self.has_split(split):
            missing = next(folder for folder in self.folders(split) if not folder.is_dir())
            raise SoftprepError(f"{missing}: split folder not found; expected {self.layout} under --root")
        return pair_by_stem(*self.folders(split))


def file_digest(path: Path) -> str:
    """A 64-bit fingerprint of a file's bytes (hex): what a store records of each label file, so a
    rebuild, an ``eval --root`` or a resume from other files is noticed (one read of the file)."""
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()
    except FileNotFoundError:
        raise SoftprepError(f"{path}: file not found") from None
    except OSError as error:
        raise SoftprepError(f"{path}: cannot read ({error.strerror or error}); check the file's permissions") from None


def label_digests(samples: list[Sample], threads: int = 8) -> list[str]:
    """:func:`file_digest` of each sample's label file, in order (files read by a few threads)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda sample: file_digest(sample.label), samples))


def stored_sample(dataset: "Dataset", split_spec, i: int) -> Sample:
    """The :class:`Sample` of image ``i`` of a planned split (a store's ``SplitSpec``: ``ids``,
    ``images``, ``labels``): paths recorded in a store, opened only inside ``dataset.root`` (a path
    that climbs out of it is refused). What every reader of the original files (build, verify,
    show, eval) uses."""
    paths = []
    for relative in (split_spec.images[i], split_spec.labels[i]):
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise SoftprepError(f"{dataset.root}: the store records the path {relative!r}, outside the dataset root; "
                                "refusing to open it (the store's attributes are damaged or crafted)")
        paths.append(dataset.root / relative)
    return Sample(split_spec.ids[i], *paths)
