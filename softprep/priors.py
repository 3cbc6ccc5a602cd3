"""Class-prior discrepancy of a downsampling strategy (the paper's eq. 5 and Table V).

``p_original,c`` is the share of valid full-resolution pixels of class ``c`` over a split;
``p_d,c`` the share of soft-label mass of class ``c`` at resolution target ``d`` (for ``nearest``:
the share of pixels); ``D_d,c = p_original,c - p_d,c``.

Each image's mass at ``d`` counts with the weight its pixels have at full resolution: ``H W /
(h w)`` source pixels per output pixel. For a split of one image size this is a constant, and
the table is the paper's eq. 5 unchanged; for mixed sizes (or pixel targets such as
``short512``, which shrink large images more than small ones) it keeps the comparison to the
label change alone, not to a re-weighting of the images. An exact box filter (``area``) then
gives ``D = 0`` exactly at every target.

From a store, everything comes from recorded per-image numbers (``counts``, ``mass_numerator``
over each image's own ``denominator``, ``nn_counts``): O(images x classes), no pixel pass. When
every image's weights are exact integer numerators (mixed sizes included), ``D`` is computed with
:class:`fractions.Fraction` and a zero is exactly zero.
:func:`compare_kernels` computes the same table straight from a dataset root, for any kernels.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable, Sequence

import numpy as np

from softprep.datasets import Dataset, Sample
from softprep.errors import SoftprepError, printable
from softprep.kernels import KERNELS
from softprep.parallel import batches, run_tasks
from softprep.plan import Target, parse_target, target_name, parse_targets, resampling_plan
from softprep.resample import prepare_label, soft_label
from softprep.store import Store

FORMATS = ("text", "markdown", "csv", "json")
DEFAULT_SCALE_FACTOR = 1e4

Number = Fraction | float


@dataclass
class ClassMass:
    """Per-class mass of one strategy at one scale, summed over images.

    ``total[c]`` is exact (a :class:`Fraction`) when every image's weights were integer
    numerators, else a ``float``.
    """

    total: list[Number]

    @classmethod
    def zeros(cls, num_classes: int) -> "ClassMass":
        return cls([Fraction(0)] * num_classes)

    @property
    def exact(self) -> bool:
        return all(isinstance(v, Fraction) for v in self.total)

    def add(self, mass: np.ndarray, denominator: int | None, weight: Fraction = Fraction(1)) -> None:
        """Add one or more images' ``(C,)`` or ``(N, C)`` mass (numerators over ``denominator``;
        ``None``: float mass), each multiplied by ``weight``."""
        column_sums = np.asarray(mass).reshape(-1, len(self.total)).astype(object).sum(axis=0)  # Python ints: no overflow
        if denominator is None:
            self.total = [float(t) + float(m) * float(weight) for t, m in zip(self.total, column_sums)]
        else:
            scale = Fraction(weight) / int(denominator)
            self.total = [t + int(m) * scale for t, m in zip(self.total, column_sums)]

    def add_images(self, mass: np.ndarray, denominators: np.ndarray | None, weights: list[Fraction]) -> None:
        """Add ``(N, C)`` per-image masses: integer numerators over their own ``(N,)`` denominators
        (``None``: float masses), image ``n`` multiplied by ``weights[n]``. Images sharing a
        denominator and weight are summed first, so a split of one size costs one Fraction per class."""
        groups: dict[tuple, list[int]] = {}  # one pass: a split of 20k sizes is not 20k scans
        for n, weight in enumerate(weights):
            groups.setdefault((None if denominators is None else int(denominators[n]), weight), []).append(n)
        for (denominator, weight), rows in groups.items():
            self.add(mass[rows], denominator, weight)

    def shares(self) -> list[Number]:
        """``p_c``: each class's share of the total mass (0 everywhere for an empty total)."""
        whole = sum(self.total)
        return [t / whole if whole else t * 0 for t in self.total]


@dataclass
class PriorRow:
    """One (strategy, scale) row: ``discrepancy[c] = p_original,c - p_d,c``."""

    strategy: str
    target: str
    exact: bool
    prior: list[Number]
    discrepancy: list[Number]
    drift_ml: list[Number] | None = None  # volumes: class volume under the strategy minus at full resolution, mL

    @property
    def sum_abs(self) -> Number:
        return sum(abs(d) for d in self.discrepancy)

    @property
    def max_abs(self) -> Number:
        return max(abs(d) for d in self.discrepancy)


@dataclass
class PriorTable:
    """Table V for one split: the full-resolution priors and one row per (strategy, scale)."""

    split: str
    classes: list[str]
    counts: list[int]
    rows: list[PriorRow]
    volumes_ml: list[Number] | None = None  # volumes: each class's full-resolution volume, mL

    @property
    def original(self) -> list[Fraction]:
        """``p_original,c`` as exact fractions."""
        return ClassMass([Fraction(c) for c in self.counts]).shares()


def prior_row(strategy: str, target: str, counts: Sequence[int], mass: ClassMass) -> PriorRow:
    """The row of eq. 5 for one strategy and target, given full-resolution ``counts (C,)``."""
    original = ClassMass([Fraction(int(c)) for c in counts]).shares()
    prior = mass.shares()
    exact = mass.exact
    discrepancy = [o - p if exact else float(o) - float(p) for o, p in zip(original, prior)]
    return PriorRow(strategy, target_name(target), exact, prior, discrepancy)


def strategy_name(kernel: str, antialias: bool) -> str:
    """Row label of a kernel: ``bilinear``, ``bilinear+aa``."""
    return f"{kernel}+aa" if antialias and kernel in ("bilinear", "bicubic") else kernel


def store_priors(store: Store, split: str | None = None) -> PriorTable:
    """Table V of a built store's split from recorded masses: per target, the torch ``nearest`` row
    (the paper's NN baseline, what pipelines do), the ``nearest-exact`` row (pixel centres; format 4
    stores), for volumes nnU-Net's row (order 1, then 0.5), and the store's kernel row.

    A volume split also gets each class's volume drift in mL per row (:attr:`PriorRow.drift_ml`),
    from the recorded voxel counts and each image's voxel size: exactly 0 for ``area``."""
    split = split or _default_split(store.splits)
    if split not in store.splits:
        raise SoftprepError(f"{store.path}: no split {split!r}; the store has {', '.join(store.splits)}")
    if not store.done(split).all():
        raise SoftprepError(f"{store.path}: split {split!r} is not completely built; rerun `softprep build` to finish it")
    image_counts = store.counts(split)
    counts = [int(c) for c in image_counts.sum(axis=0)]
    kernel = strategy_name(store.spec.kernel, store.spec.antialias)
    split_spec = store.spec.splits[split]
    voxel_ml = voxel_volumes_ml(split_spec.spacings)
    volumes_ml = None
    if voxel_ml is not None:
        volumes = ClassMass.zeros(len(counts))
        volumes.add_images(image_counts, np.ones(len(voxel_ml), dtype=np.int64), voxel_ml)
        volumes_ml = volumes.total
    rows = []
    for target in store.targets:
        view = store.samples(split, target)
        weights = [image_weight(full, out) for full, out in zip(split_spec.sizes, view.sizes)]
        hard = {"nearest": view.nn_floor_counts()}
        if store.nn_rule == "nearest-exact":
            hard["nearest-exact"] = view.nn_counts()
        if view.nnunet_counts() is not None:
            hard["nnU-Net"] = view.nnunet_counts()
        for rule, voxels in hard.items():
            rows.append(mass_row(rule, target, counts, voxels, np.ones(len(view), dtype=np.int64), weights, voxel_ml, volumes_ml))
        if kernel not in hard:
            mass, denominators = (view.mass_numerator(), view.denominators) if view.exact else (view.mass(), None)
            rows.append(mass_row(kernel, target, counts, mass, denominators, weights, voxel_ml, volumes_ml))
    return PriorTable(split, store.classes, counts, rows, volumes_ml)


def mass_row(strategy: str, target: str, counts: Sequence[int], mass: np.ndarray, denominators: np.ndarray | None,
             weights: list[Fraction], voxel_ml: list[Fraction] | None = None, volumes_ml: list[Number] | None = None) -> PriorRow:
    """The row of one strategy from per-image ``mass (N, C)`` (numerators over ``denominators``, None:
    floats; hard rules: pixel counts over ones), each image weighted by ``weights`` (source pixels per
    output pixel); with ``voxel_ml`` (per image, mL) also its volume drift against ``volumes_ml``."""
    total = ClassMass.zeros(len(counts))
    total.add_images(mass, denominators, weights)
    row = prior_row(strategy, target, counts, total)
    if voxel_ml is None:
        return row
    volumes = ClassMass.zeros(len(counts))
    volumes.add_images(mass, denominators, [w * v for w, v in zip(weights, voxel_ml)])
    row.drift_ml = [v - o if volumes.exact else float(v) - float(o) for v, o in zip(volumes.total, volumes_ml)]
    return row


def voxel_volumes_ml(spacings) -> list[Fraction] | None:
    """Each volume's source voxel volume in mL (the product of its spacing in mm, / 1000), exact
    (Fractions of the recorded floats); None for images (no spacing)."""
    if spacings is None:
        return None
    return [Fraction(math.prod(Fraction(float(v)) for v in spacing), 1000) for spacing in spacings]


def image_weight(full_size, size) -> Fraction:
    """Full-resolution pixels per output pixel of one image: ``H W / (h w)`` (a volume: voxels, ``X Y Z / (x y z)``)."""
    return Fraction(math.prod(int(v) for v in full_size), math.prod(int(v) for v in size))


def _default_split(splits: Sequence[str]) -> str:
    return "train" if "train" in splits else splits[0]


@dataclass
class Tally:
    """Counts and masses summed over some images: what a worker sends back."""

    images: int
    counts: np.ndarray  # (C,) int64 full-resolution valid pixels per class
    masses: dict  # {(kernel, target name): ClassMass}

    def merge(self, other: "Tally") -> None:
        self.images += other.images
        self.counts += other.counts
        for key, mass in other.masses.items():
            self.masses[key].total = [a + b for a, b in zip(self.masses[key].total, mass.total)]


def tally_images(dataset: Dataset, samples: Iterable[Sample], kernels: Sequence[str],
                 targets: Sequence[Target], antialias: bool) -> Tally:
    """Full-resolution counts and per-(kernel, target) soft-label masses of some image/label pairs."""
    c = dataset.num_classes
    tally = Tally(0, np.zeros(c, dtype=np.int64), {(k, t.name): ClassMass.zeros(c) for k in kernels for t in targets})
    for sample in samples:
        label = dataset.read_label(sample)
        prepared = prepare_label(label, c, dataset.ignore_index)
        tally.counts += prepared.class_counts()
        tally.images += 1
        for target in targets:
            for kernel in kernels:
                plan = resampling_plan(kernel, antialias, label.shape, target)
                soft = soft_label(prepared, plan.rows, plan.cols)
                tally.masses[kernel, target.name].add(soft.class_mass(), soft.denominator, image_weight(label.shape, plan.size))
    return tally


def compare_kernels(
    dataset: Dataset,
    kernels: Sequence[str],
    targets: Sequence[Target | str | float],
    split: str | None = None,
    antialias: bool = False,
    jobs: int | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> PriorTable:
    """Table V for several kernels straight from a dataset root (no store), in parallel.

    ``nearest`` is the NN baseline (the soft label of the nearest kernel is one-hot).
    ``progress(images_done_now, images_total)`` is called after each batch.
    """
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown or not kernels:
        raise SoftprepError(f"--compare-kernels: unknown kernel(s) {unknown}; choose from {', '.join(KERNELS)}")
    targets = parse_targets(targets)
    if not targets:
        raise SoftprepError("--compare-kernels: pass --scales (or --short-side / --fit)")
    split = split or _default_split(dataset.splits() or ["train"])
    samples = dataset.samples(split)
    if not samples:
        raise SoftprepError(f"{dataset.root}: split {split!r} has no image/label pairs; check --root and --split")
    kernels = list(dict.fromkeys(kernels))
    tasks = [(dataset, [samples[i] for i in b], kernels, targets, antialias) for b in batches(len(samples), batch_size)]
    total = tally_images(dataset, [], kernels, targets, antialias)
    for part in run_tasks(tally_images, tasks, jobs):
        total.merge(part)
        if progress:
            progress(part.images, len(samples))
    rows = [prior_row(strategy_name(k, antialias), t.name, total.counts, total.masses[k, t.name]) for t in targets for k in kernels]
    return PriorTable(split, list(dataset.classes), [int(v) for v in total.counts], rows)


def target_label(target: str) -> str:
    """``"0.125" -> "1/8"``, ``"0.3" -> "0.3"``, ``"short512"`` unchanged: the paper's resolution column."""
    factor = parse_target(target).factor
    if factor is None:
        return target
    fraction = Fraction(factor)
    return f"{fraction.numerator}/{fraction.denominator}" if fraction.denominator <= 64 and fraction != 1 else f"{factor:g}"


def format_value(value: Number, exact: bool, scale_factor: float) -> str:
    """A discrepancy as printed: exact zero is ``0``; anything else ``x scale_factor`` to 2 decimals."""
    if exact and value == 0:
        return "0"
    return f"{float(value) * scale_factor:.2f}"


def table_cells(table: PriorTable, scale_factor: float = DEFAULT_SCALE_FACTOR) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the paper's layout: strategy, resolution, exactness, sum/max |D|, classes."""
    header = ["strategy", "target", "exact", "sum|D|", "max|D|", *map(printable, table.classes)]
    if table.volumes_ml is not None:  # volumes: then each class's drift in mL
        header += [f"{printable(name)} mL" for name in table.classes]
    body = []
    for row in table.rows:
        cells = [row.strategy, target_label(row.target), "exact" if row.exact else "float",
                 format_value(row.sum_abs, row.exact, scale_factor), format_value(row.max_abs, row.exact, scale_factor)]
        cells += [format_value(d, row.exact, scale_factor) for d in row.discrepancy]
        if row.drift_ml is not None:
            cells += ["0" if row.exact and v == 0 else f"{float(v):+.2f}" for v in row.drift_ml]
        body.append(cells)
    return header, body


def render(table: PriorTable, fmt: str = "text", scale_factor: float = DEFAULT_SCALE_FACTOR) -> str:
    """The table as ``text`` (aligned), ``markdown``, ``csv`` or ``json`` (see :func:`to_json`)."""
    if fmt == "json":
        return json.dumps(to_json(table), indent=2)
    if fmt not in FORMATS:
        raise SoftprepError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    header, body = table_cells(table, scale_factor)
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *body])
        return out.getvalue()
    caption = (f"D = p_original - p_d per class (eq. 5), x{scale_factor:g}; split {table.split}, "
               f"{sum(table.counts)} valid full-resolution {'voxels' if table.volumes_ml is not None else 'pixels'}; exact rows print exact zeros as 0")
    if table.volumes_ml is not None:
        caption += ("; 'mL': each class's volume under the rule minus its full-resolution volume ("
                    + ", ".join(f"{printable(n)} {float(v):.2f} mL" for n, v in zip(table.classes, table.volumes_ml)) + ")")
    if fmt == "markdown":
        header = [cell.replace("|", "\\|") for cell in header]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines) + f"\n\n{caption}\n"
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header, *body]]
    return caption + "\n" + "\n".join(line.rstrip() for line in lines) + "\n"


def to_json(table: PriorTable) -> dict:
    """Machine-readable table, unscaled, full precision.

    Keys: ``split``; ``classes`` (C names); ``counts`` (C full-resolution valid pixels);
    ``original_prior`` (C floats, ``p_original,c``); ``volumes_ml`` (volumes: C full-resolution class
    volumes in mL, else null); ``rows``: list of ``{strategy, target, exact, prior (C floats p_d,c),
    discrepancy (C floats D_d,c), discrepancy_fraction (C strings "n/d" when exact, else null),
    sum_abs, max_abs, drift_ml (volumes: C floats, the class volume change in mL, else null)}``.
    """
    return {
        "split": table.split,
        "classes": table.classes,
        "counts": table.counts,
        "original_prior": [float(p) for p in table.original],
        "volumes_ml": None if table.volumes_ml is None else [float(v) for v in table.volumes_ml],
        "rows": [
            {
                "strategy": row.strategy,
                "target": row.target,
                "exact": row.exact,
                "prior": [float(p) for p in row.prior],
                "discrepancy": [float(d) for d in row.discrepancy],
                "discrepancy_fraction": [str(d) for d in row.discrepancy] if row.exact else None,
                "sum_abs": float(row.sum_abs),
                "max_abs": float(row.max_abs),
                "drift_ml": None if row.drift_ml is None else [float(v) for v in row.drift_ml],
            }
            for row in table.rows
        ],
    }
