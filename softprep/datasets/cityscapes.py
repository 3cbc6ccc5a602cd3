"""Cityscapes: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
``gtFine/{split}/{city}/*_gtFine_labelIds.png`` (or ``*_labelTrainIds.png`` when present).

Only ``train`` and ``val`` are built by default: ``test`` has no labels and ``train_extra`` only
coarse ones; name them with ``--splits`` to build them anyway.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from softprep.datasets.base import IGNORE_INDEX, Dataset, Sample, lookup_table
from softprep.errors import SoftprepError

#: The 19 evaluation classes, index = train id, with the official colours.
CLASSES = (
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)), ("fence", (190, 153, 153)), ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)), ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)), ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)), ("car", (0, 0, 142)), ("truck", (0, 0, 70)), ("bus", (0, 60, 100)),
    ("train", (0, 80, 100)), ("motorcycle", (0, 0, 230)), ("bicycle", (119, 11, 32)),
)

#: Official label id (0..33) -> train id (IGNORE_INDEX: not evaluated), from cityscapesScripts' labels.py.
LABEL_ID_TO_TRAIN_ID = {
    **{label_id: IGNORE_INDEX for label_id in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)},
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}

#: Ids for writing Cityscapes-layout label maps (the demo): class name -> label id.
NAME_TO_LABEL_ID = {
    "unlabeled": 0, "ego vehicle": 1, "static": 4, "ground": 6, "road": 7, "sidewalk": 8,
    "building": 11, "wall": 12, "fence": 13, "pole": 17, "traffic light": 19, "traffic sign": 20,
    "vegetation": 21, "terrain": 22, "sky": 23, "person": 24, "rider": 25, "car": 26,
    "truck": 27, "bus": 28, "train": 31, "motorcycle": 32, "bicycle": 33,
}

IMAGE_SUFFIX = "_leftImg8bit.png"


_LABEL_ID_LUT = lookup_table(LABEL_ID_TO_TRAIN_ID)
def _train_id_to_label_id() -> np.ndarray:
    """``(256,) uint8``: each train id's official label id (the first one mapping to it); 0 elsewhere."""
    table = np.zeros(256, dtype=np.uint8)
    for label_id, train_id in sorted(LABEL_ID_TO_TRAIN_ID.items(), reverse=True):
        if train_id != IGNORE_INDEX:
            table[train_id] = label_id
    return table


_TRAIN_ID_LUT = lookup_table({**{i: i for i in range(len(CLASSES))}, IGNORE_INDEX: IGNORE_INDEX})


class Cityscapes(Dataset):
    name = "cityscapes"
    classes = tuple(name for name, _ in CLASSES)
    palette = tuple(colour for _, colour in CLASSES)
    train_id_to_label_id = _train_id_to_label_id()

    def has_split(self, split: str) -> bool:
        return (self.root / "leftImg8bit" / split).is_dir()

    def samples(self, split: str) -> list[Sample]:
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise SoftprepError(f"{image_dir}: split folder not found; expected the official layout leftImg8bit/{split}/CITY/*{IMAGE_SUFFIX}")
        samples = []
        for image in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
            sample_id = image.name[: -len(IMAGE_SUFFIX)]
            samples.append(Sample(sample_id, image, self._label_path(split, image.parent.name, sample_id)))
        ids = {s.id for s in samples}
        suffix = "_gtFine_labelIds.png"
        for label in sorted((self.root / "gtFine" / split).glob(f"*/*{suffix}")):
            if label.name[: -len(suffix)] not in ids:
                raise SoftprepError(f"{label}: no image {image_dir / label.parent.name / (label.name[: -len(suffix)] + IMAGE_SUFFIX)}; "
                                    "restore the image or remove the label")
        return samples

    def _label_path(self, split: str, city: str, sample_id: str) -> Path:
        folder = self.root / "gtFine" / split / city
        for suffix in ("_gtFine_labelTrainIds.png", "_gtFine_labelIds.png"):
            if (folder / (sample_id + suffix)).is_file():
                return folder / (sample_id + suffix)
        raise SoftprepError(f"{folder / (sample_id + '_gtFine_labelIds.png')}: label file missing for image {sample_id}{IMAGE_SUFFIX}; restore it or remove the image")

    def _label_to_train_ids(self, raw: np.ndarray, path: Path) -> np.ndarray:
        lut = _TRAIN_ID_LUT if path.name.endswith("_labelTrainIds.png") else _LABEL_ID_LUT
        return self._map_ids(raw, lut, path)
