"""``softprep build``: plan the shards, compute them in parallel, resume what an interruption left.

No pixel code lives here: :func:`process_sample` calls :mod:`softprep.resample` with the plans
of :mod:`softprep.plan`; writes go through :mod:`softprep.store`. A job owns one shard (up to
``shard_size`` images of one size bucket) at every target, so no two processes ever write the
same shard file; the parent alone writes the per-image records and ``done`` marks.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np

from softprep.datasets import Dataset, Sample
from softprep.datasets.base import label_digests, stored_sample
from softprep.errors import SoftprepError, printable
from softprep.kernels import DEFAULT_KERNEL, KERNELS
from softprep.location import is_remote, location
from softprep.parallel import default_jobs, die_with_parent, run_tasks, stop_if_orphaned
from softprep.plan import ResamplingPlan, Target, parse_targets
from softprep.resample import nearest_labels, prepare_label, resize_image, soft_label
from softprep.softlabel import pack
from softprep.store import (
    FORMAT_VERSION, RESERVED_SUFFIXES, foreign_folder, softprep_marker,
    DEFAULT_SHARD_SIZE, SampleRecords, SampleResult, SplitSpec, StoreSpec, Task, TargetResult, create_store_atomically,
    delete_store, mark_complete, write_split_attrs, open_store, remove_partial_files, store_lock, unfinished_creation, write_records,
    write_shard,
)

#: Largest image, and largest sum of one image's outputs over all targets, a build accepts (pixels):
#: about 1 GiB of worker memory (a 24 MP image at 0.125 0.25 0.5 peaks at 0.8 GiB). ``--max-pixels``.
DEFAULT_MAX_PIXELS = 32_000_000



def process_sample(dataset: Dataset, image: np.ndarray, label: np.ndarray, plans: dict[str, ResamplingPlan],
                   image_plans: dict[str, ResamplingPlan] | None = None) -> SampleResult:
    """Colour image, soft label and NN label of one decoded pair at every planned target.

    Args:
        image: ``(H, W, 3) uint8``.
        label: ``(H, W) uint8`` train ids.
        plans: target name -> the image's :class:`ResamplingPlan` (``StoreSpec.plan``).
        image_plans: the colour image's plans when its kernel differs (``StoreSpec.image_plan``).
    """
    prepared = prepare_label(label, dataset.num_classes, dataset.ignore_index)
    image_plans = image_plans or plans
    results = {
        target: TargetResult(
            image=resize_image(image, image_plans[target].rows, image_plans[target].cols),
            soft=pack(soft_label(prepared, plan.rows, plan.cols)),
            nn=nearest_labels(label, plan.nearest_rows, plan.nearest_cols),
            nn_floor=nearest_labels(label, plan.floor_rows, plan.floor_cols),
        )
        for target, plan in plans.items()
    }
    return SampleResult(prepared.class_counts(), results)


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
    enlarging = [t.name for t in targets if t.factor is not None and t.factor > 1]
    if enlarging and not allow_upsampling:
        raise SoftprepError(f"--scales {' '.join(enlarging)}: a factor above 1 enlarges every image "
                            f"({enlarging[0]}x each side); pass --allow-upsampling if that is intended, "
                            "or give factors <= 1 (e.g. 0.125 0.25 0.5)")
    splits = list(splits) if splits else dataset.splits()
    if not splits:
        raise SoftprepError(f"{dataset.root}: no {dataset.name} splits found; is --root the dataset folder?")
    spec = StoreSpec(dataset.name, list(dataset.classes), [list(c) for c in dataset.palette],
                     dataset.ignore_index, kernel, antialias, [t.name for t in targets], shard_size,
                     image_kernel=image_kernel or kernel)
    for split in splits:
        spec.splits[split] = split_spec(dataset, split)
    for split, found in spec.splits.items():  # every plan once now: an impossible size fails before any work
        for i, (height, width) in enumerate(found.sizes):
            where = dataset.root / found.images[i]
            vanishing = [t for t in targets if t.factor is not None and math.floor(min(height, width) * t.factor) < 1]
            if vanishing:
                raise SoftprepError(f"{where}: --scales {vanishing[0].name} makes this {width}x{height} image smaller than "
                                    f"one pixel (floor(side x factor) = 0); use factors of at least 1/{min(height, width)}")
            if height * width > max_pixels:
                raise SoftprepError(f"{where}: {width}x{height} is {height * width / 1e6:.1f} megapixels, over the "
                                    f"--max-pixels limit of {max_pixels / 1e6:g} (about 1 GiB per worker); raise "
                                    "--max-pixels if each worker has the memory, or remove the file")
            plans = [spec.plan(split, i, target) for target in spec.targets]
            outputs = sum(p.size[0] * p.size[1] for p in plans)
            if outputs > max_pixels:
                sizes = ", ".join(f"{t} -> {p.size[1]}x{p.size[0]}" for t, p in zip(spec.targets, plans))
                raise SoftprepError(f"{where}: its outputs ({sizes}, WxH) total {outputs / 1e6:.1f} megapixels, over the "
                                    f"--max-pixels limit of {max_pixels / 1e6:g}; use smaller targets")
    return spec


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
    return SplitSpec(
        ids=[s.id for s in samples],
        images=[str(s.image.relative_to(dataset.root)) for s in samples],
        labels=[str(s.label.relative_to(dataset.root)) for s in samples],
        sizes=[list(dataset.size(s)) for s in samples],
        label_digests=label_digests(samples),
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
            return f"{split} image {printable(found.ids[i])} is {b[1]}x{b[0]} here, {a[1]}x{a[0]} in the store (WxH)"
    for i, (a, b) in enumerate(zip(stored.label_digests or [], found.label_digests or [])):
        if a != b and (built is None or built[i]):
            return f"{split} image {printable(found.ids[i])}: its label file {printable(found.labels[i])} differs"
    return None


def upsampling_notes(spec: StoreSpec) -> list[str]:
    """One line per target that makes images larger, with the first image's sizes."""
    notes = []
    for target in spec.targets:
        for split, split_spec in spec.splits.items():
            grown = [i for i in range(len(split_spec.ids)) if spec.plan(split, i, target).size[0] > split_spec.sizes[i][0]]
            if grown:
                plan = spec.plan(split, grown[0], target)
                notes.append(f"note: target {target} upsamples {len(grown)} {split} image(s), e.g. {split_spec.ids[grown[0]]} "
                             f"{plan.source[1]}x{plan.source[0]} -> {plan.size[1]}x{plan.size[0]} (WxH)")
    return notes


def _refuse_duplicate_ids(samples: list[Sample]) -> None:
    seen: dict[str, Sample] = {}
    for sample in samples:
        if sample.id in seen:
            raise SoftprepError(f"{sample.image}: same id {sample.id!r} as {seen[sample.id].image} (a duplicated or "
                                "symlinked folder?); remove one of them")
        seen[sample.id] = sample


def build_shard(store_path: str, dataset: Dataset, spec: StoreSpec, task: Task,
                builder_pid: int | None = None, read_ahead: "bool | PairReader" = False) -> tuple[str, list[SampleRecords]]:
    """Compute and write one shard's pixels; returns its split and the records of its images.

    ``builder_pid``: the process that runs the build. A worker whose builder died stops before the
    next image and never writes (the build's lock died with the builder).
    ``read_ahead``: True decodes this shard's next image in a thread while one is computed (worth
    it when a core would otherwise idle); a :class:`PairReader` does so across shards (in-process builds).
    """
    die_with_parent(builder_pid)
    split_spec = spec.splits[task.split]
    samples = [stored_sample(dataset, split_spec, i) for i in task.indices]
    reader = read_ahead if isinstance(read_ahead, PairReader) else PairReader(dataset, samples if read_ahead else [])
    results = []
    for i, sample in zip(task.indices, samples):
        stop_if_orphaned(builder_pid)
        image, label = reader.read(sample)
        if [*label.shape] != list(split_spec.sizes[i]):
            raise SoftprepError(f"{sample.label}: size changed since the build was planned; restart with --overwrite")
        plans = {t: spec.plan(task.split, i, t) for t in spec.targets}
        image_plans = {t: spec.image_plan(task.split, i, t) for t in spec.targets} if spec.image_kernel != spec.kernel else None
        results.append(process_sample(dataset, image, label, plans, image_plans))
    if reader is not read_ahead:
        reader.close()
    stop_if_orphaned(builder_pid)
    write_shard(store_path, spec, task, results)
    return task.split, [SampleRecords.of(i, r) for i, r in zip(task.indices, results)]


class PairReader:
    """Decodes ``order`` (samples in the order they will be asked for) one ahead in a thread: the PNG
    decoder releases the GIL, so the next decode overlaps this image's compute and writes. A sample
    asked for out of order is simply decoded then."""

    def __init__(self, dataset: Dataset, order: list[Sample]):
        self._dataset, self._order, self._next = dataset, list(order), 0
        self._pool = ThreadPoolExecutor(max_workers=1) if len(self._order) > 1 else None
        self._pending = None
        self._submit()

    def _submit(self) -> None:
        self._pending = None
        if self._pool is not None and self._next < len(self._order):
            sample = self._order[self._next]
            self._pending = (sample, self._pool.submit(self._dataset.read_pair, sample))
            self._next += 1

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """``(image, label)`` of ``sample``."""
        if self._pending is None or self._pending[0] != sample:
            return self._dataset.read_pair(sample)
        future = self._pending[1]
        self._submit()
        return future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def build(
    dataset: Dataset,
    out: str | Path,
    targets: Iterable[Target | str | float],
    kernel: str = DEFAULT_KERNEL,
    antialias: bool = False,
    splits: Iterable[str] | None = None,
    jobs: int | None = None,
    overwrite: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: Callable[[int, int], None] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    note: Callable[[str], None] | None = None,
    read_ahead: bool = True,
    scheduler: str | None = None,
    image_kernel: str | None = None,
    allow_upsampling: bool = False,
) -> dict:
    """Build (or resume) a store at ``out``.

    Args:
        targets: resolutions: factors (``0.125``) and/or names (``"short512"``, ``"fit512x1024"``).
        jobs: worker processes (``None``: all cores; 1: in-process).
        overwrite: delete an existing store at ``out`` first.
        max_pixels: refuse images (or one image's outputs summed) larger than this.
        note: called with one-line notes before work starts (targets that upsample, with their sizes).
        progress: called as ``progress(images_done_now, images_total)`` after each shard.
        read_ahead: decode the next image in a thread while one is computed, where a core is free.
        image_kernel: resample the colour images with this kernel instead of ``kernel`` (Table IV).
        allow_upsampling: accept scale factors above 1 (refused by default: see :func:`plan_store`).
        scheduler: run the shards on a Dask cluster: its address (``tcp://host:8786``), or ``"local"``
            for a ``LocalCluster`` of ``jobs`` worker processes (:mod:`softprep.parallel`).

    Returns:
        ``{"built": images written now, "skipped": images already done, "total": all images}``.

    Raises:
        SoftprepError: bad input (the finished shards stay in the store), a store made with other
            settings at ``out`` (unless ``overwrite``), another build on ``out``, a full disk or
            a folder that cannot be written (one line each; rerun the same command to resume).
    """
    out = location(out)
    if not is_remote(out):
        out = Path(os.path.realpath(out))  # a link to a store: lock, resume and delete the store itself
    _refuse_unsafe_out(out, dataset)
    spec = plan_store(dataset, splits, targets, kernel, antialias, shard_size, max_pixels, image_kernel, allow_upsampling)
    if note:
        for text in upsampling_notes(spec):
            note(text)
    with store_lock(out):
        try:
            return _build_locked(dataset, out, spec, jobs, overwrite, progress, read_ahead, scheduler)
        except OSError as error:
            where = error.filename or out
            raise SoftprepError(f"{where}: {error.strerror or error} while building {out}; fix that (free space, "
                                "permissions), then rerun the same command to resume") from None


def _refuse_unsafe_out(out, dataset: Dataset) -> None:
    """``--out`` may not be one of softprep's temporary names, nor the dataset root or a folder
    holding it (whose deletion would take the dataset with it)."""
    if out.name.endswith(RESERVED_SUFFIXES):
        raise SoftprepError(f"{printable(out)}: names ending in {', '.join(RESERVED_SUFFIXES)} are softprep's temporary "
                            "folders; choose another --out")
    if is_remote(out) or is_remote(dataset.root):
        return
    root = Path(os.path.realpath(dataset.root))
    if out == root or out in root.parents:
        raise SoftprepError(f"{printable(out)}: --out is the dataset root {printable(root)} or a folder holding it; choose "
                            "an --out outside the dataset (e.g. {}.zarr beside it)".format(printable(root.name)))


def _build_locked(dataset: Dataset, out: Path, spec: StoreSpec, jobs: int | None, overwrite: bool,
                  progress: Callable[[int, int], None] | None, read_ahead: bool, scheduler: str | None) -> dict:
    if overwrite or unfinished_creation(out):
        delete_store(out)
    if out.exists() and not _check_resumable(out, spec):
        delete_store(out)  # another build's store with no finished image: nothing to lose
    if out.exists():
        remove_partial_files(out)
    else:
        create_store_atomically(out, spec)

    store = open_store(out)
    todo, skipped = [], 0
    for split in spec.splits:
        done = store.done(split)
        for task in spec.tasks(split):
            if done[list(task.indices)].all():
                skipped += len(task.indices)
            else:
                todo.append(task)
    total = sum(len(s.ids) for s in spec.splits.values())
    if progress:
        progress(skipped, total)

    built = 0
    workers = min(default_jobs(jobs), max(len(todo), 1))
    reader = _read_ahead(dataset, spec, todo, workers) if read_ahead and not scheduler else False
    # Cluster workers are no children of this process: they cannot watch it (the orphan check).
    builder = None if scheduler else os.getpid()
    calls = [(str(out), dataset, spec, task, builder, reader) for task in todo]
    try:
        for split, records in run_tasks(build_shard, calls, jobs, f"{out}: finished shards are kept, rerun the same "
                                        "command to resume", scheduler=scheduler):
            write_records(out, split, records)
            built += len(records)
            if progress:
                progress(len(records), total)
    finally:
        if isinstance(reader, PairReader):
            reader.close()
    mark_complete(out, spec)
    return {"built": built, "skipped": skipped, "total": total}


def _read_ahead(dataset: Dataset, spec: StoreSpec, todo: list[Task], workers: int) -> "bool | PairReader":
    """Decoding ahead pays only when a core would otherwise idle: in-process, one reader across all
    shards; in worker processes, one per shard; none when every core runs a worker."""
    if workers >= (os.cpu_count() or 1):
        return False
    if workers > 1:
        return True
    return PairReader(dataset, [stored_sample(dataset, spec.splits[t.split], i) for t in todo for i in t.indices])


def _check_resumable(out: Path, spec: StoreSpec) -> bool:
    """True when the store at ``out`` can be resumed. A store made with other settings, in another
    format or from other label files is refused, unless not one image of it is finished (nothing to
    lose: False, the caller starts it again). A folder softprep did not make is refused.
    """
    if softprep_marker(out) is None:
        raise foreign_folder(out, "build into")
    store = open_store(out)
    existing = store.spec
    if not any(store.done(split).any() for split in store.splits):
        return spec == existing
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
    for split in fixed:  # label files of unbuilt images changed (fixed after a failed build): record the new ones
        existing.splits[split].label_digests = spec.splits[split].label_digests
    mine, theirs = asdict(spec), asdict(existing)
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
