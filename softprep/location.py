"""Where data lives: a local folder, or object storage through fsspec (``s3://``, ``gs://``, ``memory://``).

Dataset roots and stores are *locations*: :func:`location` turns a command-line string into a
``pathlib.Path`` (local) or a ``upath.UPath`` (remote; the ``cloud`` extra), and the rest of softprep
uses the pathlib API on either (``/``, ``glob``, ``open``, ``is_file``, ``stat``, ``relative_to``).
Zarr opens a store from ``str(location)`` (a folder, or the ``scheme://`` URL, which zarr opens with its fsspec store).

Credentials come only from the filesystem library's own environment and configuration (for S3:
``AWS_*`` variables, ``~/.aws``; an endpoint from ``AWS_ENDPOINT_URL``), never from softprep's
arguments, so they never appear in commands, logs or store attributes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from softprep.errors import SoftprepError, install_hint

#: A local path or a ``upath.UPath``.
Location = Union[Path, "UPath"]  # noqa: F821 - UPath exists only with the cloud extra


def location(path: str | os.PathLike | Location) -> Location:
    """``path`` as a local ``Path`` (plain paths, ``file://``) or a remote ``UPath`` (any other ``scheme://``)."""
    if is_remote(path):
        return path
    text = os.fspath(path)
    if "://" not in text:
        return Path(text)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    try:
        from upath import UPath
    except ImportError:
        raise SoftprepError(f"{text}: object-storage locations need the cloud extra: {install_hint('cloud')}") from None
    # Listings are not cached: a build and its readers must see each other's writes at once.
    return UPath(text, use_listings_cache=False)


def is_remote(path) -> bool:
    """True for a ``UPath`` on a non-local filesystem."""
    return not isinstance(path, (str, os.PathLike)) or (not isinstance(path, Path) and hasattr(path, "fs"))


def remove_tree(path: Location) -> None:
    """Delete a folder (or prefix) and everything under it; nothing if it does not exist."""
    if is_remote(path):
        if path.fs.exists(path.path):
            path.fs.rm(path.path, recursive=True)
        return
    import shutil

    shutil.rmtree(path, ignore_errors=False)


def tree_bytes(path: Location) -> int:
    """Bytes of all files under ``path``."""
    if is_remote(path):
        return int(path.fs.du(path.path, total=True)) if path.fs.exists(path.path) else 0
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
