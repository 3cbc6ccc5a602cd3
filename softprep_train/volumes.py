"""Streaming a volume store into torch: random 3-D patches with flips, soft labels shipped sparse.

A training sample is a ``patch`` (x, y, z voxels) cut from a volume as stored at the training
target, flipped along each axis with probability 1/2. The random parameters are drawn apart from
applying them (:func:`draw_patch` / :func:`cut_patch`, torchvision's ``_get_params`` /
``_transform``): the intensities, the sparse soft-label planes and the hard labels go through the
very same cut, and a test can apply chosen parameters without a store.

The soft label travels sparse (``classes (K, x, y, z) uint8``, ``weights (K, x, y, z)``, K the
store's slots for the volume, usually 2-4) and becomes ``(C, x, y, z)`` only in
:func:`finish_patch`: in the DataLoader workers (``densify="worker"``) or on the training device
(``densify="device"``), where 100 classes cost 100 planes only once there.

Intensities are standardised per volume and channel (zero mean, unit variance over the stored
volume: nnU-Net's scheme for MRI), so ``fit`` feeds them to the model as they are. A volume
smaller than the patch is padded at the end of each axis: intensity 0, no soft-label weight,
hard label 255 (ignored by both losses).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from softprep.errors import SoftprepError
from softprep.plan import target_name
from softprep.softlabel import IGNORE_INDEX, SoftLabel
from softprep.store import open_store
from softprep_train.config import NN_SAMPLINGS, default
from softprep_train.data import compact_weights, densify

SPATIAL = 3


@dataclass(frozen=True)
class PatchParams:
    """Where a patch is cut and how it is flipped: ``start`` (x, y, z) voxels, ``flips`` per axis."""

    start: tuple[int, int, int]
    flips: tuple[bool, bool, bool]


def draw_patch(rng: np.random.Generator, shape: tuple[int, ...], patch: tuple[int, ...], flip: bool = True) -> PatchParams:
    """Uniform patch start inside a volume of ``shape`` (0 where the volume is smaller than the
    patch), and a flip per axis with probability 1/2 (none when ``flip`` is False)."""
    start = tuple(int(rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(shape, patch))
    flips = tuple(bool(flip and rng.random() < 0.5) for _ in shape)
    return PatchParams(start, flips)


def cut_patch(array: np.ndarray, params: PatchParams, patch: tuple[int, ...], fill) -> np.ndarray:
    """``array (..., X, Y, Z)`` -> ``(..., *patch)``: the patch at ``params.start`` (padded with
    ``fill`` at the end of each axis the volume does not reach), then flipped."""
    out = np.full((*array.shape[:-SPATIAL], *patch), fill, dtype=array.dtype)
    inside = tuple(slice(s, min(s + p, n)) for s, p, n in zip(params.start, patch, array.shape[-SPATIAL:]))
    region = array[(..., *inside)]
    out[(..., *(slice(0, n) for n in region.shape[-SPATIAL:]))] = region
    flipped = [out.ndim - SPATIAL + axis for axis, f in enumerate(params.flips) if f]
    return np.ascontiguousarray(np.flip(out, flipped) if flipped else out)


def standardise(image: np.ndarray) -> np.ndarray:
    """``(X, Y, Z, C) float32`` -> ``(C, X, Y, Z) float32``, each channel at zero mean, unit variance."""
    channels = np.moveaxis(image, -1, 0).astype(np.float32)
    mean = channels.mean(axis=(1, 2, 3), keepdims=True)
    std = channels.std(axis=(1, 2, 3), keepdims=True)
    return (channels - mean) / np.maximum(std, 1e-6)


def finish_patch(raw: dict, num_classes: int | None = None) -> dict:
    """Densify a sparse patch: ``image (C_in, x, y, z) float32``, ``soft (C, x, y, z) float32`` (sums
    to the valid fraction; 0 on padding), ``nn (x, y, z) int64`` (255 = ignore)."""
    weights = raw["weights"].float() / raw.get("denominator", 1.0)
    soft = densify(raw["classes"], weights, num_classes or raw["num_classes"])
    return {"image": raw["image"].float(), "soft": soft, "nn": raw["nn"].long()}


class VolumeDataset(Dataset):
    """One split of a volume store at a training target (``"2mm"``), as random patches.

    Index with ``(i, seed)`` (what :class:`~softprep_train.data.TrainSampler` yields): the patch and
    flips are drawn from ``seed``, so a run is reproducible whatever the worker count; with a plain
    ``i``, from torch's generator (``patch`` set) or the whole stored volume (``patch=None``).

    Items: with ``densify="worker"``, :func:`finish_patch`'s dict plus ``index``; with
    ``densify="device"``, the sparse dict it takes. ``cache=True`` keeps every decoded volume in
    this process's memory after its first read.
    """

    finish = staticmethod(finish_patch)

    def __init__(self, store_path: str, split: str, target, patch: tuple[int, ...] | None = None, flip: bool = True,
                 densify: str = "worker", cache: bool = False, nn_sampling: str = default("nn_sampling")):
        store = open_store(store_path)
        if split not in store.splits:
            raise SoftprepError(f"{store_path}: no split {split!r}; the store has {', '.join(store.splits)}")
        if store.spec.splits[split].ndim != SPATIAL:
            raise SoftprepError(f"{store_path}: split {split!r} holds 2-D images, not volumes; train it with a 2-D model")
        if patch is not None and len(patch) != SPATIAL:
            raise SoftprepError(f"a volume patch has 3 sides (XxYxZ), got {'x'.join(map(str, patch))}")
        self.store_path, self.split, self.target = str(store_path), split, target_name(target)
        if nn_sampling not in NN_SAMPLINGS:
            raise SoftprepError(f"unknown nn_sampling {nn_sampling!r}; choose one of {', '.join(NN_SAMPLINGS)}")
        self.patch, self.flip, self.densify, self.cache = (tuple(patch) if patch else None), flip, densify, cache
        self.nn_sampling = nn_sampling
        self.num_classes, self.in_channels = store.spec.num_classes, store.spec.image_channels
        self.ids = store.spec.splits[split].ids
        #: ``(N, 3) int`` stored size of every volume at the target.
        self.sizes = store.samples(split, self.target).sizes
        self._view, self._pid, self._cached = None, None, {}

    def __len__(self) -> int:
        return len(self.ids)

    def view(self):
        """This process's reader of the split at the target (each worker opens the store once)."""
        if self._pid != os.getpid():
            self._view, self._pid, self._cached = open_store(self.store_path).samples(self.split, self.target), os.getpid(), {}
        return self._view

    def stored(self, index: int) -> tuple[np.ndarray, SoftLabel, np.ndarray]:
        """Volume ``index`` as stored: standardised ``(C_in, X, Y, Z) float32``, the sparse soft
        label, the hard labels ``(X, Y, Z) uint8`` (``nearest-exact``; torch ``nearest`` with
        ``nn_sampling="floor"``); from memory when cached."""
        view = self.view()
        if index in self._cached:
            return self._cached[index]
        sample = view[index]
        value = (standardise(sample.image), sample.soft_label(), sample.nn_floor() if self.nn_sampling == "floor" else sample.nn())
        if self.cache:
            self._cached[index] = value
        return value

    def params(self, index: int, seed: int | None) -> PatchParams | None:
        """The patch of volume ``index`` drawn from ``seed`` (None: the whole volume, unflipped)."""
        if self.patch is None:
            return None
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        return draw_patch(np.random.default_rng(seed), tuple(int(v) for v in self.sizes[index]), self.patch, self.flip)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        raw = self.raw(index, self.params(index, seed))
        return raw if self.densify == "device" else {**finish_patch(raw, self.num_classes), "index": index}

    def raw(self, index: int, params: PatchParams | None) -> dict:
        """The sparse patch of volume ``index`` cut with ``params`` (None: the whole volume)."""
        image, soft, nn = self.stored(index)
        patch = self.patch if params is not None else tuple(nn.shape)
        params = params or PatchParams((0, 0, 0), (False, False, False))
        return {
            "image": torch.from_numpy(cut_patch(image, params, patch, 0.0)),
            "classes": torch.from_numpy(cut_patch(soft.classes, params, patch, IGNORE_INDEX)),
            "weights": compact_weights(cut_patch(soft.weights, params, patch, 0)),
            "denominator": float(soft.denominator or 1),
            "nn": torch.from_numpy(cut_patch(nn, params, patch, IGNORE_INDEX)),
            "index": index, "num_classes": self.num_classes,
        }


__all__ = ["PatchParams", "VolumeDataset", "cut_patch", "draw_patch", "finish_patch", "standardise"]
