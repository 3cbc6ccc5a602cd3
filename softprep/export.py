"""``softprep export STORE --to parquet OUT``: a store as a Hugging Face ``datasets`` folder (the
``hf`` extra).

Layout: ``OUT/{target}/{split}-{k:05d}.parquet`` and a dataset card ``OUT/README.md`` whose YAML
declares one config per target (``load_dataset(OUT, "0.125")``, or
``load_dataset("parquet", data_dir=OUT / "0.125")``), with the build's provenance and the exact
priors table. One row per image:

* ``id`` (str), ``image`` (``datasets.Image``, PNG: lossless), ``height``, ``width``;
* the soft label in its packed, sparse form: ``class_map`` (``h * w`` uint8, row-major: the class
  of a single-class pixel, 254 mixed, 255 nothing), ``mixed_classes`` and ``mixed_weights``
  (``K`` lists of ``M`` entries: slot ``k`` of each mixed pixel, row-major; weights as float32
  fractions of the pixel);
* ``nn`` (``h * w`` uint8, row-major: the nearest-neighbour label, 255 = ignore).

:func:`dense_soft_label` turns a row back into the ``(C, h, w)`` soft label, equal to the store's.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from softprep.errors import SoftprepError, install_hint, printable
from softprep.priors import render, store_priors
from softprep.softlabel import MIXED
from softprep.location import is_remote
from softprep.store import RESERVED_SUFFIXES, foreign_folder, open_store



def _datasets():
    try:
        import datasets
    except ImportError:
        raise SoftprepError(f"export --to parquet needs the hf extra: {install_hint('hf')}") from None
    return datasets


def _features(datasets):
    return datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(), "height": datasets.Value("int32"),
        "width": datasets.Value("int32"), "class_map": datasets.Sequence(datasets.Value("uint8")),
        "mixed_classes": datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))),
        "mixed_weights": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
        "nn": datasets.Sequence(datasets.Value("uint8")),
    })


def _row(sample) -> dict:
    packed = sample.packed()
    h, w = sample.shape
    png = io.BytesIO()
    Image.fromarray(sample.image).save(png, format="PNG")
    weights = packed.mixed_weights
    if weights.dtype.kind == "u":  # numerators over D, row 0 the ignored share: back to every slot's weight
        raw = weights.astype(np.int64)
        raw[0] = packed.denominator - raw.sum(axis=0)
        weights = raw / packed.denominator
    return {"id": sample.id, "image": {"bytes": png.getvalue(), "path": None}, "height": h, "width": w,
            "class_map": packed.classes.ravel(), "mixed_classes": packed.mixed_classes,
            "mixed_weights": weights.astype(np.float32), "nn": sample.nn().ravel()}


def dense_soft_label(row: dict, num_classes: int) -> np.ndarray:
    """``(C, h, w) float32`` soft label of an exported row."""
    h, w = row["height"], row["width"]
    classes = np.asarray(row["class_map"], np.uint8).reshape(h, w)
    dense = np.zeros((num_classes + 1, h, w), np.float64)
    yy, xx = np.nonzero(classes < num_classes)
    dense[classes[yy, xx], yy, xx] = 1.0
    yy, xx = np.nonzero(classes == MIXED)
    for slot_classes, slot_weights in zip(row["mixed_classes"], row["mixed_weights"]):
        dense[np.minimum(np.asarray(slot_classes, np.int64), num_classes), yy, xx] += np.asarray(slot_weights, np.float64)
    return dense[:num_classes].astype(np.float32)


#: Images per parquet file unless told otherwise.
ROWS_PER_FILE = 500
#: The file that marks a folder as softprep's export of one store (in OUT and in OUT.exporting).
EXPORT_MARKER = ".softprep-export.json"


def export_parquet(store_path, out, progress: Callable[[int, int], None] | None = None,
                   rows_per_file: int = ROWS_PER_FILE) -> Path:
    """Write the store at ``store_path`` as a ``datasets`` parquet folder at ``out`` (see the module doc).

    Atomic and resumable: files are written into ``OUT.exporting`` (each parquet file under a
    temporary name, renamed when whole), which is renamed to ``OUT`` once every file and the card
    are there: a killed export leaves no ``OUT`` to load, and rerunning the same command keeps the
    finished files and completes it. An ``OUT`` that already holds this store's export is left as it is.

    Raises:
        SoftprepError: an unfinished store, or an ``OUT`` that cannot be used (it exists, it is
            inside the store, a dangling link, below a file): one line each.
    """
    store = open_store(store_path)
    if not store.complete:
        raise SoftprepError(f"{store.path}: store is not completely built; finish it with `softprep build` first")
    out = Path(out)
    try:
        return _export(store, out, progress, rows_per_file)
    except OSError as error:
        raise SoftprepError(f"{printable(error.filename or out)}: {error.strerror or error} while exporting to "
                            f"{printable(out)}; fix that (a link, a file in the way, free space) or choose another OUT, "
                            "then rerun the same command to finish") from None


def _export(store, out: Path, progress, rows_per_file: int) -> Path:
    _check_out(store, out)
    marker = {"format": "softprep-export", "store_build_id": store.build_id, "store_attrs_sha256": store.recorded_digest,
              "rows_per_file": rows_per_file}
    total = len(store.targets) * sum(len(store.spec.splits[s].ids) for s in store.splits)
    if _export_marker(out) == marker:
        if progress:
            progress(total, total)
        return out  # already this store's complete export
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SoftprepError(f"{printable(out)}: exists and is not empty; choose a new folder")
    temp = out.with_name(out.name + ".exporting")
    found = _export_marker(temp)
    if temp.exists() and found is None and any(temp.iterdir()):
        raise foreign_folder(temp, "export into")
    if found is not None and found != marker:  # softprep's unfinished export of another store (or build)
        shutil.rmtree(temp)
    temp.mkdir(exist_ok=True)
    (temp / EXPORT_MARKER).write_text(json.dumps(marker))
    datasets = _datasets()
    datasets.disable_progress_bars()  # one bar for the whole export: ours
    features = _features(datasets)
    for target in store.targets:
        for split in store.splits:
            view = store.samples(split, target)
            for part, start in enumerate(range(0, len(view), rows_per_file)):
                stop = min(start + rows_per_file, len(view))
                _write_part(datasets, features, view, range(start, stop), temp / target / f"{split}-{part:05d}.parquet")
                if progress:
                    progress(stop - start, total)
    (temp / "README.md").write_text(dataset_card(store))
    os.rename(temp, out)  # replaces an empty OUT folder too
    return out


def _write_part(datasets, features, view, indices: range, path: Path) -> None:
    """One parquet file of rows ``indices``, written whole under a temporary name (kept when it exists)."""
    if path.is_file():
        return  # written whole by an earlier, interrupted run of this export
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    table = datasets.Dataset.from_list([_row(view[i]) for i in indices], features=features)
    table.to_parquet(str(partial))
    os.replace(partial, path)


def _export_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == "softprep-export" else None


def _check_out(store, out: Path) -> None:
    """Refuse an OUT that is a dangling link, one of softprep's temporary names, or inside the store."""
    if out.is_symlink() and not out.exists():
        raise SoftprepError(f"{printable(out)}: a link to {printable(os.readlink(out))}, which does not exist; choose "
                            "a plain folder name for OUT")
    if out.name.endswith(RESERVED_SUFFIXES):
        raise SoftprepError(f"{printable(out)}: names ending in {', '.join(RESERVED_SUFFIXES)} are softprep's temporary "
                            "folders; choose another OUT")
    if not is_remote(store.path):
        inside, store_root = Path(os.path.realpath(out)), Path(os.path.realpath(store.path))
        if inside == store_root or store_root in inside.parents:
            raise SoftprepError(f"{printable(out)}: is inside the store {printable(store.path)}; choose an OUT outside it")


def dataset_card(store) -> str:
    """The dataset card: configs per target, provenance, exact priors."""
    spec = store.spec
    configs = "\n".join(f"- config_name: \"{t}\"\n  data_files:\n" + "\n".join(
        f"  - split: {s}\n    path: \"{t}/{s}-*.parquet\"" for s in store.splits) for t in spec.targets)
    priors = render(store_priors(store, store.splits[0]), "markdown")
    return f"""---
configs:
{configs}
---

# {printable(spec.dataset)} soft labels (softprep export)

Paired colour images and **soft labels** (per-pixel class distributions, from one-hot labels
downsampled with the colour image's own kernel) for low-resolution semantic segmentation, exported
from a softprep store. Train with a KL loss (Alcover-Couso et al., *soft-labelling*, eq. 4).

- Kernel: `{spec.kernel}` (colour: `{spec.colour_kernel}`){' with antialias' if spec.antialias else ''}; targets: {', '.join(spec.target_names)}
- Classes ({spec.num_classes}, index = train id): {', '.join(printable(c) for c in spec.classes)}; ignore {spec.ignore_index}
- Splits: {', '.join(f"{s} ({len(spec.splits[s].ids)} images)" for s in store.splits)}
- Store format {store.format_version}, build `{store.build_id}`

Columns: `id`, `image` (PNG), `height`, `width`, `class_map` (h*w, row-major: class of a
single-class pixel, 254 mixed, 255 nothing), `mixed_classes` / `mixed_weights` (K lists over the
mixed pixels in row-major order: slot classes and their weights, fractions of the pixel), `nn`
(h*w nearest-neighbour label, 255 ignore). `softprep.export.dense_soft_label(row, C)` gives the
`(C, h, w)` soft label.

```python
from datasets import load_dataset
data = load_dataset("parquet", data_dir="OUT/{spec.target_names[0]}")   # or load_dataset("OUT", "{spec.target_names[0]}")
```

## Class priors (split {store.splits[0]}, exact)

{priors}
"""


__all__ = ["dense_soft_label", "export_parquet"]
