"""Planning a store (no pixels): the splits as they are under a dataset root (ids, paths, sizes
from the file headers, label-file digests) and every target's plan, into the frozen
:class:`~softprep.store.layout.StoreSpec` a build executes; whether an existing store can be
resumed with it, or how it differs. :mod:`softprep.build` runs what this plans."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import numpy as np

from softprep.datasets import Dataset, Sample
from softprep.datasets.base import label_digests
from softprep.errors import SoftprepError, printable
from softprep.kernels import KERNELS
from softprep.plan import Target, parse_targets
from softprep.store.layout import DEFAULT_SHARD_SIZE, FORMAT_VERSION, SplitSpec, StoreSpec
from softprep.store.lifecycle import foreign_folder
from softprep.store.reader import open_store, softprep_marker
from softprep.store.writer import write_split_attrs

#: Largest image, and largest sum of one image's outputs over all targets, a build accepts (pixels):
#: about 1 GiB of worker memory (a 24 MP image at 0.125 0.25 0.5 peaks at 0.8 GiB). ``--max-pixels``.
DEFAULT_MAX_PIXELS = 32_000_000


def plan_store(dataset: Dataset, splits: Iterable[str] | None, targets: Iterable[Target | str | float], kernel: str,
               antialias: bool, shard_size: int = DEFAULT_SHARD_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS,
               image_kernel: str | None = None, allow_upsampling: bool = False) -> StoreSpec:
    """List every pair and its size (from file headers) into a :class:`StoreSpec`.

    A scale factor above 1 enlarges every image: refused unless ``allow_upsampling`` (a typo such
    as ``--scales 8`` for ``0.8`` would write a store 64 times the dataset's pixels). Pixel targets
    (``short``, ``fit``) may upsample: the paper's ADE20K set-up needs it.

    Raises:
        SoftprepError: no pairs, an unreadable folder, two images with one id, or an image (or its
            outputs) over ``max_pixels`` (one line naming the file).
    """
    for name in (kernel, image_kernel or kernel):
        if name not in KERNELS:
            raise SoftprepError(f"unknown kernel {name!r}; choose one of {', '.join(KERNELS)}")
    targets = parse_targets(targets)
    if not targets:
        raise SoftprepError("no target resolution: pass --scales (e.g. 0.125 0.25 0.5), --short-side or --fit")
    if shard_size < 1:
        raise SoftprepError(f"shard size must be >= 1, got {shard_size}")
    enlarging = [t.name for t in targets if t.factors is not None and max(t.factors) > 1]
    if enlarging and not allow_upsampling:
        raise SoftprepError(f"--scales {' '.join(enlarging)}: a factor above 1 enlarges every image "
                            f"({enlarging[0]}x each side); pass --allow-upsampling if that is intended, "
                            "or give factors <= 1 (e.g. 0.125 0.25 0.5)")
    splits = list(splits) if splits else dataset.splits()
    if not splits:
        raise SoftprepError(f"{dataset.root}: no {dataset.name} splits found; is --root the dataset folder?")
    spec = StoreSpec(dataset.name, list(dataset.classes), [list(c) for c in dataset.palette], dataset.ignore_index,
                     kernel, antialias, tuple(targets), shard_size, {split: split_spec(dataset, split) for split in splits},
                     image_kernel=image_kernel or kernel, image_channels=dataset.image_channels,
                     image_dtype=dataset.image_dtype)
    for split, found in spec.splits.items():  # every plan once now: an impossible size fails before any work
        for i, sides in enumerate(found.sizes):
            where, size, pixels = dataset.root / found.images[i], _size_text(sides), math.prod(sides)
            vanishing = [t for t in targets if t.factors is not None
                         and any(math.floor(side * f) < 1 for side, f in zip(sides, t.factors * len(sides)))]
            if vanishing:
                raise SoftprepError(f"{where}: --scales {vanishing[0].name} makes this {size} image smaller than "
                                    f"one pixel (floor(side x factor) = 0); use factors of at least 1/{min(sides)}")
            finer = [t for t in targets if t.kind == "spacing" and found.spacings is not None
                     and any(want < have for want, have in zip(t.value * (3 if len(t.value) == 1 else 1), found.spacings[i]))]
            if finer and not allow_upsampling:
                raise SoftprepError(f"{where}: --spacing {finer[0].name} is finer than this volume's voxels "
                                    f"({'x'.join(f'{v:g}' for v in found.spacings[i])} mm): it would enlarge it; pass "
                                    "--allow-upsampling if that is intended, or give a coarser spacing")
            if pixels > max_pixels:
                raise SoftprepError(f"{where}: {size} is {pixels / 1e6:.1f} megapixels, over the "
                                    f"--max-pixels limit of {max_pixels / 1e6:g} (about 1 GiB per worker); raise "
                                    "--max-pixels if each worker has the memory, or remove the file")
            plans = [spec.plan(split, i, target) for target in spec.targets]
            outputs = sum(math.prod(p.size) for p in plans)
            if outputs > max_pixels:
                sizes = ", ".join(f"{t.name} -> {_size_text(p.size)}" for t, p in zip(spec.targets, plans))
                raise SoftprepError(f"{where}: its outputs ({sizes}) total {outputs / 1e6:.1f} megapixels, over the "
                                    f"--max-pixels limit of {max_pixels / 1e6:g}; use smaller targets")
    return spec


def _size_text(sides, unit: bool = True) -> str:
    """An image's size as a user reads it: ``"128x64 (WxH)"`` (width first), a volume's ``"64x64x32 (XxYxZ)"``;
    ``unit=False`` leaves out the bracket."""
    text = f"{sides[1]}x{sides[0]}" if len(sides) == 2 else "x".join(map(str, sides))
    return text + (" (WxH)" if len(sides) == 2 else " (XxYxZ)") if unit else text


def split_spec(dataset: Dataset, split: str) -> SplitSpec:
    """The images of ``split`` as they are under ``dataset.root``: ids, paths, full-resolution sizes
    (from file headers) and label-file digests.

    Raises:
        SoftprepError: an unreadable or empty split, or two images with one id (one line).
    """
    try:
        samples = dataset.samples(split)
    except OSError as error:
        raise SoftprepError(f"{error.filename or dataset.root}: cannot list the {split} split ({error.strerror}); "
                            "check the folder's permissions") from None
    if not samples:
        raise SoftprepError(f"{dataset.root}: split {split!r} has no image/label pairs; check --root and --splits")
    _refuse_duplicate_ids(samples)
    geometry = [dataset.geometry(s) for s in samples]  # volumes: (spacing, affine) from each header
    volumes = all(g is not None for g in geometry)
    return SplitSpec(
        ids=[s.id for s in samples],
        images=[str(s.image.relative_to(dataset.root)) for s in samples],
        labels=[str(s.label.relative_to(dataset.root)) for s in samples],
        sizes=[list(dataset.size(s)) for s in samples],
        label_digests=label_digests(samples),
        spacings=[list(g[0]) for g in geometry] if volumes else None,
        affines=[np.asarray(g[1]).tolist() for g in geometry] if volumes else None,
    )


def source_difference(split: str, stored: SplitSpec, found: SplitSpec, built: np.ndarray | None = None) -> str | None:
    """Where the files of a split as ``found`` now differ from those a store was built from
    (``stored``): the first image whose id, size or label file differs, as text; None when they are
    the same (a format-3 store recorded no digests: ids and sizes alone). ``built``: ``(N,) bool``,
    compare the label files of these images only (an image not yet built may have been fixed)."""
    if stored.ids != found.ids:
        first = next((i for i, (a, b) in enumerate(zip(stored.ids, found.ids)) if a != b), min(len(stored.ids), len(found.ids)))
        mine = printable(found.ids[first]) if first < len(found.ids) else "none"
        theirs = printable(stored.ids[first]) if first < len(stored.ids) else "none"
        return f"{split} image #{first} is {mine} here, {theirs} in the store"
    for i, (a, b) in enumerate(zip(stored.sizes, found.sizes)):
        if list(a) != list(b):
            return f"{split} image {printable(found.ids[i])} is {_size_text(b)} here, {_size_text(a)} in the store"
    for i, (a, b) in enumerate(zip(stored.label_digests or [], found.label_digests or [])):
        if a != b and (built is None or built[i]):
            return f"{split} image {printable(found.ids[i])}: its label file {printable(found.labels[i])} differs"
    return None


def upsampling_notes(spec: StoreSpec) -> list[str]:
    """One line per target that makes images larger, with the first image's sizes."""
    notes = []
    for target in spec.targets:
        for split, split_spec in spec.splits.items():
            grown = [i for i in range(len(split_spec.ids))
                     if any(out > source for out, source in zip(spec.plan(split, i, target).size, split_spec.sizes[i]))]
            if grown:
                plan = spec.plan(split, grown[0], target)
                notes.append(f"note: target {target} upsamples {len(grown)} {split} image(s), e.g. "
                             f"{printable(split_spec.ids[grown[0]])} {_size_text(plan.source, unit=False)} -> {_size_text(plan.size)}")
    return notes


def _refuse_duplicate_ids(samples: list[Sample]) -> None:
    seen: dict[str, Sample] = {}
    for sample in samples:
        if sample.id in seen:
            raise SoftprepError(f"{sample.image}: same id {sample.id!r} as {seen[sample.id].image} (a duplicated or "
                                "symlinked folder?); remove one of them")
        seen[sample.id] = sample


def check_resumable(out: Path, spec: StoreSpec) -> bool:
    """True when the store at ``out`` can be resumed. A store made with other settings, in another
    format or from other label files is refused, unless not one image of it is finished (nothing to
    lose: False, the caller starts it again). A folder softprep did not make is refused.
    """
    if softprep_marker(out) is None:
        raise foreign_folder(out, "build into")
    store = open_store(out)
    existing = store.spec
    if not any(store.done(split).any() for split in store.splits):
        return spec.describe() == existing.describe()
    if store.format_version != FORMAT_VERSION:
        raise SoftprepError(f"{out}: store format {store.format_version} (this softprep writes {FORMAT_VERSION}); pass "
                            "--overwrite to rebuild it")
    common = [split for split in existing.splits if split in spec.splits]
    source = next(filter(None, (source_difference(split, existing.splits[split], spec.splits[split], store.done(split))
                                for split in common)), None)
    if source:
        raise SoftprepError(f"{out}: store was built from other files ({source}); pass --overwrite to rebuild it from "
                            "this --root")
    fixed = [split for split in common if existing.splits[split].label_digests != spec.splits[split].label_digests]
    # label files of images not yet built changed (fixed after a failed build): compare the rest, then record them
    existing = replace(existing, splits={name: replace(split, label_digests=spec.splits[name].label_digests)
                                         if name in fixed else split for name, split in existing.splits.items()})
    mine, theirs = spec.describe(), existing.describe()
    differing = [key for key in mine if mine[key] != theirs[key]]
    if not differing:
        for split in fixed:
            write_split_attrs(out, split, spec.splits[split])
        return True
    detail = "; ".join(_difference(k, theirs[k], mine[k]) for k in differing)
    raise SoftprepError(f"{out}: store was built with other settings ({detail}); pass --overwrite to rebuild it")


def _difference(key: str, theirs, mine) -> str:
    """Where two setting values differ, in full: short values whole, long ones at their first difference."""
    if len(repr(theirs)) + len(repr(mine)) < 400:
        return f"{key}: store has {theirs!r}, asked {mine!r}"
    if isinstance(theirs, dict) and isinstance(mine, dict):
        for sub in sorted(set(theirs) | set(mine), key=str):
            if theirs.get(sub) != mine.get(sub):
                return _difference(f"{key}.{sub}", theirs.get(sub), mine.get(sub))
    if isinstance(theirs, list) and isinstance(mine, list):
        if len(theirs) != len(mine):
            return f"{key}: store has {len(theirs)} entries, asked {len(mine)}"
        first = next(i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b)
        return _difference(f"{key}[{first}]", theirs[first], mine[first])
    return f"{key}: store has {theirs!r}, asked {mine!r}"
