"""``softprep info``: what a store holds, how far its build got, and its size on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from softprep.location import location, tree_bytes
from softprep.store import SOFT_LABEL_ARRAYS, open_store


#: What each NN rule means, for ``info``.
NN_RULE_TEXT = {"nearest-exact": "nearest-exact: sampled at pixel centres, aligned with the image (torch nearest kept as nn_floor)",
                "nearest": "torch nearest: sampled at the top-left of each footprint, (s - 1) / 2 px up-left (format 3)"}


def disk_bytes(path: Path) -> int:
    """Bytes of all files (or objects) under ``path``."""
    return tree_bytes(location(path))


def describe(path: str | Path) -> dict:
    """The store at ``path`` as plain data (``info --json``): settings, and per split and target the
    images done, size buckets, smallest and largest output size ``[h, w]``, weight exactness and
    bytes on disk of soft labels, images and NN maps."""
    store = open_store(path)
    spec = store.spec
    out = {"path": str(store.path), "complete": store.complete, "format_version": store.format_version,
           "dataset": spec.dataset, "classes": spec.classes, "ignore_index": spec.ignore_index, "kernel": spec.kernel,
           "antialias": spec.antialias, "nn_rule": store.nn_rule, "targets": spec.target_names, "splits": {}}
    for split in store.splits:
        done = store.done(split)
        members = store.spec.splits[split].members
        entry = {"images": len(done), "done": int(done.sum()), "buckets": len(members), "targets": {}}
        for target in store.targets:
            view = store.samples(split, target)
            group_path = store.path / split / target
            buckets = [group_path / b for b in members]
            pixels = view.sizes.astype(np.int64).prod(axis=1)
            soft = sum(disk_bytes(b / name) for b in buckets for name in SOFT_LABEL_ARRAYS)
            denominators = np.unique(view.denominators).tolist()
            entry["targets"][target] = {
                "smallest": view.sizes[int(np.argmin(pixels))].tolist(), "largest": view.sizes[int(np.argmax(pixels))].tolist(),
                "bucket_folders": [f"{split}/{target}/{b}" for b in members],
                "exact_images": int((view.denominators > 0).sum()),
                "denominator": denominators[0] if len(denominators) == 1 and denominators[0] > 0 else None,
                "soft_label_bytes": soft, "soft_label_bytes_per_pixel": soft / max(int(pixels.sum()), 1),
                "image_bytes": sum(disk_bytes(b / "image") for b in buckets),
                "nn_bytes": sum(disk_bytes(b / name) for b in buckets for name in ("nn", "nn_floor")),
            }
        out["splits"][split] = entry
    out["disk_bytes"] = disk_bytes(store.path)
    return out


def summary(path: str | Path) -> str:
    """A human-readable multi-line summary of the store at ``path``."""
    d = describe(path)
    lines = [
        f"store      {d['path']}  ({'complete' if d['complete'] else 'UNFINISHED: rerun the same `softprep build` to resume'})",
        f"dataset    {d['dataset']}, {len(d['classes'])} classes, ignore {d['ignore_index']}",
        f"kernel     {d['kernel']}{' (antialias)' if d['antialias'] else ''}",
        f"nn maps    {NN_RULE_TEXT[d['nn_rule']]}",
        f"targets    {', '.join(d['targets'])}",
    ]
    sizes = {(split, target): _size_text(t) for split, s in d["splits"].items() for target, t in s["targets"].items()}
    width = max(map(len, sizes.values()), default=0)
    for split, s in d["splits"].items():
        first = next(iter(s["targets"].values()), {"bucket_folders": []})
        folders = sorted({f.split("/")[-1] for f in first["bucket_folders"]})
        lines.append(f"split      {split}: {s['done']}/{s['images']} images done, {s['buckets']} size bucket(s): folder(s) "
                     f"{', '.join(folders[:4])}{' ...' if len(folders) > 4 else ''} (named by full-resolution size, "
                     f"e.g. {first['bucket_folders'][0] if first['bucket_folders'] else '-'}/image)")
        for target, t in s["targets"].items():
            exact = t["exact_images"]
            weights = "exact" if exact == s["images"] else ("float32" if exact == 0 else f"exact for {exact}/{s['images']}")
            if t["denominator"]:
                weights += f" /{t['denominator']}"
            lines.append(
                f"  {target:<10} {sizes[split, target]:<{width}}  soft label {t['soft_label_bytes'] / 2**20:7.2f} MiB "
                f"({t['soft_label_bytes_per_pixel']:.3f} B/px, weights {weights})  image {t['image_bytes'] / 2**20:7.2f} MiB  "
                f"nn {t['nn_bytes'] / 2**20:6.2f} MiB"
            )
    lines.append(f"on disk    {d['disk_bytes'] / 2**20:.1f} MiB")
    return "\n".join(lines)


def _size_text(target: dict) -> str:
    """``"64x128"`` (h x w at the target), or ``"32x64 .. 64x128"`` for a split of several sizes."""
    size = "x".join(map(str, target["smallest"]))
    if target["smallest"] != target["largest"]:
        size += " .. " + "x".join(map(str, target["largest"]))
    return size


def image_ids(path: str | Path, split: str | None = None) -> list[tuple[str, str]]:
    """``(split, id)`` of every image of ``split`` (default: every split), in store order."""
    store = open_store(path)
    splits = [split] if split else store.splits
    for name in splits:
        store.samples(name, store.targets[0])  # a clear error for an unknown split
    return [(name, image_id) for name in splits for image_id in store.spec.splits[name].ids]
