"""``softprep show``: one sample at one target, as the paper's Fig. 3/4 draw it.

Panels, each enlarged (nearest, so the low-resolution pixels stay visible) to the full-resolution
size capped at ``MAX_WIDTH``: the colour image at the target, the full-resolution labels (when the
dataset root is given), the NN labels, the soft label drawn as a palette colour mix
(``sum_c w_c * palette_c``; ignore mass is black), and per chosen class the paper's Fig. 3 overlay:
the soft weight on a perceptual scale (dark blue 0 to yellow 1), the class's NN pixels outlined in
white, and the pixels where the class has weight but NN gave them another class (what NN loses)
marked magenta. Fig. 4 follows: the class distribution of the most mixed pixel's full-resolution
footprint, as bars (full-resolution labels when the root is given, NN, soft). A legend of the
classes present and the weight colour bar close the picture. Plain PIL, no matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from softprep.datasets.base import stored_sample
from softprep.datasets import get_dataset
from softprep.errors import SoftprepError
from softprep.store import Store

MAX_WIDTH = 1024
CAPTION = 24
COLUMNS = 2
DEFAULT_CLASS_PANELS = 2
#: The weight scale's anchors (viridis at 0, 0.25, 0.5, 0.75, 1): perceptually even, dark at 0.
WEIGHT_SCALE = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)
LOST = (255, 0, 255)


def colourise(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``(H, W) uint8`` train ids -> ``(H, W, 3) uint8``; ignore/empty (any id >= C) is black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    return table[label]


def soft_colour_mix(dense: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``(C, H, W) float32`` soft label -> ``(H, W, 3) uint8`` palette mix (ignore mass is black)."""
    mix = np.tensordot(dense, palette.astype(np.float32), axes=(0, 0))
    return np.clip(np.rint(mix), 0, 255).astype(np.uint8)


def weight_colours(weight: np.ndarray) -> np.ndarray:
    """``(...)`` weights in [0, 1] -> ``(..., 3) uint8`` on :data:`WEIGHT_SCALE` (linear between anchors)."""
    position = np.clip(weight, 0, 1) * (len(WEIGHT_SCALE) - 1)
    low = np.minimum(position.astype(int), len(WEIGHT_SCALE) - 2)
    t = (position - low)[..., None]
    return np.rint(WEIGHT_SCALE[low] * (1 - t) + WEIGHT_SCALE[low + 1] * t).astype(np.uint8)


def class_overlay(dense: np.ndarray, nn: np.ndarray, c: int, scale: int = 1) -> np.ndarray:
    """Fig. 3 for class ``c``: ``(h*scale, w*scale, 3) uint8`` soft weight on :data:`WEIGHT_SCALE`,
    the outline of the class's NN pixels in white, and :data:`LOST` where the class has weight but
    NN gave the pixel another class (``scale``: pixels per output pixel, so outlines stay thin)."""
    weight = np.repeat(np.repeat(dense[c], scale, 0), scale, 1)
    mine = np.repeat(np.repeat(nn == c, scale, 0), scale, 1)
    lost = np.repeat(np.repeat((dense[c] > 0) & (nn != c), scale, 0), scale, 1)
    picture = weight_colours(weight)
    picture[lost] = (0.45 * picture[lost] + 0.55 * np.array(LOST)).astype(np.uint8)
    edge = mine & ~(np.roll(mine, 1, 0) & np.roll(mine, -1, 0) & np.roll(mine, 1, 1) & np.roll(mine, -1, 1))
    picture[edge] = 255
    return picture


def most_mixed_pixel(dense: np.ndarray) -> tuple[int, int]:
    """``(y, x)`` of the output pixel whose soft label has the most classes (ties: the most even)."""
    classes = (dense > 0).sum(0)
    entropy = -(np.where(dense > 0, dense * np.log(np.maximum(dense, 1e-12)), 0)).sum(0)
    y, x = np.unravel_index(np.lexsort((entropy.ravel(), classes.ravel()))[-1], classes.shape)
    return int(y), int(x)


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
    if len(sample.shape) == 3:
        return _with_legend(volume_slices(sample, dense, chosen[0], palette, names), [(n, palette[c]) for c, n in enumerate(names)])
    full_size = tuple(store.spec.splits[split].sizes[sample.index])
    h, w = sample.shape
    panels = [(f"colour {w}x{h}", sample.image)]
    label = None
    if root is not None:
        dataset = get_dataset(store.spec.dataset, root)
        label = dataset.read_label(stored_sample(dataset, store.spec.splits[split], sample.index))
        panels.append((f"labels, full resolution {full_size[1]}x{full_size[0]}", colourise(label, palette)))
    panels += [
        (f"NN labels ({store.nn_rule}) {w}x{h}", colourise(sample.nn(), palette)),
        (f"soft label ({store.spec.kernel}), colour mix", soft_colour_mix(dense, palette)),
    ]
    size = display_size(full_size)
    scale = max(1, size[0] // h)
    panels += [(f"{names[c]}: soft weight, NN outline (white), lost by NN (magenta)",
                class_overlay(dense, sample.nn(), c, scale)) for c in chosen]
    y, x = most_mixed_pixel(dense)
    footprint = _footprint(full_size, (h, w), (y, x))
    bars = {"soft": dense[:, y, x], "NN": np.eye(len(names) + 1)[min(int(sample.nn()[y, x]), len(names))][:-1]}
    if label is not None:
        region = label[footprint]
        bars = {"full resolution": np.bincount(region.ravel(), minlength=256)[:len(names)] / region.size, **bars}
    panels.append((f"pixel ({x}, {y}) at full resolution: class shares (Fig. 4)", _bar_chart(bars, names, palette, size)))
    present = sorted(set(np.flatnonzero(dense.sum((1, 2)) > 0)) | set(np.unique(sample.nn())[np.unique(sample.nn()) < len(names)]))
    return _with_legend(_grid(panels, size), [(names[c], palette[c]) for c in present])


def volume_slices(sample, dense: np.ndarray, c: int, palette: np.ndarray, names: list[str], panel: int = 240) -> Image.Image:
    """A volume's three orthogonal central slices (sagittal, coronal, axial), each as its intensity
    (first channel), its hard labels (``nn``) and class ``c``'s soft weight."""
    image = sample.image[..., 0].astype(np.float64)
    low, high = np.percentile(image, [1, 99])
    grey = (np.clip((image - low) / max(high - low, 1e-9), 0, 1) * 255).astype(np.uint8)
    hard, weight = sample.nn(), dense[c]
    centre = [n // 2 for n in sample.shape]
    cuts = {"sagittal": lambda a: a[centre[0]], "coronal": lambda a: a[:, centre[1]], "axial": lambda a: a[:, :, centre[2]]}
    panels = []
    for name, cut in cuts.items():
        panels += [(f"{name}: intensity", np.repeat(np.rot90(cut(grey))[..., None], 3, axis=2)),
                   (f"{name}: labels ({sample.view.store.nn_rule})", colourise(np.rot90(cut(hard)), palette)),
                   (f"{name}: {names[c]} weight", weight_colours(np.rot90(cut(weight))))]
    return _grid([(t, np.ascontiguousarray(p)) for t, p in panels], (panel, panel), columns=3)


def _split_of(store: Store, image_id: str) -> str:
    for split in store.splits:
        if image_id in store.spec.splits[split].ids:
            return split
    raise SoftprepError(f"{store.path}: no image {image_id!r} in any split; `softprep info {store.path} --ids` lists them")


def _class_index(names: list[str], name: str) -> int:
    if name in names:
        return names.index(name)
    raise SoftprepError(f"unknown class {name!r}; classes are: {', '.join(names)}")


def _footprint(full_size: tuple[int, int], size: tuple[int, int], pixel: tuple[int, int]) -> tuple[slice, slice]:
    """The full-resolution rows and columns an output pixel covers."""
    (big_h, big_w), (h, w), (y, x) = full_size, size, pixel
    return (slice(y * big_h // h, max((y + 1) * big_h // h, y * big_h // h + 1)),
            slice(x * big_w // w, max((x + 1) * big_w // w, x * big_w // w + 1)))


def _font(size: int):
    return ImageFont.load_default(size=size)


def _bar_chart(bars: dict[str, np.ndarray], names: list[str], palette: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Grouped horizontal bars: per class present in any of ``bars`` (``{series: (C,) shares}``), one
    bar per series in the class colour, its share written beside it."""
    h, w = size
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    classes = [c for c in range(len(names)) if any(v[c] > 0 for v in bars.values())]
    rows = max(1, len(classes) * (len(bars) + 1))
    step = max(6, (h - 8) // rows)
    font = _font(max(9, min(step - 1, max(16, w // 40))))
    label_w = w // 4
    bar_w = max(10, w - label_w - int(draw.textlength("full resolution 100%", font=font)) - 12)
    top = 4
    for c in classes:
        draw.text((4, top), names[c], fill="black", font=font)
        for series, shares in bars.items():
            length = int(round(shares[c] * bar_w))
            draw.rectangle((label_w, top, label_w + max(length, 1), top + step - 2), fill=tuple(int(v) for v in palette[c]),
                           outline="black")
            draw.text((label_w + length + 4, top), f"{series} {100 * shares[c]:.0f}%", fill="black", font=font)
            top += step
        top += step
    return np.asarray(canvas)


def _with_legend(picture: Image.Image, entries: list[tuple[str, np.ndarray]]) -> Image.Image:
    """``picture`` with a strip below: a swatch and name per class, and the weight colour bar."""
    width = picture.width
    font_size = max(14, width // 90)
    font = _font(font_size)
    swatch, gap = font_size, font_size // 2
    probe = ImageDraw.Draw(picture)
    lines, line, x = [], [], 0
    for name, colour in entries:
        item = swatch + gap + int(probe.textlength(name, font=font)) + 2 * gap
        if x + item > width - 8 and line:
            lines.append(line)
            line, x = [], 0
        line.append((x, name, colour))
        x += item
    lines.append(line)
    bar_h = 3 * font_size + 8
    strip = Image.new("RGB", (width, len(lines) * (swatch + gap) + gap + bar_h), "white")
    draw = ImageDraw.Draw(strip)
    for row, items in enumerate(lines):
        y = gap + row * (swatch + gap)
        for x, name, colour in items:
            draw.rectangle((x + 8, y, x + 8 + swatch, y + swatch), fill=tuple(int(v) for v in colour), outline="black")
            draw.text((x + 8 + swatch + gap, y - 1), name, fill="black", font=font)
    y = gap + len(lines) * (swatch + gap)
    ramp = weight_colours(np.linspace(0, 1, width // 2))[None].repeat(font_size, 0)
    strip.paste(Image.fromarray(ramp), (8, y))
    draw.text((8, y + font_size + 2), "soft weight 0", fill="black", font=font)
    draw.text((8 + width // 2 - int(draw.textlength("1", font=font)), y + font_size + 2), "1", fill="black", font=font)
    draw.rectangle((width // 2 + 24, y, width // 2 + 24 + font_size, y + font_size), fill=LOST)
    draw.text((width // 2 + 30 + font_size, y), "weight where NN lost the class", fill="black", font=font)
    out = Image.new("RGB", (width, picture.height + strip.height), "white")
    out.paste(picture, (0, 0))
    out.paste(strip, (0, picture.height))
    return out


def _grid(panels: list[tuple[str, np.ndarray]], size: tuple[int, int], columns: int = COLUMNS) -> Image.Image:
    """Panels ``(caption, (h, w, 3) uint8)`` enlarged to ``size`` (nearest), captioned, in ``columns`` columns;
    captions grow with the panels (:data:`CAPTION` px at least, a 24th of the panel width)."""
    h, w = size
    caption = max(CAPTION, w // 24)
    rows = -(-len(panels) // columns)
    canvas = Image.new("RGB", (columns * w, rows * (h + caption)), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(caption * 2 // 3)
    for k, (text, pixels) in enumerate(panels):
        x, y = (k % columns) * w, (k // columns) * (h + caption)
        canvas.paste(Image.fromarray(pixels).resize((w, h), Image.NEAREST), (x, y + caption))
        draw.text((x + 4, y + caption // 8), text, fill="black", font=font)
    return canvas


def show(store: Store, image_id: str, target, out: str | Path, **options) -> Path:
    """Write :func:`render_sample`'s picture as a PNG at ``out``; returns the path."""
    out = Path(out)
    if not out.parent.is_dir():
        raise SoftprepError(f"{out.parent}: folder does not exist; create it or choose another --out")
    render_sample(store, image_id, target, **options).save(out, format="PNG")
    return out

