"""``softprep build``: plan the shards, compute them in parallel, resume what an interruption left.

No pixel code lives here: :func:`process_sample` calls :mod:`softprep.resample` with the plans
of :mod:`softprep.plan`; writes go through :mod:`softprep.store`. A job owns one shard (up to
``shard_size`` images of one size bucket) at every target, so no two processes ever write the
same shard file; the parent alone writes the per-image records and ``done`` marks.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import zarr

from softprep.datasets import Dataset, Sample
from softprep.errors import SoftprepError
from softprep.kernels import DEFAULT_KERNEL, KERNELS
from softprep.parallel import run_tasks
from softprep.plan import ResamplingPlan, Target, parse_targets
from softprep.resample import nearest_labels, prepare_label, resize_image, soft_label
from softprep.store import (
    DEFAULT_SHARD_SIZE, SampleRecords, SampleResult, SplitSpec, StoreSpec, Task, TargetResult, create_store, delete_store, open_store,
    remove_partial_files, write_records, write_shard,
)



def process_sample(dataset: Dataset, image: np.ndarray, label: np.ndarray, plans: dict[str, ResamplingPlan]) -> SampleResult:
    """Colour image, soft label and NN label of one decoded pair at every planned target.

    Args:
        image: ``(H, W, 3) uint8``.
        label: ``(H, W) uint8`` train ids.
        plans: target name -> the image's :class:`ResamplingPlan` (``StoreSpec.plan``).
    """
    prepared = prepare_label(label, dataset.num_classes, dataset.ignore_index)
    results = {
        target: TargetResult(
            image=resize_image(image, plan.rows, plan.cols),
            soft=soft_label(prepared, plan.rows, plan.cols),
            nn=nearest_labels(label, plan.nearest_rows, plan.nearest_cols),
        )
        for target, plan in plans.items()
    }
    return SampleResult(prepared.class_counts(), results)


def plan_store(dataset: Dataset, splits: Iterable[str] | None, targets: Iterable[Target | str | float], kernel: str,
               antialias: bool, shard_size: int = DEFAULT_SHARD_SIZE) -> StoreSpec:
    """List every pair and its size (from file headers) into a :class:`StoreSpec`."""
    if kernel not in KERNELS:
        raise SoftprepError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    targets = parse_targets(targets)
    if not targets:
        raise SoftprepError("no target resolution: pass --scales (e.g. 0.125 0.25 0.5), --short-side or --fit")
    if shard_size < 1:
        raise SoftprepError(f"shard size must be >= 1, got {shard_size}")
    splits = list(splits) if splits else dataset.splits()
    if not splits:
        raise SoftprepError(f"{dataset.root}: no {dataset.name} splits found; is --root the dataset folder?")
    spec = StoreSpec(dataset.name, list(dataset.classes), [list(c) for c in dataset.palette],
                     dataset.ignore_index, kernel, antialias, [t.name for t in targets], shard_size)
    for split in splits:
        samples = dataset.samples(split)
        if not samples:
            raise SoftprepError(f"{dataset.root}: split {split!r} has no image/label pairs; check --root and --splits")
        spec.splits[split] = SplitSpec(
            ids=[s.id for s in samples],
            images=[str(s.image.relative_to(dataset.root)) for s in samples],
            labels=[str(s.label.relative_to(dataset.root)) for s in samples],
            sizes=[list(dataset.size(s)) for s in samples],
        )
    for split in spec.splits:  # every plan once now: an impossible size fails before any work
        for i in range(len(spec.splits[split].ids)):
            for target in spec.targets:
                spec.plan(split, i, target)
    return spec


def build_shard(store_path: str, dataset: Dataset, spec: StoreSpec, task: Task) -> tuple[str, list[SampleRecords]]:
    """Compute and write one shard's pixels; returns its split and the records of its images."""
    split_spec = spec.splits[task.split]
    results = []
    for i in task.indices:
        sample = stored_sample(dataset, split_spec, i)
        image, label = dataset.read_pair(sample)
        if [*label.shape] != list(split_spec.sizes[i]):
            raise SoftprepError(f"{sample.label}: size changed since the build was planned; restart with --overwrite")
        results.append(process_sample(dataset, image, label, {t: spec.plan(task.split, i, t) for t in spec.targets}))
    write_shard(store_path, spec, task, results)
    return task.split, [SampleRecords.of(i, r) for i, r in zip(task.indices, results)]


def stored_sample(dataset: Dataset, split_spec: SplitSpec, i: int) -> Sample:
    """The :class:`Sample` (paths under ``dataset.root``) of image ``i`` of a planned split."""
    return Sample(split_spec.ids[i], dataset.root / split_spec.images[i], dataset.root / split_spec.labels[i])


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
) -> dict:
    """Build (or resume) a store at ``out``.

    Args:
        targets: resolutions: factors (``0.125``) and/or names (``"short512"``, ``"fit512x1024"``).
        jobs: worker processes (``None``: all cores; 1: in-process).
        overwrite: delete an existing store at ``out`` first.
        progress: called as ``progress(images_done_now, images_total)`` after each shard.

    Returns:
        ``{"built": images written now, "skipped": images already done, "total": all images}``.

    Raises:
        SoftprepError: bad input (the finished shards stay in the store) or a store made
            with other settings at ``out`` (unless ``overwrite``).
    """
    out = Path(out)
    spec = plan_store(dataset, splits, targets, kernel, antialias, shard_size)
    if overwrite:
        delete_store(out)
    if out.exists():
        _check_resumable(out, spec)
        remove_partial_files(out)
    else:
        create_store(out, spec)

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
    calls = [(str(out), dataset, spec, task) for task in todo]
    for split, records in run_tasks(build_shard, calls, jobs, f"{out}: finished shards are kept, rerun the same command to resume"):
        write_records(out, split, records)
        built += len(records)
        if progress:
            progress(len(records), total)
    root = zarr.open_group(str(out), mode="r+")
    root.attrs["softprep"] = spec.root_attrs(complete=True)
    return {"built": built, "skipped": skipped, "total": total}


def _check_resumable(out: Path, spec: StoreSpec) -> None:
    """Refuse to touch a store made with other settings."""
    try:
        existing = open_store(out).spec
    except SoftprepError:
        raise SoftprepError(f"{out}: exists and is not a softprep store; choose another --out or pass --overwrite") from None
    mine, theirs = asdict(spec), asdict(existing)
    differing = [key for key in mine if mine[key] != theirs[key]]
    if differing:
        detail = ", ".join(f"{k}: store has {_short(theirs[k])}, asked {_short(mine[k])}" for k in differing)
        raise SoftprepError(f"{out}: store was built with other settings ({detail}); pass --overwrite to rebuild it")


def _short(value) -> str:
    text = str(value)
    return text if len(text) < 60 else text[:57] + "..."
