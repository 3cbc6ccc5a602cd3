"""``softprep verify``: read every chunk and re-derive every recorded statistic.

Checks, per split:
  * the store is marked complete, its attributes hash to the digest recorded when it was completed,
    and every image's shard is written (``done``) and on disk;
  * every chunk of every array decodes (zstd + crc32c: a flipped byte fails here);
  * per image and target: recorded ``sizes`` and ``denominator`` equal the resampling plan's; slot classes are train ids or empty, empty slots weigh 0, weights lie
    in [0, 1] (numerators in [0, denominator]), slots are sorted by weight, ``planes`` covers
    the used slots, per-pixel sums are <= 1, recorded ``mass`` (``mass_numerator``) and ``nn_counts`` equal the ones
    recomputed from the stored soft label and NN map;
  * with the dataset root: recorded full-resolution ``counts`` and each pixel's weight sum equal
    the ones recomputed from the label files (the valid fraction under the store's kernel).

Every failed check is one line naming split, target, image and array; no check stops the others.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from softprep.datasets.base import stored_sample
from softprep.errors import SoftprepError, printable
from softprep.datasets import get_dataset
from softprep.parallel import batches, run_tasks
from softprep.plan import output_affine
from softprep.resample import prepare_label, soft_label_axes, threshold_labels
from softprep.softlabel import IGNORE_INDEX, MIXED, PackedSoftLabel, SoftLabel, unpack
from softprep.location import is_remote
from softprep.store import Store, TargetView, attrs_digest, map_arrays, open_store, shard_file

LIST_ARRAYS = ("mixed_classes", "mixed_weights")
RECORD_ARRAYS = ("sizes", "denominator", "planes", "mass", "mass_numerator", "nn_counts", "nn_floor_counts")


def record_arrays(store: Store, split: str | None = None) -> tuple[str, ...]:
    """The per-image record arrays of each target of ``store`` (format 3 kept no ``nn_floor_counts``;
    a volume split adds each output grid's ``affine`` and nnU-Net's ``nnunet_counts``)."""
    names = RECORD_ARRAYS if store.format_version >= 4 else RECORD_ARRAYS[:-1]
    if split is not None and store.spec.splits[split].affines is not None:
        names += ("affine", "nnunet_counts")
    return names
FLOAT_TOLERANCE = 1e-5


def verify(path: str | Path, root: str | Path | None = None, jobs: int | None = None, batch_size: int = 8,
           progress: Callable[[int, int], None] | None = None) -> list[str]:
    """All problems found in the store at ``path`` (empty when it is sound), one line each.

    ``root``: the dataset folder, to also check full-resolution counts and valid fractions.
    ``progress(images_done_now, images_total)`` is called per batch.
    """
    store = open_store(path)
    problems = [] if store.complete else [f"{store.path}: build not finished (rerun the same `softprep build`)"]
    problems += _check_attributes(store)
    if root is not None:
        dataset = get_dataset(store.spec.dataset, root)  # a clear error now, not one per image
        for split in store.splits:
            problems += _check_label_files(store, split, dataset)
    total = sum(len(store.spec.splits[s].ids) for s in store.splits)
    tasks = []
    for split in store.splits:
        problems += _check_split_records(store, split)
        n = len(store.spec.splits[split].ids)
        tasks += [(str(store.path), split, r, root) for r in batches(n, batch_size)]
    for batch_problems, images in run_tasks(check_images, tasks, jobs):
        problems += batch_problems
        if progress:
            progress(images, total)
    return problems


def check_source(store: Store, split: str, dataset) -> None:
    """Refuse a dataset whose files are not those ``split`` of the store was built from: ids, sizes
    and (format 4) each label file's digest (one read of every label file).

    Raises:
        SoftprepError: one line naming the first image that differs and what to pass instead.
    """
    from softprep.build import source_difference, split_spec

    difference = source_difference(split, store.spec.splits[split], split_spec(dataset, split))
    if difference:
        raise SoftprepError(f"{printable(dataset.root)}: not the dataset {printable(store.path)} was built from "
                            f"({difference}); pass the --root the store was built from")


def _check_label_files(store: Store, split: str, dataset) -> list[str]:
    """One line per label file under the root that is not the one the store was built from (its
    digest differs), or one line for the split when the root holds other images altogether."""
    from softprep.build import source_difference, split_spec

    stored, found = store.spec.splits[split], split_spec(dataset, split)
    if stored.ids != found.ids or stored.sizes != found.sizes:
        return [f"{split}: {source_difference(split, stored, found)}: the root holds other images than the store"]
    return [f"{split}: image {printable(found.ids[i])} (#{i}): label file {printable(found.labels[i])} differs from "
            "the one the store was built from" for i, (a, b) in enumerate(zip(stored.label_digests or [], found.label_digests))
            if a != b]


def _check_attributes(store: Store) -> list[str]:
    """The attributes (classes, ids, paths, sizes, targets, ...) are those the build finished with."""
    recorded = store.recorded_digest
    if not store.complete or recorded is None:
        return []
    try:
        digest = attrs_digest(store.root)
    except Exception as error:  # noqa: BLE001 - a group whose metadata cannot be read is a finding
        return [f"{store.path}: attributes cannot be read ({_why(error)})"]
    if digest != recorded:
        return [f"{store.path}: attributes differ from those recorded when the build finished (class names, ids, "
                "paths or sizes were changed); rebuild the store with --overwrite"]
    return []


def _check_split_records(store: Store, split: str) -> list[str]:
    """The per-image record arrays decode, every image is built, and the planned sizes are recorded."""
    problems = []
    for name in ("counts", "done"):
        problems += _decode_all(store, f"{split}/{name}", split)
    done = store.done(split)
    ids = store.spec.splits[split].ids
    problems += [f"{split}: image {ids[i]} (#{i}) not built (rerun `softprep build`)" for i in np.flatnonzero(~done)]
    for target in store.targets:
        for name in record_arrays(store, split):
            problems += _decode_all(store, f"{split}/{target}/{name}", split)
    return problems


def _decode_all(store: Store, array_path: str, split: str) -> list[str]:
    """Decode a per-image record array chunk by chunk; one line per chunk that is missing or fails."""
    try:
        array = store.root[array_path]
    except Exception as error:  # noqa: BLE001 - broken metadata is a finding, not a crash
        return [f"{array_path}: array cannot be opened ({_why(error)})"]
    step, problems = array.chunks[0] or 1, []
    ids = store.spec.splits[split].ids
    for start in range(0, array.shape[0], step):
        stop = min(start + step, array.shape[0])
        where = f"{array_path}: images {ids[start]}..{ids[stop - 1]} (#{start}-{stop - 1})"
        key = array.metadata.encode_chunk_key((start // step,) + (0,) * (array.ndim - 1))
        if not (store.path / array.path / key).is_file():
            problems.append(f"{where}: chunk file {key} missing")
            continue
        try:
            array[start:start + step]
        except Exception as error:  # noqa: BLE001 - any decode failure is a finding
            problems.append(f"{where}: cannot be read ({_why(error)})")
    return problems


def check_images(store_path: str, split: str, indices: range, root: str | Path | None) -> tuple[list[str], int]:
    """Problems of images ``indices`` of a split at every target, and how many images were checked."""
    store = open_store(store_path)
    done = store.done(split)
    dataset = get_dataset(store.spec.dataset, root) if root is not None else None
    views = []
    for target in store.targets:
        try:
            views.append(store.samples(split, target))
        except Exception:  # noqa: BLE001 - an unreadable sizes/denominator chunk is reported per split
            pass
    problems = []
    try:
        counts = store.counts(split)
    except Exception:  # noqa: BLE001 - an unreadable counts chunk is reported per split
        counts = None
    for i in (i for i in indices if done[i]):  # images not built are reported once per split
        label = _check_counts(store, dataset, split, i, problems) if dataset is not None else None
        if counts is not None:
            problems += [f"{split}: image {store.spec.splits[split].ids[i]} (#{i}): counts: {p}"
                         for p in _check_counts_bounds(counts[i], store.spec.splits[split].sizes[i])]
        for view in views:
            where = f"{split}/{view.target}: image {view.ids[i]} (#{i})"
            try:
                soft, found = _read_sample(store, view, i)
            except Exception as error:  # noqa: BLE001 - e.g. a bucket array whose zarr.json is broken
                problems.append(f"{where}: cannot be read ({_why(error)})")
                continue
            problems += [f"{where}: {p}" for p in found]
            if counts is not None and soft is not None and soft.exact and store.spec.kernel == "area":
                problems += [f"{where}: {p}" for p in _check_area_counts(counts[i], store.spec.splits[split].sizes[i],
                                                                         soft)]
            if label is not None and soft is not None:
                problems += [f"{where}: {p}" for p in _check_valid_fraction(store, split, i, view.target, label, soft)]
                problems += [f"{where}: {p}" for p in _check_nnunet_counts(store, view, i, label)]
    return problems, len(indices)


def _check_counts_bounds(counts: np.ndarray, size, every_voxel: bool = False, name: str = "recorded class counts") -> list[str]:
    """Recorded ``counts (C,)`` are pixel counts of an ``(H, W)`` image: none below 0, together at
    most ``H W`` (``every_voxel``: exactly, a rule that labels every voxel)."""
    total, pixels = int(counts.astype(object).sum()), math.prod(int(v) for v in size)
    if (counts < 0).any() or total > pixels or (every_voxel and total != pixels):
        return [f"{name} (min {int(counts.min())}, sum {total}) are not pixel counts of a "
                f"{'x'.join(map(str, size))} image; rebuild the store"]
    return []


def _check_area_counts(counts: np.ndarray, size, soft: SoftLabel) -> list[str]:
    """Under the exact box filter every full-resolution pixel gives its class the same weight
    ``h w / (H W)``: the stored soft label's class numerators times ``H W`` equal the recorded
    counts times ``h w D`` (Python integers: no overflow)."""
    full, out = math.prod(int(v) for v in size), math.prod(soft.shape)
    mass = soft.class_mass()
    left = [int(m) * full for m in mass]
    right = [int(c) * out * int(soft.denominator) for c in counts]
    differing = [c for c, (a, b) in enumerate(zip(left, right)) if a != b]
    if differing:
        return [f"counts: recorded full-resolution counts differ from the stored soft label's class mass "
                f"(classes {', '.join(map(str, differing[:5]))})"]
    return []


def _read_sample(store: Store, view: TargetView, i: int) -> tuple[SoftLabel | None, list[str]]:
    """Decode image ``i``'s chunks at one target and check them; the soft label is None when unreadable."""
    plan = store.spec.plan(view.split, i, view.target)
    problems, arrays = [], {}
    if tuple(int(v) for v in view.sizes[i]) != plan.size:
        problems.append(f"sizes: records {view.sizes[i].tolist()}, the plan gives {list(plan.size)}")
    if int(view.denominators[i]) != (plan.denominator or 0):
        problems.append(f"denominator: records {int(view.denominators[i])}, the plan gives {plan.denominator or 0}")
    affines = store.spec.splits[view.split].affines
    if affines is not None:
        try:
            recorded = view.group["affine"][i]
        except Exception:  # noqa: BLE001 - an unreadable chunk is reported per split
            recorded = None
        if recorded is not None and not np.allclose(recorded, output_affine(affines[i], plan.source, plan.size)):
            problems.append("affine: the recorded output grid differs from the source affine's at the planned size")
    bucket, position = view.bucket(i), view.positions[i]
    for name in ("image", *map_arrays(store.format_version >= 4 and bucket.attrs.get("nn_floor", False))):
        arrays[name] = _read_image_array(store, bucket[name], position, (), name, problems)
    try:
        records = {name: view.group[name][i] for name in record_arrays(store, view.split)}
    except Exception:  # noqa: BLE001 - reported with its chunk by _check_split_records
        return None, problems
    if problems:
        return None, problems
    crop = tuple(slice(0, side) for side in plan.size)
    classes = arrays["classes"][crop]
    mixed, k = int(np.count_nonzero(classes == MIXED)), max(1, int(records["planes"]))
    for name in LIST_ARRAYS:
        arrays[name] = _read_image_array(store, bucket[name], position, (slice(0, k), slice(0, mixed)), name,
                                         problems) if mixed else np.zeros((k, 0), bucket[name].dtype)
    if problems:
        return None, problems
    weights = arrays["mixed_weights"]
    denominator = plan.denominator if weights.dtype.kind == "u" else None
    soft = unpack(PackedSoftLabel(classes, arrays["mixed_classes"], weights, store.spec.num_classes, denominator))
    if "nnunet_counts" in records:
        problems += _check_counts_bounds(records["nnunet_counts"], plan.size, every_voxel=True, name="nnunet_counts")
    maps = {"nn_counts": arrays["nn"][crop]}
    if "nn_floor_counts" in records:
        maps["nn_floor_counts"] = arrays.get("nn_floor", arrays["nn"])[crop]
    return soft, problems + _check_soft_label(soft, records, maps)


def _read_image_array(store: Store, array, position: int, rest: tuple, name: str, problems: list[str]):
    """``array[position, *rest]``, or None with the problem noted (a missing shard, a failed decode)."""
    if not shard_file(array, position, store.path).is_file():
        problems.append(f"{name} shard file missing")
        return None
    try:
        return array[(position, *rest)]
    except Exception as error:  # noqa: BLE001 - any decode failure is a finding
        problems.append(f"{name} cannot be read ({_why(error)})")
        return None


def _check_soft_label(soft: SoftLabel, records: dict, maps: dict[str, np.ndarray]) -> list[str]:
    """The soft label's invariants, its recorded masses, and each hard map's recorded counts
    (``maps``: record name -> ``(h, w) uint8`` map)."""
    problems = []
    c, classes, weights = soft.num_classes, soft.classes, soft.weights
    one = soft.denominator if soft.exact else 1.0
    tolerance = 0 if soft.exact else FLOAT_TOLERANCE
    if ((classes >= c) & (classes != IGNORE_INDEX)).any():
        problems.append(f"classes: value {int(classes[(classes >= c) & (classes != IGNORE_INDEX)].max())} is not a train id (< {c}) or empty (255)")
    if (weights[classes == IGNORE_INDEX] != 0).any():
        problems.append("weights: an empty slot has non-zero weight")
    if (weights < 0).any() or (weights > one + tolerance).any():
        problems.append(f"weights: outside [0, 1] (min {weights.min() / one:.6g}, max {weights.max() / one:.6g})")
    if (np.diff(weights.astype(np.float64), axis=0) > tolerance).any():
        problems.append("weights: slots are not sorted by weight")
    used = int((classes != IGNORE_INDEX).any(axis=tuple(range(1, classes.ndim))).sum())
    if used > int(records["planes"]):
        problems.append(f"planes: records {int(records['planes'])} slots, {used} are used")
    sums = weights.astype(np.float64).sum(axis=0)
    if (sums > one + tolerance * soft.planes).any():
        problems.append(f"weights: a pixel's weights sum to {sums.max() / one:.6g} > 1")
    mass = soft.class_mass()
    if soft.exact and not np.array_equal(mass, records["mass_numerator"]):
        problems.append(f"mass_numerator: recorded exact class masses differ from the stored soft label's "
                        f"(classes {_differing(mass, records['mass_numerator'])})")
    value = mass / soft.denominator if soft.exact else mass
    if not np.allclose(value, records["mass"], rtol=1e-6, atol=1e-6):
        problems.append(f"mass: recorded class masses differ from the stored soft label's "
                        f"(classes {_differing(~np.isclose(value, records['mass'], rtol=1e-6, atol=1e-6), False)})")
    for name, hard in maps.items():
        counts = np.bincount(hard[hard != IGNORE_INDEX].ravel(), minlength=c)[:c]
        if not np.array_equal(counts, records[name]):
            problems.append(f"{name}: recorded counts differ from the stored map's (classes {_differing(counts, records[name])})")
    return problems


def _check_counts(store: Store, dataset, split: str, i: int, problems: list[str]) -> np.ndarray:
    """Decode image ``i``'s label file, check its recorded full-resolution counts; return the label."""
    spec = store.spec.splits[split]
    label = dataset.read_label(stored_sample(dataset, spec, i))
    prepared = prepare_label(label, dataset.num_classes, dataset.ignore_index)
    counts = prepared.class_counts()
    recorded = store.root[split]["counts"][i]
    if not np.array_equal(counts, recorded):
        problems.append(f"{split}: image {spec.ids[i]} (#{i}): counts: recorded full-resolution counts differ "
                        f"from {spec.labels[i]} (classes {_differing(counts, recorded)})")
    return label


def _check_valid_fraction(store: Store, split: str, i: int, target: str, label: np.ndarray, soft: SoftLabel) -> list[str]:
    """Each pixel's weights sum to the share of its kernel window on labelled pixels."""
    ignore_index = store.spec.ignore_index
    valid = np.where(label == ignore_index, ignore_index, 0).astype(np.uint8)
    plan = store.spec.plan(split, i, target)
    expected = soft_label_axes(valid, plan.axes, 1, ignore_index)
    if expected.exact and not soft.exact:  # a float bucket holds this exact image: compare values
        expected = SoftLabel(expected.classes, expected.scaled_weights(), 1, None)
    expected = _pixel_sums(expected)
    error = np.abs(_pixel_sums(soft) - expected).max(initial=0) / (soft.denominator if soft.exact else 1)
    if error > (0 if soft.exact else FLOAT_TOLERANCE):
        return [f"weights: per-pixel sums differ from the valid fraction by up to {error:.3g}"]
    return []


def _check_nnunet_counts(store: Store, view: TargetView, i: int, label: np.ndarray) -> list[str]:
    """A volume's recorded ``nnunet_counts`` are those of nnU-Net's rule applied to its label file."""
    recorded = view.nnunet_counts()
    if recorded is None:
        return []
    plan = store.spec.plan(view.split, i, view.target)
    prepared = prepare_label(label, store.spec.num_classes, store.spec.ignore_index)
    labels = threshold_labels(soft_label_axes(prepared, plan.linear))
    counts = np.bincount(labels.ravel(), minlength=256)[:store.spec.num_classes]
    if not np.array_equal(counts, recorded[i]):
        return [f"nnunet_counts: recorded counts differ from nnU-Net's rule on the label file (classes {_differing(counts, recorded[i])})"]
    return []


def _pixel_sums(soft: SoftLabel) -> np.ndarray:
    """``(H', W')`` weight per pixel: ``int64`` numerators when exact (no rounding), else ``float64``."""
    return soft.weights.sum(axis=0, dtype=np.int64 if soft.exact else np.float64)


def _differing(a: np.ndarray, b: np.ndarray) -> str:
    return ", ".join(str(c) for c in np.flatnonzero(np.asarray(a) != np.asarray(b))[:5])


def _why(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:160]


def checked_summary(path, root) -> str:
    """What a passing ``verify`` read: images, targets, chunk files, statistics."""
    opened = open_store(path)
    images = sum(len(opened.spec.splits[s].ids) for s in opened.splits)
    chunks = 0 if is_remote(opened.path) else sum(1 for f in opened.path.rglob("*") if f.is_file() and f.name != "zarr.json")
    files = f", {chunks} chunk files" if chunks else ""
    return (f"{images} images x {len(opened.targets)} targets{files}: every chunk's crc32c, every recorded statistic"
            + (", the full-resolution labels" if root else ""))
