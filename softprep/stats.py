"""``softprep stats``: what the soft labels hold that a hard label loses, per target.

Per resolution target of a split: the share of multi-class (MC) pixels (as the paper's Table III uses
them), classes per pixel, the entropy of the soft labels, how often the NN label disagrees with
the soft label's argmax, and per class how many images lose the class entirely under NN (a class
present at full resolution, absent after downsampling: thin poles, distant signs).

Pixel statistics read every soft label once (in parallel); vanished counts come from the
recorded ``counts``, ``nn_counts`` and ``mass`` alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from softprep.errors import SoftprepError
from softprep.parallel import batches, run_tasks
from softprep.softlabel import IGNORE_INDEX
from softprep.store import Store, open_store


@dataclass
class PixelTally:
    """Sums over the pixels of some images at one target.

    ``valid`` counts pixels with any class weight; ``multi`` those with two or more classes;
    ``class_slots`` the classes per valid pixel summed; ``entropy`` the soft-label entropy (nats,
    of the weights renormalised to sum 1) summed; ``compared``/``disagree`` the pixels where both
    NN and argmax have a class, and those where they differ.
    """

    images: int = 0
    pixels: int = 0
    valid: int = 0
    multi: int = 0
    class_slots: int = 0
    max_classes: int = 0
    entropy: float = 0.0
    compared: int = 0
    disagree: int = 0

    def merge(self, other: "PixelTally") -> None:
        for name in ("images", "pixels", "valid", "multi", "class_slots", "entropy", "compared", "disagree"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_classes = max(self.max_classes, other.max_classes)


def tally_pixels(store_path: str, split: str, target: str, indices: range) -> PixelTally:
    """Pixel statistics of images ``indices`` of a split at one target (opens the store itself)."""
    view = open_store(store_path).samples(split, target)
    tally = PixelTally()
    for i in indices:
        sample = view[i]
        soft = sample.soft_label()
        weights = soft.scaled_weights()  # (K, H', W') float
        present = weights > 0
        classes_per_pixel = present.sum(axis=0)
        valid = classes_per_pixel > 0
        total = weights.sum(axis=0, keepdims=True)
        p = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
        log_p = np.log(p, out=np.zeros_like(p), where=p > 0)
        nn, hard = sample.nn(), soft.argmax()
        compared = (nn != IGNORE_INDEX) & (hard != IGNORE_INDEX)
        tally.merge(PixelTally(
            images=1, pixels=valid.size, valid=int(valid.sum()), multi=int((classes_per_pixel > 1).sum()),
            class_slots=int(classes_per_pixel.sum()), max_classes=int(classes_per_pixel.max(initial=0)),
            entropy=float(-(p * log_p).sum()), compared=int(compared.sum()), disagree=int((compared & (nn != hard)).sum()),
        ))
    return tally


@dataclass
class ScaleStats:
    """Statistics of one split at one target; ``vanished_nn[c]`` / ``vanished_soft[c]``: images
    where class ``c`` is present at full resolution but gets no pixel under NN / no soft-label mass."""

    target: str
    pixels: PixelTally
    vanished_nn: list[int]
    vanished_soft: list[int]

    def summary(self) -> dict:
        t = self.pixels
        return {
            "target": self.target,
            "images": t.images,
            "pixels": t.pixels,
            "valid_pixels": t.valid,
            "multi_class_share": t.multi / t.valid if t.valid else 0.0,
            "mean_classes_per_pixel": t.class_slots / t.valid if t.valid else 0.0,
            "max_classes_per_pixel": t.max_classes,
            "mean_entropy_nats": t.entropy / t.valid if t.valid else 0.0,
            "nn_disagreement_share": t.disagree / t.compared if t.compared else 0.0,
            "vanished_nn": self.vanished_nn,
            "vanished_soft": self.vanished_soft,
        }


@dataclass
class SplitStats:
    split: str
    classes: list[str]
    present: list[int]  # images containing each class at full resolution
    targets: list[ScaleStats] = field(default_factory=list)


def vanished(counts: np.ndarray, downsampled: np.ndarray) -> list[int]:
    """Per class, images whose full-resolution ``counts (N, C)`` are > 0 but ``downsampled (N, C)`` is 0."""
    return [int(v) for v in ((counts > 0) & (downsampled == 0)).sum(axis=0)]


def split_stats(store: Store, split: str | None = None, jobs: int | None = None, batch_size: int = 8,
                progress: Callable[[int, int], None] | None = None) -> SplitStats:
    """Statistics of every target of a split; ``progress(images_done_now, images_total)`` per batch."""
    split = split or ("train" if "train" in store.splits else store.splits[0])
    if split not in store.splits:
        raise SoftprepError(f"{store.path}: no split {split!r}; the store has {', '.join(store.splits)}")
    if not store.done(split).all():
        raise SoftprepError(f"{store.path}: split {split!r} is not completely built; rerun `softprep build` to finish it")
    counts = store.counts(split)
    stats = SplitStats(split, store.classes, [int(v) for v in (counts > 0).sum(axis=0)])
    n = len(counts)
    for target in store.targets:
        view = store.samples(split, target)
        tasks = [(str(store.path), split, target, r) for r in batches(n, batch_size)]
        pixels = PixelTally()
        for part in run_tasks(tally_pixels, tasks, jobs):
            pixels.merge(part)
            if progress:
                progress(part.images, n * len(store.targets))
        stats.targets.append(ScaleStats(target, pixels, vanished(counts, view.nn_counts()), vanished(counts, view.mass())))
    return stats


def to_json(stats: SplitStats) -> dict:
    """Keys: ``split``, ``classes``, ``present`` (images per class at full resolution) and
    ``targets``: list of :meth:`ScaleStats.summary` dicts (shares in [0, 1], entropy in nats)."""
    return {"split": stats.split, "classes": stats.classes, "present": stats.present,
            "targets": [s.summary() for s in stats.targets]}


def render(stats: SplitStats, fmt: str = "text") -> str:
    """``text`` (two aligned tables: per target, then vanished classes per class) or ``json``."""
    if fmt == "json":
        return json.dumps(to_json(stats), indent=2)
    rows = [["target", "images", "MC pixels", "classes/px mean", "max", "entropy (nats)", "NN != argmax"]]
    for s in stats.targets:
        d = s.summary()
        rows.append([s.target, str(d["images"]), f"{100 * d['multi_class_share']:.2f}%",
                     f"{d['mean_classes_per_pixel']:.3f}", str(d["max_classes_per_pixel"]),
                     f"{d['mean_entropy_nats']:.4f}", f"{100 * d['nn_disagreement_share']:.2f}%"])
    out = [f"split {stats.split}: per target (shares of valid pixels)", _align(rows), "",
           "images where a class present at full resolution vanishes (NN: no pixel; soft: no mass)"]
    header = ["class", "present"] + [f"{kind} {s.target}" for s in stats.targets for kind in ("NN", "soft")]
    table = [header]
    for c, name in enumerate(stats.classes):
        table.append([name, str(stats.present[c])]
                     + [str(v) for s in stats.targets for v in (s.vanished_nn[c], s.vanished_soft[c])])
    out.append(_align(table))
    return "\n".join(out) + "\n"


def _align(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)
