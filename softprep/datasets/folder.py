"""Your own dataset: ``images/`` and ``masks/`` paired by file stem, and a class table.

Layout under ``--root``::

    classes.json            the class table (below)
    images/[SPLIT/]NAME.jpg|.png
    masks/[SPLIT/]NAME.png  single-channel 8-bit raw values

With split subfolders (``images/train``, ``images/val``, ...) each is a split; without, all
pairs form the split ``train``. ``classes.json``::

    {"classes": [{"name": "road", "color": [128, 64, 128], "values": [1, 7]},
                 {"name": "car",  "color": [0, 0, 142], "values": [26]}],
     "ignore": [0, 255]}

``values``: the raw mask values of that class (default: the class's position in the list).
``ignore``: raw values that are unlabelled (default ``[255]``). A mask value in neither is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from softprep.datasets.base import IGNORE_INDEX, StemPairedDataset, lookup_table
from softprep.errors import SoftprepError
from softprep.softlabel import MAX_CLASSES

CLASS_TABLE = "classes.json"
FLAT_SPLIT = "train"


def load_class_table(path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...], dict[int, int]]:
    """Class names, colours and the raw value -> train id table (255 = ignore) of a ``classes.json``."""
    if not path.is_file():
        raise SoftprepError(f"{path}: class table not found; write {CLASS_TABLE} as the README's 'Your own dataset' shows")
    try:
        table = json.loads(path.read_text())
        entries = table["classes"]
        names = tuple(str(entry["name"]) for entry in entries)
        colours = tuple(tuple(int(v) for v in entry.get("color", (0, 0, 0))) for entry in entries)
        mapping = {int(raw): IGNORE_INDEX for raw in table.get("ignore", [IGNORE_INDEX])}
        for train_id, entry in enumerate(entries):
            for raw in entry.get("values", [train_id]):
                if int(raw) in mapping:
                    raise ValueError(f"raw value {raw} is listed twice")
                mapping[int(raw)] = train_id
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SoftprepError(f"{path}: bad class table ({type(error).__name__}: {error})") from None
    if not names or len(names) > MAX_CLASSES:
        raise SoftprepError(f"{path}: needs 1 to {MAX_CLASSES} classes, found {len(names)}")
    if any(not 0 <= raw <= 255 for raw in mapping) or any(len(c) != 3 for c in colours):
        raise SoftprepError(f"{path}: raw values must be 0..255 and colours [r, g, b]")
    return names, colours, mapping


def _is_split_folder(path: Path) -> bool:
    """A sub-folder of ``images/`` that is a split: not hidden, and not a store (or a store being
    created or deleted) that the user wrote inside the dataset."""
    return path.is_dir() and not path.name.startswith(".") and ".zarr" not in path.name


class Folder(StemPairedDataset):
    name = "folder"
    layout = "images/[SPLIT/] and masks/[SPLIT/]"

    def __init__(self, root: str | Path):
        super().__init__(root)
        self.classes, self.palette, mapping = load_class_table(self.root / CLASS_TABLE)
        self._lut = lookup_table(mapping)

    @property
    def _flat(self) -> bool:
        images = self.root / "images"
        return images.is_dir() and not any(_is_split_folder(p) for p in images.iterdir())

    def splits(self) -> list[str]:
        if self._flat:
            return [FLAT_SPLIT]
        images = self.root / "images"
        return sorted(p.name for p in images.iterdir() if _is_split_folder(p)) if images.is_dir() else []

    def folders(self, split: str) -> tuple[Path, Path]:
        if self._flat and split == FLAT_SPLIT:
            return self.root / "images", self.root / "masks"
        return self.root / "images" / split, self.root / "masks" / split

    def _label_to_train_ids(self, raw: np.ndarray, path) -> np.ndarray:
        return self._map_ids(raw, self._lut, path)
