"""``softprep build``: plan the shards, compute them in parallel, resume what an interruption left.

No pixel code lives here: :func:`process_sample` calls :mod:`softprep.resample` with the plans
of :mod:`softprep.plan`; writes go through :mod:`softprep.store`. A job owns one shard (up to
``shard_size`` images of one size bucket) at every target, so no two processes ever write the
same shard file; the parent alone writes the per-image records and ``done`` marks.
"""

from __future__ import annotations

import math
import os
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
from softprep.resample import nearest_labels, prepare_label, resample_axes, resize_image, soft_label_axes, threshold_labels
from softprep.softlabel import pack
from softprep.store import (
    DEFAULT_SHARD_SIZE, RESERVED_SUFFIXES, SampleRecords, SampleResult, StoreSpec, Task, TargetResult,
    create_store_atomically, delete_store, mark_complete, open_store, remove_partial_files, store_lock,
    unfinished_creation, write_records, write_shard,
)
from softprep.store.planning import (  # noqa: F401 - plan_store, split_spec, source_difference re-exported
    DEFAULT_MAX_PIXELS, check_resumable, plan_store, source_difference, split_spec, upsampling_notes,
)



def process_sample(dataset: Dataset, image: np.ndarray, label: np.ndarray, plans: dict[str, ResamplingPlan],
                   image_plans: dict[str, ResamplingPlan] | None = None) -> SampleResult:
    """Colour image, soft label and NN labels of one decoded pair at every planned target.

    Args:
        image: ``(H, W, 3) uint8`` (a volume: ``(X, Y, Z, C) float32`` intensities).
        label: ``(H, W) uint8`` train ids (a volume: ``(X, Y, Z)``).
        plans: target name -> the image's :class:`ResamplingPlan` (``StoreSpec.plan``).
        image_plans: the colour image's plans when its kernel differs (``StoreSpec.image_plan``).
    """
    prepared = prepare_label(label, dataset.num_classes, dataset.ignore_index)
    image_plans = image_plans or plans
    results = {
        target: TargetResult(
            image=_resized(image, image_plans[target].axes),
            soft=pack(soft_label_axes(prepared, plan.axes)),
            nn=nearest_labels(label, *plan.nearest),
            nn_floor=nearest_labels(label, *plan.floor),
            nnunet=threshold_labels(soft_label_axes(prepared, plan.linear)) if len(plan.size) == 3 else None,
        )
        for target, plan in plans.items()
    }
    return SampleResult(prepared.class_counts(), results)


def _resized(image: np.ndarray, taps) -> np.ndarray:
    """An image resampled with ``taps``: ``uint8`` colour rounded and clipped, float intensities kept as ``float32``."""
    if image.dtype == np.uint8:
        return resize_image(image, *taps) if len(taps) == 2 else np.clip(np.rint(resample_axes(image, taps)), 0, 255).astype(np.uint8)
    return resample_axes(image.astype(np.float32, copy=False), taps).astype(np.float32, copy=False)


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
        plans = {t.name: spec.plan(task.split, i, t) for t in spec.targets}
        image_plans = ({t.name: spec.image_plan(task.split, i, t) for t in spec.targets}
                       if spec.image_kernel != spec.kernel else None)
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
    if out.exists() and not check_resumable(out, spec):
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


