"""CamVid in SegNet's 11-class layout: ``{train,val,test}/*.png`` with ``{split}annot/*.png``.

Label values 0..10 are the classes, 11 is unlabelled (ignored). ``--root`` may be the folder
holding ``train/`` and ``trainannot/``, or its parent holding ``CamVid/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from softprep.datasets.base import IGNORE_INDEX, StemPairedDataset, lookup_table

#: SegNet's classes and the colours its scripts draw them with, index = train id.
CLASSES = (
    ("sky", (128, 128, 128)), ("building", (128, 0, 0)), ("pole", (192, 192, 128)), ("road", (128, 64, 128)),
    ("pavement", (60, 40, 222)), ("tree", (128, 128, 0)), ("sign symbol", (192, 128, 128)), ("fence", (64, 64, 128)),
    ("car", (64, 0, 128)), ("pedestrian", (64, 64, 0)), ("bicyclist", (0, 128, 192)),
)
UNLABELLED = 11

_LUT = lookup_table({**{i: i for i in range(len(CLASSES))}, UNLABELLED: IGNORE_INDEX})


class CamVid(StemPairedDataset):
    name = "camvid"
    classes = tuple(name for name, _ in CLASSES)
    palette = tuple(colour for _, colour in CLASSES)
    default_splits = ("train", "val", "test")
    layout = "SegNet's CamVid layout SPLIT/*.png + SPLITannot/*.png"

    def __init__(self, root: str | Path):
        super().__init__(root)
        if not (self.root / "train").is_dir() and (self.root / "CamVid").is_dir():
            self.root = self.root / "CamVid"

    def folders(self, split: str) -> tuple[Path, Path]:
        return self.root / split, self.root / f"{split}annot"

    def _label_to_train_ids(self, raw: np.ndarray, path) -> np.ndarray:
        return self._map_ids(raw, _LUT, path)
