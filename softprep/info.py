"""``softprep info``: what a store holds, how far its build got, and its size on disk."""

from __future__ import annotations

from pathlib import Path

from softprep.store import open_store, scale_name


def disk_bytes(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def summary(path: str | Path) -> str:
    """A human-readable multi-line summary of the store at ``path``."""
    store = open_store(path)
    a = store.attrs
    lines = [
        f"store      {store.path}  ({'complete' if store.complete else 'UNFINISHED: rerun the same `softprep build` to resume'})",
        f"dataset    {a['dataset']}, {len(a['classes'])} classes, ignore {a['ignore_index']}",
        f"kernel     {a['kernel']}{' (antialias)' if a['antialias'] else ''}",
        f"scales     {', '.join(str(s) for s in a['scales'])}",
    ]
    for split in store.splits:
        done = store.done(split)
        lines.append(f"split      {split}: {done.sum()}/{len(done)} images done")
        for scale in store.scales:
            view = store.samples(split, scale)
            group_path = store.path / split / scale_name(scale)
            soft = sum(disk_bytes(group_path / name) for name in ("classes", "weights", "planes"))
            image = disk_bytes(group_path / "image")
            nn = disk_bytes(group_path / "nn")
            pixels = sum(h * w for h, w in view.sizes)
            weights = f"exact /{view.denominator}" if view.denominator else "float32"
            lines.append(
                f"  {scale:<8g} {view.sizes[0][0]}x{view.sizes[0][1]}  soft label {soft / 2**20:7.2f} MiB "
                f"({soft / max(pixels, 1):.3f} B/px, weights {weights})  image {image / 2**20:7.2f} MiB  "
                f"nn {nn / 2**20:6.2f} MiB"
            )
    lines.append(f"on disk    {disk_bytes(store.path) / 2**20:.1f} MiB")
    return "\n".join(lines)
