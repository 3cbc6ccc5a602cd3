"""``softprep info``: what a store holds, how far its build got, and its size on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from softprep.store import open_store


def disk_bytes(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _size_range(sizes: np.ndarray) -> str:
    """``"64x128"`` when every image has one size, else ``"45x62 .. 64x85"`` (HxW, fewest to most pixels)."""
    pixels = sizes[:, 0] * sizes[:, 1]
    small, large = sizes[np.argmin(pixels)], sizes[np.argmax(pixels)]
    if (sizes == sizes[0]).all():
        return f"{sizes[0][0]}x{sizes[0][1]}"
    return f"{small[0]}x{small[1]} .. {large[0]}x{large[1]}"


def summary(path: str | Path) -> str:
    """A human-readable multi-line summary of the store at ``path``."""
    store = open_store(path)
    a = store.attrs
    lines = [
        f"store      {store.path}  ({'complete' if store.complete else 'UNFINISHED: rerun the same `softprep build` to resume'})",
        f"dataset    {a['dataset']}, {len(a['classes'])} classes, ignore {a['ignore_index']}",
        f"kernel     {a['kernel']}{' (antialias)' if a['antialias'] else ''}",
        f"targets    {', '.join(store.targets)}",
    ]
    for split in store.splits:
        done = store.done(split)
        buckets = len(store.spec.splits[split].members)
        lines.append(f"split      {split}: {done.sum()}/{len(done)} images done, {buckets} size bucket(s)")
        for target in store.targets:
            view = store.samples(split, target)
            group_path = store.path / split / target
            buckets = [group_path / b for b in store.spec.splits[split].members]
            soft = sum(disk_bytes(b / name) for b in buckets for name in ("classes", "weights"))
            image = sum(disk_bytes(b / "image") for b in buckets)
            nn = sum(disk_bytes(b / "nn") for b in buckets)
            pixels = int((view.sizes[:, 0].astype(np.int64) * view.sizes[:, 1]).sum())
            exact = int((view.denominators > 0).sum())
            denominators = np.unique(view.denominators)
            weights = "exact" if exact == len(view) else ("float32" if exact == 0 else f"exact for {exact}/{len(view)}")
            if exact == len(view) and len(denominators) == 1:
                weights += f" /{denominators[0]}"
            lines.append(
                f"  {target:<10} {_size_range(view.sizes)}  soft label {soft / 2**20:7.2f} MiB "
                f"({soft / max(pixels, 1):.3f} B/px, weights {weights})  image {image / 2**20:7.2f} MiB  "
                f"nn {nn / 2**20:6.2f} MiB"
            )
    lines.append(f"on disk    {disk_bytes(store.path) / 2**20:.1f} MiB")
    return "\n".join(lines)
