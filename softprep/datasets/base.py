"""What every dataset adapter provides, and the PNG/JPEG reading they share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from softprep.errors import SoftprepError

IGNORE_INDEX = 255


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

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SoftprepError(f"{self.root}: dataset root is not a folder; pass --root pointing at the {self.name} folder")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def splits(self) -> list[str]:
        """Splits found under the root, in canonical order."""
        raise NotImplementedError

    def samples(self, split: str) -> list[Sample]:
        """Pairs of a split, sorted by id; raises :class:`SoftprepError` on a missing pair."""
        raise NotImplementedError

    def read_image(self, sample: Sample) -> np.ndarray:
        """``(H, W, 3) uint8`` RGB."""
        return read_array(sample.image, mode="RGB")

    def read_label(self, sample: Sample) -> np.ndarray:
        """``(H, W) uint8`` train ids in ``[0, C)``, ``ignore_index`` for unlabelled pixels."""
        return self._label_to_train_ids(read_array(sample.label, mode=None), sample.label)

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


def header_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except FileNotFoundError:
        raise SoftprepError(f"{path}: file not found") from None
    except Exception as error:
        raise SoftprepError(f"{path}: cannot read image header ({error}); re-extract or remove the file") from None


def read_array(path: Path, mode: str | None) -> np.ndarray:
    """Decode an image file to an array (``mode``: PIL mode to convert to, or None to keep)."""
    try:
        with Image.open(path) as im:
            if mode is not None and im.mode != mode:
                im = im.convert(mode)
            return np.asarray(im)
    except FileNotFoundError:
        raise SoftprepError(f"{path}: file not found") from None
    except Exception as error:
        raise SoftprepError(f"{path}: cannot decode image ({error}); the file is damaged, re-extract it") from None
