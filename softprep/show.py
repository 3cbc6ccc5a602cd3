"""``softprep show``: one sample at one target, as the paper's Fig. 3/4 draw it.

Panels, each enlarged (nearest, so the low-resolution pixels stay visible) to the full-resolution
size capped at ``MAX_WIDTH``: the colour image at the target, the full-resolution labels (when the
dataset root is given), the NN labels, the soft label drawn as a palette colour mix
(``sum_c w_c * palette_c``; ignore mass is black), and one weight map per chosen class (the
class colour scaled by its weight). Plain PIL, no matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from softprep.build import stored_sample
from softprep.datasets import get_dataset
from softprep.errors import SoftprepError
from softprep.store import Store

MAX_WIDTH = 1024
CAPTION = 24
COLUMNS = 2
DEFAULT_CLASS_PANELS = 2


def colourise(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``(H, W) uint8`` train ids -> ``(H, W, 3) uint8``; ignore/empty (any id >= C) is black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    return table[label]


def soft_colour_mix(dense: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``(C, H, W) float32`` soft label -> ``(H, W, 3) uint8`` palette mix (ignore mass is black)."""
    mix = np.tensordot(dense, palette.astype(np.float32), axes=(0, 0))
    return np.clip(np.rint(mix), 0, 255).astype(np.uint8)


def weight_map(dense: np.ndarray, c: int, colour) -> np.ndarray:
    """``(H, W, 3) uint8``: class ``c``'s weight in [0, 1] times its colour, on black."""
    return np.clip(np.rint(dense[c][..., None] * np.asarray(colour, np.float32)), 0, 255).astype(np.uint8)


def most_mixed_classes(dense: np.ndarray, count: int) -> list[int]:
    """The ``count`` classes with the largest share of their mass on fractional (0 < w < 1) pixels:
    thin classes (poles, fences), where a hard label loses the most."""
    fractional = (((dense > 0) & (dense < 1)) * dense).sum(axis=(1, 2))
    share = fractional / np.maximum(dense.sum(axis=(1, 2)), 1e-12)
    order = np.argsort(-share, kind="stable")
    return [int(c) for c in order[:count] if fractional[c] > 0]


def display_size(full_size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` every panel is drawn at: the full-resolution size, at most ``MAX_WIDTH`` wide."""
    h, w = full_size
    if w <= MAX_WIDTH:
        return h, w
    return max(1, round(h * MAX_WIDTH / w)), MAX_WIDTH


def render_sample(store: Store, image_id: str, target, split: str | None = None,
                  classes: list[str] | None = None, root: str | Path | None = None) -> Image.Image:
    """The Fig. 3/4-style picture of one stored sample, as an RGB PIL image."""
    split = split or _split_of(store, image_id)
    view = store.samples(split, target)
    if image_id not in view.ids:
        raise SoftprepError(f"{store.path}: no image {image_id!r} in split {split!r} (ids look like {view.ids[0]!r})")
    sample = view[image_id]
    palette = np.asarray(store.spec.palette, dtype=np.uint8)
    names = store.classes
    dense = sample.soft()
    chosen = [_class_index(names, name) for name in classes] if classes else most_mixed_classes(dense, DEFAULT_CLASS_PANELS)
    full_size = tuple(store.spec.splits[split].sizes[sample.index])
    h, w = sample.shape
    panels = [(f"colour {w}x{h}", sample.image)]
    if root is not None:
        dataset = get_dataset(store.spec.dataset, root)
        label = dataset.read_label(stored_sample(dataset, store.spec.splits[split], sample.index))
        panels.append((f"labels, full resolution {full_size[1]}x{full_size[0]}", colourise(label, palette)))
    panels += [
        (f"nearest-neighbour labels {w}x{h}", colourise(sample.nn(), palette)),
        (f"soft label ({store.spec.kernel}), colour mix", soft_colour_mix(dense, palette)),
    ]
    panels += [(f"soft weight: {names[c]}", weight_map(dense, c, palette[c])) for c in chosen]
    return _grid(panels, display_size(full_size))


def _split_of(store: Store, image_id: str) -> str:
    for split in store.splits:
        if image_id in store.spec.splits[split].ids:
            return split
    raise SoftprepError(f"{store.path}: no image {image_id!r} in any split; `softprep info {store.path} --ids` lists them")


def _class_index(names: list[str], name: str) -> int:
    if name in names:
        return names.index(name)
    raise SoftprepError(f"unknown class {name!r}; classes are: {', '.join(names)}")


def _grid(panels: list[tuple[str, np.ndarray]], size: tuple[int, int]) -> Image.Image:
    """Panels ``(caption, (h, w, 3) uint8)`` enlarged to ``size`` (nearest), captioned, in COLUMNS columns."""
    h, w = size
    rows = -(-len(panels) // COLUMNS)
    canvas = Image.new("RGB", (COLUMNS * w, rows * (h + CAPTION)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=CAPTION * 2 // 3)
    for k, (caption, pixels) in enumerate(panels):
        x, y = (k % COLUMNS) * w, (k // COLUMNS) * (h + CAPTION)
        canvas.paste(Image.fromarray(pixels).resize((w, h), Image.NEAREST), (x, y + CAPTION))
        draw.text((x + 4, y + 3), caption, fill="black", font=font)
    return canvas


def show(store: Store, image_id: str, target, out: str | Path, **options) -> Path:
    """Write :func:`render_sample`'s picture as a PNG at ``out``; returns the path."""
    out = Path(out)
    if not out.parent.is_dir():
        raise SoftprepError(f"{out.parent}: folder does not exist; create it or choose another --out")
    render_sample(store, image_id, target, **options).save(out, format="PNG")
    return out

