"""Mapillary Vistas: ``{training,validation}/images/*.jpg`` with ``.../v1.2/labels/*.png``
(``mapillary``: 65 classes) or ``.../v2.0/labels/*.png`` (``mapillary-v2``: 123 classes).

Labels are palette PNGs whose indices are the label ids; the last id (``Unlabeled``) is ignored.
When the dataset's own ``config_v1.2.json`` / ``config_v2.0.json`` is in the root, the class
table (names, colours, which ids are evaluated) is read from it; otherwise the built-in copy of
the official table below is used. Images range from 1024x768 to about 6000x4000 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from softprep.datasets.base import IGNORE_INDEX, StemPairedDataset, lookup_table
from softprep.errors import SoftprepError

SPLIT_FOLDERS = {"train": "training", "val": "validation"}

V12_NAMES = (
    "Bird", "Ground Animal", "Curb", "Fence", "Guard Rail", "Barrier", "Wall", "Bike Lane", "Crosswalk - Plain",
    "Curb Cut", "Parking", "Pedestrian Area", "Rail Track", "Road", "Service Lane", "Sidewalk", "Bridge", "Building",
    "Tunnel", "Person", "Bicyclist", "Motorcyclist", "Other Rider", "Lane Marking - Crosswalk",
    "Lane Marking - General", "Mountain", "Sand", "Sky", "Snow", "Terrain", "Vegetation", "Water", "Banner", "Bench",
    "Bike Rack", "Billboard", "Catch Basin", "CCTV Camera", "Fire Hydrant", "Junction Box", "Mailbox", "Manhole",
    "Phone Booth", "Pothole", "Street Light", "Pole", "Traffic Sign Frame", "Utility Pole", "Traffic Light",
    "Traffic Sign (Back)", "Traffic Sign (Front)", "Trash Can", "Bicycle", "Boat", "Bus", "Car", "Caravan",
    "Motorcycle", "On Rails", "Other Vehicle", "Trailer", "Truck", "Wheeled Slow", "Car Mount", "Ego Vehicle",
    "Unlabeled",
)
V12_COLOURS = (
    165, 42, 42, 0, 192, 0, 196, 196, 196, 190, 153, 153, 180, 165, 180, 90, 120, 150, 102, 102, 156, 128, 64, 255,
    140, 140, 200, 170, 170, 170, 250, 170, 160, 96, 96, 96, 230, 150, 140, 128, 64, 128, 110, 110, 110, 244, 35, 232,
    150, 100, 100, 70, 70, 70, 150, 120, 90, 220, 20, 60, 255, 0, 0, 255, 0, 100, 255, 0, 200, 200, 128, 128,
    255, 255, 255, 64, 170, 64, 230, 160, 50, 70, 130, 180, 190, 255, 255, 152, 251, 152, 107, 142, 35, 0, 170, 30,
    255, 255, 128, 250, 0, 30, 100, 140, 180, 220, 220, 220, 220, 128, 128, 222, 40, 40, 100, 170, 30, 40, 40, 40,
    33, 33, 33, 100, 128, 160, 142, 0, 0, 70, 100, 150, 210, 170, 100, 153, 153, 153, 128, 128, 128, 0, 0, 80,
    250, 170, 30, 192, 192, 192, 220, 220, 0, 140, 140, 20, 119, 11, 32, 150, 0, 255, 0, 60, 100, 0, 0, 142, 0, 0, 90,
    0, 0, 230, 0, 80, 100, 128, 64, 64, 0, 0, 110, 0, 0, 70, 0, 0, 192, 32, 32, 32, 120, 10, 10, 0, 0, 0,
)

V20_NAMES = (
    "Bird", "Ground Animal", "Ambiguous Barrier", "Concrete Block", "Curb", "Fence", "Guard Rail", "Barrier",
    "Road Median", "Road Side", "Lane Separator", "Temporary Barrier", "Wall", "Bike Lane", "Crosswalk - Plain",
    "Curb Cut", "Driveway", "Parking", "Parking Aisle", "Pedestrian Area", "Rail Track", "Road", "Road Shoulder",
    "Service Lane", "Sidewalk", "Traffic Island", "Bridge", "Building", "Garage", "Tunnel", "Person", "Person Group",
    "Bicyclist", "Motorcyclist", "Other Rider", "Lane Marking - Dashed Line", "Lane Marking - Straight Line",
    "Lane Marking - Zigzag Line", "Lane Marking - Ambiguous", "Lane Marking - Arrow (Left)",
    "Lane Marking - Arrow (Other)", "Lane Marking - Arrow (Right)", "Lane Marking - Arrow (Split Left or Straight)",
    "Lane Marking - Arrow (Split Right or Straight)", "Lane Marking - Arrow (Straight)", "Lane Marking - Crosswalk",
    "Lane Marking - Give Way (Row)", "Lane Marking - Give Way (Single)", "Lane Marking - Hatched (Chevron)",
    "Lane Marking - Hatched (Diagonal)", "Lane Marking - Other", "Lane Marking - Stop Line",
    "Lane Marking - Symbol (Bicycle)", "Lane Marking - Symbol (Other)", "Lane Marking - Text",
    "Lane Marking (only) - Dashed Line", "Lane Marking (only) - Crosswalk", "Lane Marking (only) - Other",
    "Lane Marking (only) - Test", "Mountain", "Sand", "Sky", "Snow", "Terrain", "Vegetation", "Water", "Banner",
    "Bench", "Bike Rack", "Catch Basin", "CCTV Camera", "Fire Hydrant", "Junction Box", "Mailbox", "Manhole",
    "Parking Meter", "Phone Booth", "Pothole", "Signage - Advertisement", "Signage - Ambiguous", "Signage - Back",
    "Signage - Information", "Signage - Other", "Signage - Store", "Street Light", "Pole", "Pole Group",
    "Traffic Sign Frame", "Utility Pole", "Traffic Cone", "Traffic Light - General (Single)",
    "Traffic Light - Pedestrians", "Traffic Light - General (Upright)", "Traffic Light - General (Horizontal)",
    "Traffic Light - Cyclists", "Traffic Light - Other", "Traffic Sign - Ambiguous", "Traffic Sign (Back)",
    "Traffic Sign - Direction (Back)", "Traffic Sign - Direction (Front)", "Traffic Sign (Front)",
    "Traffic Sign - Parking", "Traffic Sign - Temporary (Back)", "Traffic Sign - Temporary (Front)", "Trash Can",
    "Bicycle", "Boat", "Bus", "Car", "Caravan", "Motorcycle", "On Rails", "Other Vehicle", "Trailer", "Truck",
    "Vehicle Group", "Wheeled Slow", "Water Valve", "Car Mount", "Dynamic", "Ego Vehicle", "Ground", "Static",
    "Unlabeled",
)
V20_COLOURS = (
    165, 42, 42, 0, 192, 0, 250, 170, 31, 250, 170, 32, 196, 196, 196, 190, 153, 153, 180, 165, 180, 90, 120, 150,
    250, 170, 33, 250, 170, 34, 128, 128, 128, 250, 170, 35, 102, 102, 156, 128, 64, 255, 140, 140, 200,
    170, 170, 170, 250, 170, 36, 250, 170, 160, 250, 170, 37, 96, 96, 96, 230, 150, 140, 128, 64, 128,
    110, 110, 110, 110, 110, 110, 244, 35, 232, 128, 196, 128, 150, 100, 100, 70, 70, 70, 150, 150, 150,
    150, 120, 90, 220, 20, 60, 220, 20, 60, 255, 0, 0, 255, 0, 100, 255, 0, 200, 255, 255, 255, 255, 255, 255,
    250, 170, 29, 250, 170, 28, 250, 170, 26, 250, 170, 25, 250, 170, 24, 250, 170, 22, 250, 170, 21, 250, 170, 20,
    255, 255, 255, 250, 170, 19, 250, 170, 18, 250, 170, 12, 250, 170, 11, 255, 255, 255, 255, 255, 255,
    250, 170, 16, 250, 170, 15, 250, 170, 15, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    64, 170, 64, 230, 160, 50, 70, 130, 180, 190, 255, 255, 152, 251, 152, 107, 142, 35, 0, 170, 30, 255, 255, 128,
    250, 0, 30, 100, 140, 180, 220, 128, 128, 222, 40, 40, 100, 170, 30, 40, 40, 40, 33, 33, 33, 100, 128, 160,
    20, 20, 255, 142, 0, 0, 70, 100, 150, 250, 171, 30, 250, 172, 30, 250, 173, 30, 250, 174, 30, 250, 175, 30,
    250, 176, 30, 210, 170, 100, 153, 153, 153, 153, 153, 153, 128, 128, 128, 0, 0, 80, 210, 60, 60, 250, 170, 30,
    250, 170, 30, 250, 170, 30, 250, 170, 30, 250, 170, 30, 250, 170, 30, 192, 192, 192, 192, 192, 192,
    192, 192, 192, 220, 220, 0, 220, 220, 0, 0, 0, 196, 192, 192, 192, 220, 220, 0, 140, 140, 20, 119, 11, 32,
    150, 0, 255, 0, 60, 100, 0, 0, 142, 0, 0, 90, 0, 0, 230, 0, 80, 100, 128, 64, 64, 0, 0, 110, 0, 0, 70, 0, 0, 142,
    0, 0, 192, 170, 170, 170, 32, 32, 32, 111, 74, 0, 120, 10, 10, 81, 0, 81, 111, 111, 0, 0, 0, 0,
)


def _table(names, colours) -> list[dict]:
    """Official-style label list: ``{"readable", "color", "evaluate"}`` per label id."""
    rgb = [list(colours[i:i + 3]) for i in range(0, len(colours), 3)]
    assert len(rgb) == len(names)
    return [{"readable": n, "color": c, "evaluate": n != "Unlabeled"} for n, c in zip(names, rgb)]


BUILTIN = {"v1.2": _table(V12_NAMES, V12_COLOURS), "v2.0": _table(V20_NAMES, V20_COLOURS)}


def load_labels(root: Path, version: str) -> list[dict]:
    """The label list of ``config_{version}.json`` in ``root`` when present, else the built-in one."""
    config = root / f"config_{version}.json"
    if not config.is_file():
        return BUILTIN[version]
    try:
        labels = json.loads(config.read_text())["labels"]
        return [{"readable": label.get("readable", label.get("name")), "color": list(label["color"]),
                 "evaluate": bool(label.get("evaluate", True))} for label in labels]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SoftprepError(f"{config}: not a Mapillary Vistas config ({type(error).__name__}: {error}); "
                            "restore it or remove it to use the built-in class table") from None


class MapillaryVistas(StemPairedDataset):
    name = "mapillary"
    version = "v1.2"
    layout = "the Vistas layout {training,validation}/images/*.jpg + .../VERSION/labels/*.png"

    def __init__(self, root: str | Path):
        super().__init__(root)
        labels = load_labels(self.root, self.version)
        if len(labels) > 256:
            raise SoftprepError(f"{self.root}: config_{self.version}.json lists {len(labels)} labels; at most 256 are supported")
        evaluated = [i for i, label in enumerate(labels) if label["evaluate"]]
        self.classes = tuple(labels[i]["readable"] for i in evaluated)
        self.palette = tuple(tuple(labels[i]["color"]) for i in evaluated)
        table = {raw: IGNORE_INDEX for raw in range(len(labels))}
        table.update({raw: train for train, raw in enumerate(evaluated)})
        self._lut = lookup_table(table)

    def folders(self, split: str) -> tuple[Path, Path]:
        folder = self.root / SPLIT_FOLDERS.get(split, split)
        return folder / "images", folder / self.version / "labels"

    def _label_to_train_ids(self, raw: np.ndarray, path) -> np.ndarray:
        return self._map_ids(raw, self._lut, path)


class MapillaryVistasV2(MapillaryVistas):
    name = "mapillary-v2"
    version = "v2.0"
