"""Checkpoint files: written atomically with a checksum, read without running any code.

A checkpoint is ``torch.save``'s bytes followed by a 40-byte trailer: the sha256 of those bytes and
the magic ``SPCKv1\\0\\0``. Loading checks the trailer (a flipped byte, a truncated or a zero-byte
file is refused with one line) and unpickles with ``weights_only=True``: tensors, numbers,
strings, lists and dicts only, so a crafted file cannot run code. A file without a valid trailer
(truncated, damaged at its end, or written by something else) is refused unless the caller asks
for ``verify=False`` (``--no-verify``: foreign weights, softprep 0.1 checkpoints).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from softprep.errors import SoftprepError

MAGIC = b"SPCKv1\0\0"
TRAILER = 32 + len(MAGIC)


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (temp file + rename: a crash leaves the old one)."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    temp = path.with_suffix(path.suffix + ".partial")
    try:
        with open(temp, "wb") as file:
            file.write(data + hashlib.sha256(data).digest() + MAGIC)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except OSError as error:  # a full disk, a quota: keep the last good checkpoint, leave no partial file
        temp.unlink(missing_ok=True)
        raise SoftprepError(f"{path}: cannot write the checkpoint ({error.strerror or error}); the previous one is "
                            "kept: free space, then rerun the same command with --resume") from None


def load_checkpoint_state(path: str | Path, device: torch.device | str = "cpu", verify: bool = True) -> dict:
    """The checkpoint dict at ``path``, checksum verified (unless ``verify=False``), loaded without executing code.

    Raises:
        SoftprepError: missing, empty, truncated, damaged, not a checkpoint, or holding objects
            other than tensors and plain data (one line each).
    """
    path = Path(path)
    if not path.is_file():
        raise SoftprepError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    if not data:
        raise SoftprepError(f"{path}: checkpoint is empty (0 bytes; the run was killed while saving?); use an older copy")
    if data.endswith(MAGIC):
        body, digest = data[:-TRAILER], data[-TRAILER:-len(MAGIC)]
        if hashlib.sha256(body).digest() != digest:
            raise SoftprepError(f"{path}: checkpoint is damaged (checksum mismatch); use another copy or start a new run")
        data = body
    elif verify:
        raise SoftprepError(f"{path}: no valid softprep checksum trailer (truncated, damaged at its end, or not written by "
                            "softprep-train); use another copy, or pass --no-verify to load a foreign file unchecked")
    try:
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling errors of every kind become one line
        lines = str(error).splitlines() or [type(error).__name__]
        code = [line for line in lines if "GLOBAL" in line or "Unsupported global" in line]
        if code:  # the pickle names a function or class to call: never run it
            raise SoftprepError(f"{path}: refusing to load: the file holds objects other than tensors and plain data "
                                f"(a crafted or foreign checkpoint could run code): {code[0].strip()[:160]}") from None
        raise SoftprepError(f"{path}: not a readable checkpoint (truncated, or not a torch file: "
                            f"{type(error).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise SoftprepError(f"{path}: not a softprep-train checkpoint (no model and config)")
    missing = [k for k in REQUIRED if k not in state] + [f"config.{k}" for k in REQUIRED_CONFIG
                                                         if not isinstance(state["config"], dict) or k not in state["config"]]
    if missing:
        raise SoftprepError(f"{path}: not a complete softprep-train checkpoint (missing {', '.join(missing)})")
    return state


#: What every reader of a checkpoint relies on.
REQUIRED = ("model", "config", "classes", "num_classes", "crop", "kernel", "antialias", "palette")
REQUIRED_CONFIG = ("model", "scale")
