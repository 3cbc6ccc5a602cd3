"""``softprep build``: plan the shards, compute them in parallel, resume what an interruption left.

No pixel code lives here: :func:`process_sample` calls :mod:`softprep.resample`; writes go
through :mod:`softprep.store`. A job owns one shard (``shard_size`` consecutive images of a
split) for every scale, so no two processes ever write the same shard file.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import zarr

from softprep.datasets import Dataset, Sample
from softprep.errors import SoftprepError
from softprep.parallel import run_tasks
from softprep.kernels import KERNELS, axis_weights, output_size
from softprep.resample import nearest_labels, prepare_label, resize_image, soft_label
from softprep.store import (
    SampleResult, ScaleResult, SplitSpec, StoreSpec, create_store, delete_store, open_store,
    remove_partial_files, write_shard,
)

DEFAULT_SHARD_SIZE = 8


def process_sample(dataset: Dataset, image: np.ndarray, label: np.ndarray, spec: StoreSpec) -> SampleResult:
    """Colour image, soft label and NN label of one decoded pair at every scale of ``spec``.

    Args:
        image: ``(H, W, 3) uint8``.
        label: ``(H, W) uint8`` train ids.
    """
    h, w = label.shape
    prepared = prepare_label(label, dataset.num_classes, dataset.ignore_index)
    counts = np.bincount(prepared.codes.ravel(), minlength=dataset.num_classes + 1)[: dataset.num_classes]
    scales = {}
    for scale in spec.scales:
        out_h, out_w = output_size(h, scale), output_size(w, scale)
        wy = axis_weights(spec.kernel, h, out_h, spec.antialias)
        wx = axis_weights(spec.kernel, w, out_w, spec.antialias)
        nearest_y, nearest_x = axis_weights("nearest", h, out_h), axis_weights("nearest", w, out_w)
        scales[scale] = ScaleResult(
            image=resize_image(image, wy, wx),
            soft=soft_label(prepared, wy, wx),
            nn=nearest_labels(label, nearest_y, nearest_x),
        )
    return SampleResult(counts.astype(np.int64), scales)


def plan(dataset: Dataset, splits: Iterable[str] | None, scales: Iterable[float], kernel: str,
         antialias: bool, shard_size: int = DEFAULT_SHARD_SIZE) -> StoreSpec:
    """List every pair and its size (from file headers) into a :class:`StoreSpec`."""
    if kernel not in KERNELS:
        raise SoftprepError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    scales = sorted({float(s) for s in scales})
    if not scales or min(scales) <= 0:
        raise SoftprepError(f"scales must be > 0, got {scales}")
    if shard_size < 1:
        raise SoftprepError(f"shard size must be >= 1, got {shard_size}")
    splits = list(splits) if splits else dataset.splits()
    if not splits:
        raise SoftprepError(f"{dataset.root}: no {dataset.name} splits found; is --root the dataset folder?")
    spec = StoreSpec(dataset.name, list(dataset.classes), [list(c) for c in dataset.palette],
                     dataset.ignore_index, kernel, antialias, scales, shard_size)
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
    return spec


def build_shard(store_path: str, dataset: Dataset, spec: StoreSpec, split: str, start: int) -> int:
    """Compute and write one shard; returns the number of images written."""
    split_spec = spec.splits[split]
    stop = min(start + spec.shard_size, len(split_spec.ids))
    results = []
    for i in range(start, stop):
        sample = stored_sample(dataset, split_spec, i)
        image, label = dataset.read_pair(sample)
        if [*label.shape] != split_spec.sizes[i]:
            raise SoftprepError(f"{sample.label}: size changed since the build was planned; restart with --overwrite")
        results.append(process_sample(dataset, image, label, spec))
    write_shard(store_path, split, start, results)
    return stop - start


def stored_sample(dataset: Dataset, split_spec: SplitSpec, i: int) -> Sample:
    """The :class:`Sample` (paths under ``dataset.root``) of image ``i`` of a planned split."""
    return Sample(split_spec.ids[i], dataset.root / split_spec.images[i], dataset.root / split_spec.labels[i])


def build(
    dataset: Dataset,
    out: str | Path,
    scales: Iterable[float],
    kernel: str = "bilinear",
    antialias: bool = False,
    splits: Iterable[str] | None = None,
    jobs: int | None = None,
    overwrite: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Build (or resume) a store at ``out``.

    Args:
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
    spec = plan(dataset, splits, scales, kernel, antialias, shard_size)
    if overwrite:
        delete_store(out)
    if out.exists():
        _check_resumable(out, spec)
        remove_partial_files(out)
    else:
        create_store(out, spec)

    store = open_store(out)
    todo, skipped = [], 0
    for split, split_spec in spec.splits.items():
        done = store.done(split)
        for start in range(0, len(split_spec.ids), shard_size):
            if done[start:start + shard_size].all():
                skipped += len(done[start:start + shard_size])
            else:
                todo.append((split, start))
    total = sum(len(s.ids) for s in spec.splits.values())
    if progress:
        progress(skipped, total)

    built = 0
    tasks = [(str(out), dataset, spec, split, start) for split, start in todo]
    for count in run_tasks(build_shard, tasks, jobs, f"{out}: finished shards are kept, rerun the same command to resume"):
        built += count
        if progress:
            progress(count, total)
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
