"""Streaming a softprep store into torch: the dataset, its paired augmentation, and batching.

A training sample is read at a *source* target of the store and brought to the crop by one
geometry: resize by a random factor, random crop (padding marked ignore), horizontal flip. The
geometry is two matrices built from :mod:`softprep.kernels` (the store's own kernel), so colour
and soft label go through the very same linear map, ``out = rows @ x @ cols.T`` per channel
(a store built with its own ``--image-kernel`` gives the colour image that kernel's matrices):

* ``rows``: ``(crop_h, src_h) float32``, the resize taps of the kept output rows; padding rows are 0.
* ``cols``: ``(crop_w, src_w) float32``, the same for columns, reversed when flipped.

The taps come from :func:`softprep.plan.plan_for_size` (source size -> resized size). Workers
ship them as tap tables (:func:`axis_taps`, :func:`axis_nearest`); :func:`taps_to_matrix` expands them.

Hard labels (``ce-nn``) take the nearest-neighbour index of the same geometry: by default
``nearest-exact`` (pixel centres) over the store's centred ``nn`` map at the source target, so they
stay aligned with the colour image through resize, crop and flip without a full-resolution target;
``nn_sampling="floor"`` takes torch ``nearest`` over the store's ``nn_floor`` map (what pipelines do).

Densifying the sparse soft label and applying the geometry happen in :func:`finish_sample`,
either in the DataLoader workers (``densify="worker"``) or on the training device
(``densify="device"``: workers ship the small sparse planes instead of ``(C, h, w)`` floats).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from softprep.errors import SoftprepError
from softprep.softlabel import IGNORE_INDEX, SoftLabel
from softprep.kernels import AxisWeights
from softprep.plan import target_name, plan_for_size
from softprep.store import open_store
from softprep_train.config import NN_SAMPLINGS, default

RESIZE_RANGE = (0.5, 2.0)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


#: The stored target holding the original labels (where a format-3 store's centred labels come from).
FULL_RESOLUTION = "1.0"


@dataclass
class Augment:
    """The paper's crop-based scheme: resize by ``U(resize_range)``, crop ``crop`` (h, w), flip."""

    crop: tuple[int, int]
    resize_range: tuple[float, float] = RESIZE_RANGE
    flip: bool = True


def axis_taps(taps: AxisWeights, start: int, length: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """One axis of a geometry: the resize ``taps`` ``src -> out``, keeping ``[start, start + length)``
    (beyond ``out``: padding), in the compact form that travels from worker to trainer:
    ``index (length, T) int64`` and ``weight (length, T) float32`` (padding: weight 0), reversed when ``flip``."""
    keep = np.arange(start, min(start + length, taps.out_size))
    index = np.zeros((length, taps.taps), dtype=np.int64)
    weight = np.zeros((length, taps.taps), dtype=np.float32)
    index[: len(keep)], weight[: len(keep)] = taps.index[keep], taps.weight[keep]
    return (index[::-1].copy(), weight[::-1].copy()) if flip else (index, weight)


def axis_nearest(table: AxisWeights, start: int, length: int, flip: bool) -> np.ndarray:
    """One axis of a hard label's geometry: ``(length,) int64`` source index of each kept output pixel
    of a nearest-neighbour ``table`` (-1 beyond ``out``: padding), reversed when ``flip``."""
    keep = np.arange(start, min(start + length, table.out_size))
    index = np.full(length, -1, dtype=np.int64)
    index[: len(keep)] = table.index[keep, 0]
    return index[::-1].copy() if flip else index


def taps_to_matrix(index: torch.Tensor, weight: torch.Tensor, src: int) -> torch.Tensor:
    """``(length, T)`` taps -> the ``(length, src) float32`` resampling matrix (zero rows: padding)."""
    matrix = torch.zeros((index.shape[0], src), dtype=torch.float32, device=weight.device)
    return matrix.scatter_add_(1, index, weight)


def densify(classes: torch.Tensor, weights: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Sparse slots ``classes (K, h, w) uint8`` + ``weights (K, h, w) float32`` -> ``(C, h, w) float32``."""
    index = classes.long().clamp_max(num_classes)  # IGNORE_INDEX -> the discarded row C
    dense = torch.zeros((num_classes + 1, *classes.shape[1:]), dtype=weights.dtype, device=weights.device)
    dense.scatter_add_(0, index, weights)
    return dense[:num_classes]


def finish_sample(raw: dict, num_classes: int | None = None) -> dict:
    """Densify and apply the geometry: ``image (3, h, w) float32`` in [0, 255], ``soft (C, h, w)
    float32`` (sums to the valid fraction; 0 on padding), ``nn (h, w) int64`` (255 = ignore).

    Only the source window the taps reach is densified and resampled: the cost follows the crop,
    not the size of the stored image. A store whose colour kernel differs from its label kernel
    ships the colour taps apart (``image_row_index`` ...).
    """
    device = raw["classes"].device
    window, resample = _geometry(raw, "", device)
    weights = raw["weights"][(slice(None), *window)].float() / raw.get("denominator", 1.0)
    soft = densify(raw["classes"][(slice(None), *window)], weights, num_classes or raw["num_classes"])
    image_window, resample_image = _geometry(raw, "image_", device) if "image_row_index" in raw else (window, resample)
    image = raw["image"][image_window].permute(2, 0, 1).float()
    out = {"image": resample_image(image), "soft": resample(soft)}
    if (raw["row_weight"] < 0).any() or (raw["col_weight"] < 0).any():
        out["soft"] = _clamp_to_distribution(out["soft"])
    nn_rows, nn_cols = raw["nn_rows"].to(device), raw["nn_cols"].to(device)
    nn = raw["nn"].long()[nn_rows.clamp_min(0)][:, nn_cols.clamp_min(0)]
    nn[(nn_rows < 0)[:, None] | (nn_cols < 0)[None, :]] = IGNORE_INDEX
    out["nn"] = nn
    return out


def _clamp_to_distribution(raw: torch.Tensor) -> torch.Tensor:
    """Negative-weight kernels (bicubic) can push a class below 0 or a pixel above 1: clamp classes at
    0 and rescale to ``clip(sum, 0, 1)``, the rule the store's own bicubic soft labels follow."""
    valid = raw.sum(0, keepdim=True).clamp(0.0, 1.0)
    clamped = raw.clamp_min(0.0)
    total = clamped.sum(0, keepdim=True)
    return torch.where(total > 0, clamped * valid / total.clamp_min(1e-12), torch.zeros_like(clamped))


def _geometry(raw: dict, prefix: str, device) -> tuple[tuple[slice, slice], Callable[[torch.Tensor], torch.Tensor]]:
    """The source window ``(rows, cols)`` the taps ``{prefix}row_*`` / ``{prefix}col_*`` reach, and the
    function resampling a ``(C, window_h, window_w)`` tensor with them."""
    row_weight, col_weight = raw[f"{prefix}row_weight"].to(device), raw[f"{prefix}col_weight"].to(device)
    (top, bottom), row_index = _tap_window(raw[f"{prefix}row_index"].to(device), row_weight)
    (left, right), col_index = _tap_window(raw[f"{prefix}col_index"].to(device), col_weight)

    def resample(x: torch.Tensor) -> torch.Tensor:
        # Columns are resampled as rows of the transposed map: torch gathers whole rows far faster.
        rows = apply_taps(x, row_index, row_weight, 1).transpose(1, 2).contiguous()
        return apply_taps(rows, col_index, col_weight, 1).transpose(1, 2)

    return (slice(top, bottom), slice(left, right)), resample


def _tap_window(index: torch.Tensor, weight: torch.Tensor) -> tuple[tuple[int, int], torch.Tensor]:
    """The source range ``[lo, hi)`` the non-zero taps reach, and ``index`` shifted into it."""
    used = index[weight != 0]
    if used.numel() == 0:  # all padding
        return (0, 1), torch.zeros_like(index)
    lo, hi = int(used.min()), int(used.max()) + 1
    return (lo, hi), (index - lo).clamp(0, hi - lo - 1)


def apply_taps(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Resample ``x`` along ``dim`` with ``(L, T)`` taps: ``out[.., l, ..] = sum_t weight[l, t] x[.., index[l, t], ..]``
    (one gather per tap: ``T`` is small, a dense ``(L, src)`` matrix would be mostly zeros)."""
    shape = [1] * x.dim()
    shape[dim] = index.shape[0]
    out = x.index_select(dim, index[:, 0]).mul_(weight[:, 0].reshape(shape))
    for t in range(1, index.shape[1]):
        out.addcmul_(x.index_select(dim, index[:, t]), weight[:, t].reshape(shape))
    return out


class StoreDataset(Dataset):
    """One split of a store at a training target (``0.25``, ``"short512"``), with the paired augmentation.

    Each DataLoader worker opens the store itself on first use (nothing unpicklable is held).
    Index with ``(i, seed)`` (what :class:`TrainSampler` yields): the augmentation is drawn from
    ``seed``, so a run is reproducible whatever the worker count. Index with a plain ``i`` (a
    plain ``DataLoader(dataset, shuffle=True)``): with ``augment``, a fresh augmentation is drawn
    from torch's random generator (seeded per worker and epoch by the DataLoader, reproducible
    under ``torch.manual_seed``); without, the stored sample at ``target``.

    Items: with ``densify="worker"``, :func:`finish_sample`'s dict (plus ``index``); with
    ``densify="device"``, the raw sparse dict that :func:`finish_sample` takes.

    ``cache=True`` keeps every decoded stored sample (colour, sparse soft label, NN map) in this
    process's memory after its first read: for datasets that fit in memory, where reading and
    decoding would dominate the steps of a small model. ``nn_sampling`` (:data:`NN_SAMPLINGS`)
    chooses how the ``nn`` labels are sampled: ``"centre"`` (default) at pixel centres from the
    source target's centred map (a format-3 store, whose maps are torch ``nearest``: from its
    target ``1.0``), ``"floor"`` by torch ``nearest`` from the ``nn_floor`` map.
    """

    finish = staticmethod(finish_sample)

    def __init__(self, store_path: str, split: str, target, augment: Augment | None = None,
                 densify: str = "worker", cache: bool = False, nn_sampling: str = default("nn_sampling")):
        store = open_store(store_path)
        if nn_sampling not in NN_SAMPLINGS:
            raise SoftprepError(f"unknown nn_sampling {nn_sampling!r}; choose one of {', '.join(NN_SAMPLINGS)}")
        #: format 3 kept torch ``nearest`` maps only: centred labels come from the original labels
        self._centre_from_full = nn_sampling == "centre" and store.nn_rule != "nearest-exact"
        if self._centre_from_full and FULL_RESOLUTION not in store.targets:
            raise SoftprepError(f"{store_path}: a format-{store.format_version} store keeps torch nearest maps only, so "
                                f"centred labels come from the full-resolution labels, and it has no target "
                                f"{FULL_RESOLUTION}; rebuild it (softprep build ... --overwrite) for centred maps at every target")
        self.cache, self.nn_sampling, self._cached = cache, nn_sampling, {}
        self.store_path, self.split, self.target = str(store_path), split, target_name(target)
        self.augment, self.densify = augment, densify
        spec = store.spec
        self.kernel, self.antialias, self.image_kernel = spec.kernel, spec.antialias, spec.colour_kernel
        self.num_classes = spec.num_classes
        self.ids = store.spec.splits[split].ids
        #: ``{target: (N, 2) int}`` stored size of every image at every target (the sources to read from).
        self.sizes = {t: store.samples(split, t).sizes for t in store.targets}
        store.samples(split, self.target)  # a clear error now for a missing split or target
        self._store, self._pid, self._views = None, None, {}

    def __len__(self) -> int:
        return len(self.ids)

    def view(self, target: str):
        """This process's reader of the split at ``target`` (each worker opens the store once)."""
        if self._pid != os.getpid():
            self._store, self._pid, self._views, self._cached = open_store(self.store_path), os.getpid(), {}, {}
        if target not in self._views:
            self._views[target] = self._store.samples(self.split, target)
        return self._views[target]

    def source_target(self, index: int, size: tuple[int, int]) -> str:
        """The stored target whose image ``index`` is the smallest at or above ``size (h, w)`` (else the
        largest): the least resizing, judged on this image's own recorded sizes."""
        by_pixels = sorted(self.sizes, key=lambda t: int(self.sizes[t][index].prod()))
        return next((t for t in by_pixels if (self.sizes[t][index] >= size).all()), by_pixels[-1])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is None and self.augment is not None:
            seed = int(torch.randint(0, 2**62, ()).item())
        raw = self.raw(index, seed)
        if self.densify == "device":
            return raw
        return {**finish_sample(raw, self.num_classes), "index": index}

    def raw(self, index: int, seed: int | None) -> dict:
        """Sparse sample at its source target, with the geometry matrices of its augmentation."""
        base_h, base_w = (int(v) for v in self.sizes[self.target][index])
        if self.augment is None or seed is None:
            (out_h, out_w), source = (base_h, base_w), self.target
            crop, start, flip = (out_h, out_w), (0, 0), False
        else:
            rng = np.random.default_rng(seed)
            low, high = self.augment.resize_range
            ratio = rng.uniform(low, high)
            out_h, out_w = max(1, round(base_h * ratio)), max(1, round(base_w * ratio))
            source = self.source_target(index, (out_h, out_w))
            crop = self.augment.crop
            start = (int(rng.integers(0, max(out_h - crop[0], 0) + 1)), int(rng.integers(0, max(out_w - crop[1], 0) + 1)))
            flip = bool(self.augment.flip and rng.random() < 0.5)
        image, soft, nn = self.stored(source, index)
        shape = image.shape[:2]
        plan = plan_for_size(self.kernel, self.antialias, shape, (out_h, out_w))
        if self._centre_from_full:
            nn = self.full_resolution_labels(index)
        hard = plan_for_size(self.kernel, self.antialias, nn.shape, (out_h, out_w))  # the hard map's own tables
        hard_rows, hard_cols = ((hard.floor_rows, hard.floor_cols) if self.nn_sampling == "floor"
                                else (hard.nearest_rows, hard.nearest_cols))
        row_index, row_weight = axis_taps(plan.rows, start[0], crop[0], False)
        col_index, col_weight = axis_taps(plan.cols, start[1], crop[1], flip)
        nn_rows, nn_cols = axis_nearest(hard_rows, start[0], crop[0], False), axis_nearest(hard_cols, start[1], crop[1], flip)
        colour = {}
        if self.image_kernel != self.kernel:  # Table IV stores: the colour image's own kernel
            image_plan = plan_for_size(self.image_kernel, self.antialias, shape, (out_h, out_w))
            for axis, taps, begin, length, flipped in (("row", image_plan.rows, start[0], crop[0], False),
                                                       ("col", image_plan.cols, start[1], crop[1], flip)):
                tap_index, weight = axis_taps(taps, begin, length, flipped)
                colour[f"image_{axis}_index"], colour[f"image_{axis}_weight"] = torch.from_numpy(tap_index), torch.from_numpy(weight)
        return {**colour,
            "image": torch.from_numpy(image),
            "classes": torch.from_numpy(soft.classes),
            "weights": compact_weights(soft.weights),
            "denominator": float(soft.denominator or 1),
            "nn": torch.from_numpy(nn),
            "row_index": torch.from_numpy(row_index), "row_weight": torch.from_numpy(row_weight),
            "col_index": torch.from_numpy(col_index), "col_weight": torch.from_numpy(col_weight),
            "nn_rows": torch.from_numpy(nn_rows), "nn_cols": torch.from_numpy(nn_cols),
            "index": index, "num_classes": self.num_classes,
        }

    def stored(self, target: str, index: int) -> tuple[np.ndarray, SoftLabel, np.ndarray]:
        """Image ``index`` as stored at ``target``: colour ``(h, w, 3) uint8``, the sparse soft label,
        the hard map ``nn_sampling`` samples from ``(h, w) uint8``; from memory when cached."""
        hard = (lambda sample: sample.nn_floor()) if self.nn_sampling == "floor" else (lambda sample: sample.nn())
        return self._remember((target, index), lambda sample: (np.ascontiguousarray(sample.image), sample.soft_label(),
                                                               hard(sample)))

    def full_resolution_labels(self, index: int) -> np.ndarray:
        """``(H, W) uint8`` original labels of image ``index`` (the store's target 1.0); cached like :meth:`stored`."""
        return self._remember(("labels", index), lambda sample: sample.nn())

    def _remember(self, key: tuple, read: Callable):
        target = FULL_RESOLUTION if key[0] == "labels" else key[0]
        view = self.view(target)  # first: a new process drops the parent's cache
        if key not in self._cached:
            value = read(view[key[1]])
            if not self.cache:
                return value
            self._cached[key] = value
        return self._cached[key]


def normalise(image: torch.Tensor) -> torch.Tensor:
    """``(B, 3, h, w)`` float in [0, 255] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
    return (image - mean) / std


def compact_weights(weights: np.ndarray) -> torch.Tensor:
    """Stored weights as they travel to the trainer: integer numerators stay integers (uint8 for
    D = 4 is 4x smaller than float32); torch's missing uint16/uint32 arithmetic widens those."""
    widened = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}.get(weights.dtype)
    return torch.from_numpy(weights.astype(widened) if widened else weights)


def collate(items: list[dict]) -> dict | list[dict]:
    """Stack finished samples; leave raw (device-densified) samples as a list."""
    if "soft" in items[0]:
        return {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}
    return items


def to_device(batch: dict | list[dict], device: torch.device | str, num_classes: int | None = None,
              finish: Callable[[dict, int | None], dict] = finish_sample) -> dict:
    """A batch on ``device``: ``image (B, 3, h, w)``, ``soft (B, C, h, w)``, ``nn (B, h, w)`` (volumes:
    ``(B, C_in, x, y, z)`` ...). Raw (sparse) samples are finished there by ``finish`` (the
    dataset's: :func:`finish_sample`, or a volume dataset's ``finish_patch``)."""
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    done = [finish({k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in raw.items()},
                   num_classes) for raw in batch]
    return {key: torch.stack([d[key] for d in done]) for key in done[0]}


class TrainSampler(Sampler):
    """``(index, augmentation seed)`` pairs: epochs of a :class:`DistributedSampler` (shuffled with
    ``seed + epoch``, this rank's share), started at ``start_batch`` so that a resumed run sees
    exactly the batches an uninterrupted one would. Endless unless ``epochs`` is given (an
    iteration-based loop stops itself)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1, epochs: int | None = None):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.start_batch, self.rank, self.world_size, self.epochs = start_batch, rank, world_size, epochs
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained) of a resumed run
        self._skipped = 0  # batches of the current epoch a resumed run already trained on

    def batches_per_epoch(self) -> int:
        per_rank = math.ceil(len(self.dataset) / self.world_size)
        return max(1, per_rank // self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_epoch = self.batches_per_epoch()
        epoch, skip = divmod(self.start_batch, per_epoch)
        while self.epochs is None or epoch < self.epochs:
            sampler = DistributedSampler(self.dataset, num_replicas=self.world_size, rank=self.rank,
                                         shuffle=True, seed=self.seed)
            sampler.set_epoch(epoch)
            indices = list(sampler)
            if len(indices) < self.batch_size:  # fewer images than a batch: repeat them
                indices = (indices * math.ceil(self.batch_size / max(1, len(indices))))[: self.batch_size]
            for position, index in enumerate(indices[skip * self.batch_size: per_epoch * self.batch_size], skip * self.batch_size):
                yield index, _mix(self.seed, epoch, position, self.rank)
            epoch, skip = epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Yield exactly epoch ``epoch`` (0-based) from now on: what epoch-based trainers (Lightning)
        call before each epoch; the same ``(index, seed)`` pairs as the iteration-based loop. An epoch
        resumed part-way (:meth:`resume`) starts at its next batch."""
        self._skipped = self._resume[1] if self._resume and self._resume[0] == epoch else 0
        self.start_batch, self.epochs = epoch * self.batches_per_epoch() + self._skipped, epoch + 1

    def resume(self, epoch: int, batches: int) -> None:
        """Continue epoch ``epoch`` after its first ``batches`` batches (a checkpoint taken mid-epoch)."""
        self._resume = (epoch, batches)
        self.set_epoch(epoch)

    def __len__(self) -> int:
        """Samples of the epochs to come, counting a resumed epoch whole: a trainer that resumes
        mid-epoch counts the batches it already trained on itself."""
        if self.epochs is None:  # endless; DataLoader only needs this for len(loader)
            return 2**62
        return max(0, self.epochs * self.batches_per_epoch() - self.start_batch + self._skipped) * self.batch_size


def _mix(*values: int) -> int:
    """A 63-bit augmentation seed from run seed, epoch, position and rank."""
    return int(np.random.SeedSequence(list(values)).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


__all__ = ["Augment", "StoreDataset", "TrainSampler", "collate", "densify", "finish_sample", "to_device"]
