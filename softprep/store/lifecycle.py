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

from softprep.errors import SoftprepError, printable
from softprep.location import is_remote, location, remove_tree
from softprep.store.layout import StoreSpec
from softprep.store.reader import softprep_marker
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


def deleting_path(path: str | Path) -> Path:
    """Where a local store is moved, in one step, before its files are removed."""
    path = Path(path)
    return path.with_name(f"{path.name}.deleting")


#: Name endings softprep gives its own temporary folders (never a user's ``--out``).
RESERVED_SUFFIXES = (".creating", ".deleting", ".exporting")


def foreign_folder(path, action: str = "delete") -> SoftprepError:
    """The one-line refusal to ``action`` a folder softprep did not make, naming what it holds."""
    path = location(path)
    try:
        entries = sorted((child.name + ("/" if child.is_dir() else "") for child in path.iterdir()),
                         key=lambda name: (name.startswith("."), name))  # what the user made first, then dotfiles
    except OSError:
        entries = []
    if not path.is_dir():
        found = "a file, not a folder"
    elif entries:
        shown = ", ".join(printable(e) for e in entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        found = f"a folder holding {shown}, without softprep's store marker in zarr.json"
    else:
        found = "an empty folder"
    return SoftprepError(f"{printable(path)}: is {found}; softprep did not make it, so it will not {action} it: "
                         "choose another --out, or move it away yourself")


def create_store_atomically(path: str | Path, spec: StoreSpec) -> None:
    """Create the store so that an interruption at any point leaves either no store or a complete
    empty one. Locally: in :func:`creating_path`, renamed to ``path`` (a leftover is removed by the
    next try). Object storage has no rename: the store is created in place, marked as being created
    until its root attributes are written last (:func:`unfinished_creation`)."""
    path = location(path)
    if is_remote(path):
        delete_store(path)  # a store whose creation was interrupted: only ever softprep's own
        create_store(path, spec)
        return
    temp = creating_path(path)
    for leftover in (temp, deleting_path(path)):  # of a killed creation or deletion
        _remove_leftover(leftover)
    create_store(temp, spec)
    os.rename(temp, path)


def unfinished_creation(path) -> bool:
    """True for a store whose creation was interrupted (marked, but still being created)."""
    marker = softprep_marker(path)
    return marker is not None and bool(marker.get("creating"))


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


def delete_store(path: str | Path) -> None:
    """Delete the softprep store (or the empty folder) at ``path``; anything else is refused with
    one line naming what it holds (:func:`foreign_folder`): a folder that merely contains a store,
    a dataset, any folder without softprep's own marker.

    Locally the store is first renamed to :func:`deleting_path` (one atomic step), then removed,
    its marker last: a kill at any moment leaves either the whole store or none at ``path``, and the
    leftover, still marked, is removed by the next build or deletion."""
    path = location(path)
    if is_remote(path):
        if path.exists():
            if softprep_marker(path) is None:
                raise foreign_folder(path)
            remove_tree(path)
        return
    _remove_leftover(deleting_path(path))
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()
    elif path.exists() or path.is_symlink():
        if path.is_symlink() or softprep_marker(path) is None:
            raise foreign_folder(path)
        os.rename(path, deleting_path(path))
        _remove_marked(deleting_path(path))
    _remove_leftover(creating_path(path))


def _remove_leftover(path: Path) -> None:
    """Remove what a killed creation or deletion left at ``path`` (nothing there: nothing to do);
    refused unless it is empty or carries softprep's marker."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()
    elif path.is_symlink() or softprep_marker(path) is None:
        raise foreign_folder(path)
    else:
        _remove_marked(path)


def _remove_marked(path: Path) -> None:
    """Remove a marked store folder: everything but the root ``zarr.json`` first, the marker last, so
    that whatever a kill leaves is still recognisably softprep's."""
    marker = path / "zarr.json"
    for child in path.iterdir():
        if child == marker:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    marker.unlink()
    path.rmdir()
