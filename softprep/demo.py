"""A small, deterministic, Cityscapes-layout street-scene dataset for demos and tests.

Scenes are drawn back to front: sky, buildings and walls, trees, road, sidewalks, terrain,
fences, poles with signs and traffic lights, cars, trucks, buses, people, riders and bicycles,
and the ego-vehicle bonnet. Labels are written in the official *label id* space (road = 7,
pole = 17, ...), so the Cityscapes adapter's id -> train-id mapping is exercised. Colours
correlate with the class (a class colour, shading and noise), as in real photographs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from softprep.datasets.cityscapes import NAME_TO_LABEL_ID as ID

DEFAULT_SIZE = (512, 1024)
CITIES = {"train": "demotown", "val": "demoville"}

#: Photograph-like base colour of each label id (not the class palette).
BASE_COLOUR = {
    ID["unlabeled"]: (20, 20, 20), ID["ego vehicle"]: (30, 30, 35), ID["static"]: (90, 80, 70),
    ID["ground"]: (110, 100, 90), ID["road"]: (85, 85, 90), ID["sidewalk"]: (150, 140, 135),
    ID["building"]: (120, 105, 95), ID["wall"]: (160, 150, 130), ID["fence"]: (140, 120, 100),
    ID["pole"]: (60, 60, 65), ID["traffic light"]: (30, 40, 30), ID["traffic sign"]: (200, 200, 40),
    ID["vegetation"]: (60, 110, 40), ID["terrain"]: (120, 150, 70), ID["sky"]: (150, 190, 235),
    ID["person"]: (150, 60, 70), ID["rider"]: (180, 50, 40), ID["car"]: (40, 50, 120),
    ID["truck"]: (200, 200, 200), ID["bus"]: (210, 160, 30), ID["train"]: (100, 120, 130),
    ID["motorcycle"]: (20, 20, 120), ID["bicycle"]: (110, 20, 30),
}


def make_demo(out: str | Path, train: int = 20, val: int = 5, size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0) -> Path:
    """Write the demo dataset under ``out`` and return ``out``.

    Args:
        train, val: number of images per split.
        size: ``(H, W)`` of every image.
        seed: the same seed writes byte-identical files.
    """
    out = Path(out)
    index = 0
    for split, count in (("train", train), ("val", val)):
        city = CITIES[split]
        image_dir = out / "leftImg8bit" / split / city
        label_dir = out / "gtFine" / split / city
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([seed, index])
            index += 1
            labels = draw_scene(size, rng)
            image = colourise(labels, rng)
            stem = f"{city}_{i:06d}_000019"
            Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png", compress_level=3)
            Image.fromarray(labels).save(label_dir / f"{stem}_gtFine_labelIds.png", compress_level=3)
    return out


def draw_scene(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``(H, W) uint8`` label ids of one random street scene."""
    h, w = size
    u = w / 1024  # size unit: 1 at the default width
    canvas = np.full(size, ID["sky"], np.uint8)
    horizon = int(h * rng.uniform(0.42, 0.5))
    vanish_x = w * rng.uniform(0.4, 0.6)

    _buildings(canvas, horizon, u, rng)
    for _ in range(rng.integers(2, 6)):  # tree crowns over buildings and sky
        cx, cy = rng.uniform(0, w), horizon - rng.uniform(0.05, 0.25) * h
        _ellipse(canvas, cy, cx, rng.uniform(30, 80) * u, rng.uniform(40, 110) * u, ID["vegetation"])
        _rect(canvas, cy, horizon + 10 * u, cx - 3 * u, cx + 3 * u, ID["vegetation"])

    # Road: a trapezoid from the vanishing point to the bottom; sidewalks flank it.
    rows = np.arange(horizon, h)
    depth = (rows - horizon + 1) / (h - horizon)
    half_road = depth * w * rng.uniform(0.55, 0.75)
    half_walk = half_road + depth * w * rng.uniform(0.12, 0.25)
    cols = np.arange(w)[None, :]
    left, right = (vanish_x - half_road)[:, None], (vanish_x + half_road)[:, None]
    walk_l, walk_r = (vanish_x - half_walk)[:, None], (vanish_x + half_walk)[:, None]
    band = canvas[horizon:]
    band[(cols >= walk_l) & (cols < walk_r)] = ID["sidewalk"]
    band[(cols >= left) & (cols < right)] = ID["road"]
    band[(cols < walk_l) | (cols >= walk_r)] = ID["terrain"]
    parking = rng.uniform() < 0.3  # some ignored classes, as in real annotations
    if parking:
        band[(cols >= left) & (cols < left + 25 * u)] = ID["ground"]

    _fence(canvas, horizon, u, rng)
    for _ in range(rng.integers(3, 8)):
        _pole(canvas, horizon, vanish_x, u, rng)
    for _ in range(rng.integers(1, 6)):
        _vehicle(canvas, horizon, vanish_x, u, rng)
    for _ in range(rng.integers(2, 9)):
        _person(canvas, horizon, u, rng)
    for _ in range(rng.integers(0, 4)):
        _bicycle(canvas, horizon, u, rng)

    bonnet = int(h * rng.uniform(0.03, 0.08))
    canvas[h - bonnet:] = ID["ego vehicle"]
    for _ in range(rng.integers(0, 4)):  # unlabelled specks
        _ellipse(canvas, rng.uniform(0, h), rng.uniform(0, w), 6 * u, 9 * u, ID["unlabeled"])
    return canvas


def colourise(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(H, W, 3) uint8`` photograph-like colours correlated with ``labels`` (label ids)."""
    h, w = labels.shape
    lut = np.zeros((256, 3), np.float32)
    for label_id, colour in BASE_COLOUR.items():
        lut[label_id] = colour
    tint = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    image = lut[labels] * tint
    shade = np.linspace(1.1, 0.8, h, dtype=np.float32)[:, None, None]  # light from above
    texture = rng.normal(0, 9, (h // 4 + 1, w // 4 + 1, 1)).astype(np.float32)
    texture = np.repeat(np.repeat(texture, 4, 0), 4, 1)[:h, :w]
    noise = rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    return np.clip(image * shade + texture + noise, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------- scene pieces


def _rect(canvas, top, bottom, left, right, label_id):
    h, w = canvas.shape
    t, b = max(0, int(top)), min(h, int(np.ceil(bottom)))
    lft, rgt = max(0, int(left)), min(w, int(np.ceil(right)))
    if t < b and lft < rgt:
        canvas[t:b, lft:rgt] = label_id


def _ellipse(canvas, cy, cx, ry, rx, label_id):
    h, w = canvas.shape
    t, b = max(0, int(cy - ry)), min(h, int(cy + ry) + 1)
    lft, rgt = max(0, int(cx - rx)), min(w, int(cx + rx) + 1)
    if t >= b or lft >= rgt:
        return
    yy, xx = np.ogrid[t:b, lft:rgt]
    inside = ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1
    canvas[t:b, lft:rgt][inside] = label_id


def _buildings(canvas, horizon, u, rng):
    h, w = canvas.shape
    x = -rng.uniform(0, 40) * u
    while x < w:
        width = rng.uniform(0.06, 0.22) * w
        top = rng.uniform(0.05, 0.8) * horizon
        _rect(canvas, top, horizon + 5 * u, x, x + width, ID["building"])
        if rng.uniform() < 0.25:  # a low wall in front
            _rect(canvas, horizon - rng.uniform(15, 40) * u, horizon + 5 * u, x, x + width * 0.6, ID["wall"])
        if rng.uniform() < 0.2:  # street furniture
            _rect(canvas, horizon - 20 * u, horizon + 5 * u, x + 10 * u, x + 25 * u, ID["static"])
        x += width


def _fence(canvas, horizon, u, rng):
    h, w = canvas.shape
    left = rng.uniform(0, 0.6) * w
    right = left + rng.uniform(0.15, 0.35) * w
    top, bottom = horizon - rng.uniform(25, 45) * u, horizon + rng.uniform(5, 20) * u
    rail = max(1.0, 2 * u)
    for y in (top, (top + bottom) / 2, bottom - rail):
        _rect(canvas, y, y + rail, left, right, ID["fence"])
    for x in np.arange(left, right, rng.uniform(8, 16) * u):
        _rect(canvas, top, bottom, x, x + max(1.0, 1.5 * u), ID["fence"])


def _pole(canvas, horizon, vanish_x, u, rng):
    h, w = canvas.shape
    side = rng.choice([-1, 1])
    x = vanish_x + side * rng.uniform(0.25, 0.5) * w
    base = horizon + rng.uniform(0.1, 0.35) * (h - horizon)
    height = rng.uniform(0.3, 0.7) * base
    width = max(1.0, rng.choice([1.0, 2.0, 4.0]) * u)  # some poles 1-2 px wide: vanish under NN
    _rect(canvas, base - height, base, x, x + width, ID["pole"])
    kind = rng.uniform()
    if kind < 0.4:
        size = rng.uniform(8, 20) * u
        _rect(canvas, base - height, base - height + size, x - size / 2, x + size / 2, ID["traffic sign"])
    elif kind < 0.7:
        _rect(canvas, base - height, base - height + 22 * u, x - 4 * u, x + 5 * u, ID["traffic light"])


def _vehicle(canvas, horizon, vanish_x, u, rng):
    h, w = canvas.shape
    depth = rng.uniform(0.1, 0.8)
    bottom = horizon + depth * (h - horizon)
    scale = 0.3 + depth
    kind = rng.choice(["car", "car", "car", "truck", "bus", "train"], p=[0.3, 0.3, 0.2, 0.08, 0.08, 0.04])
    width = {"car": 130, "truck": 170, "bus": 220, "train": 300}[kind] * u * scale
    height = {"car": 70, "truck": 120, "bus": 130, "train": 130}[kind] * u * scale
    x = vanish_x + rng.uniform(-0.45, 0.45) * w * depth - width / 2
    _rect(canvas, bottom - height * 0.6, bottom, x, x + width, ID[kind])
    _rect(canvas, bottom - height, bottom - height * 0.55, x + width * 0.15, x + width * 0.85, ID[kind])


def _person(canvas, horizon, u, rng):
    h, w = canvas.shape
    depth = rng.uniform(0.05, 0.6)
    foot = horizon + depth * (h - horizon)
    tall = (25 + 90 * depth) * u
    x = rng.uniform(0, w)
    label_id = ID["rider"] if rng.uniform() < 0.2 else ID["person"]
    _ellipse(canvas, foot - tall * 0.45, x, tall * 0.35, tall * 0.12, label_id)
    _ellipse(canvas, foot - tall * 0.88, x, tall * 0.1, tall * 0.08, label_id)
    _rect(canvas, foot - tall * 0.2, foot, x - tall * 0.07, x - tall * 0.02, label_id)
    _rect(canvas, foot - tall * 0.2, foot, x + tall * 0.02, x + tall * 0.07, label_id)


def _bicycle(canvas, horizon, u, rng):
    h, w = canvas.shape
    depth = rng.uniform(0.1, 0.6)
    ground = horizon + depth * (h - horizon)
    r = (8 + 20 * depth) * u
    x = rng.uniform(0, w)
    label_id = ID["motorcycle"] if rng.uniform() < 0.3 else ID["bicycle"]
    for cx in (x - 1.3 * r, x + 1.3 * r):  # wheels: thin rings
        _ellipse(canvas, ground - r, cx, r, r, label_id)
        _ellipse(canvas, ground - r, cx, r - max(1.0, 2 * u), r - max(1.0, 2 * u), ID["road"])
    _rect(canvas, ground - r - max(1.0, 2 * u), ground - r, x - 1.3 * r, x + 1.3 * r, label_id)
