"""A store's lifecycle: the write lock, atomic creation, clean-up of what a killed writer left, and
atomic deletion (a kill at any moment leaves the whole store or none)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from softprep.errors import SoftprepError
from softprep.location import is_remote, location, remove_tree
from softprep.store.layout import StoreSpec
from softprep.store.writer import create_store

@contextlib.contextmanager
def store_lock(path: str | Path, writer: str = "softprep build", what: str = "store"):
    """Hold the write lock of the store at ``path``: a lock file beside it, released when the
    process ends however it ends; on object storage, a lock object created only if absent.

    Raises:
        SoftprepError: another process holds it (one line naming it).
    """
    path = location(path)
    if is_remote(path):
        with _object_lock(path):
            yield
        return
    path = Path(os.path.realpath(path))  # one lock per store, whichever link or alias names it
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")
    except OSError as error:
        raise SoftprepError(f"{path}: cannot create the lock file {lock_path} ({error.strerror}); "
                            "choose an --out in a folder you can write to") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise SoftprepError(f"{path}: another {writer} (pid {holder}) is writing this {what}; wait for it "
                            "to finish or stop it, then rerun") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def _object_lock(path):
    """The lock of a store on object storage: ``.NAME.lock`` beside it, created with a conditional
    write (fails if it exists), deleted when the build ends. A crashed build leaves it behind: the
    message says which build holds it and how to clear it."""
    lock = path.with_name(f".{path.name}.lock")
    holder = f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    try:
        with lock.fs.open(lock.path, "xb") as file:
            file.write(holder.encode())
    except FileExistsError:
        try:
            holder = lock.read_text()
        except OSError:
            holder = "?"
        raise SoftprepError(f"{path}: another softprep build ({holder}) holds the lock {lock}; wait for it, or if "
                            "none is running (it crashed), delete that object and rerun") from None
    try:
        yield
    finally:
        lock.fs.rm(lock.path)


def creating_path(path: str | Path) -> Path:
    """Where a local store is created before it is renamed to ``path`` in one step."""
    path = Path(path)
    return path.with_name(f"{path.name}.creating")


def create_store_atomically(path: str | Path, spec: StoreSpec) -> None:
    """Create the store so that an interruption at any point leaves either no store or a complete
    empty one. Locally: in :func:`creating_path`, renamed to ``path`` (a leftover is removed by the
    next try). Object storage has no rename: the store is created in place and its root attributes
    are written last, so an interrupted creation is not a softprep store (:func:`unfinished_creation`)."""
    path = location(path)
    if is_remote(path):
        if path.exists():
            remove_tree(path)
        create_store(path, spec)
        return
    temp = creating_path(path)
    for leftover in (temp, deleting_path(path)):  # of a killed creation or deletion
        if leftover.exists():
            shutil.rmtree(leftover)
    create_store(temp, spec)
    os.rename(temp, path)


def unfinished_creation(path) -> bool:
    """True for an object-storage store whose creation was interrupted (arrays without root attributes)."""
    path = location(path)
    if not is_remote(path) or not (path / "zarr.json").is_file():
        return False
    return "softprep" not in json.loads((path / "zarr.json").read_text()).get("attributes", {})


def remove_partial_files(path: str | Path) -> int:
    """Delete temporary files a killed writer left behind (local stores; object writes are atomic);
    returns how many."""
    path = location(path)
    if is_remote(path):
        return 0
    partial = list(path.rglob("*.partial"))
    for file in partial:
        file.unlink(missing_ok=True)
    return len(partial)


def deleting_path(path: str | Path) -> Path:
    """Where a local store is moved, in one step, before its files are removed."""
    path = Path(path)
    return path.with_name(f"{path.name}.deleting")


def _looks_like_zarr(path: Path) -> bool:
    """A zarr hierarchy, or what is left of one whose root metadata went first (an older softprep's
    interrupted deletion): ``zarr.json`` at the root or in a direct child folder."""
    return (path / "zarr.json").is_file() or any((child / "zarr.json").is_file() for child in path.iterdir()
                                                 if child.is_dir())


def delete_store(path: str | Path) -> None:
    """Delete a store (or an empty folder) at ``path``; anything else is refused.

    Locally the store is first renamed to :func:`deleting_path` (one atomic step), then removed: a
    kill at any moment leaves either the whole store or none at ``path``, and the leftover is
    removed by the next build or deletion."""
    path = location(path)
    if is_remote(path):
        if path.exists():
            if not (path / "zarr.json").is_file():
                raise SoftprepError(f"{path}: exists and is not a zarr store; refusing to delete it, choose another --out")
            remove_tree(path)
        return
    trash = deleting_path(path)
    if trash.exists():
        shutil.rmtree(trash)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    elif path.exists():
        if not path.is_dir() or not _looks_like_zarr(path):
            raise SoftprepError(f"{path}: exists and is not a zarr store; refusing to delete it, choose another --out")
        os.rename(path, trash)
        shutil.rmtree(trash)
    if creating_path(path).exists():
        shutil.rmtree(creating_path(path))
