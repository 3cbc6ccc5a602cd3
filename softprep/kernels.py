"""1-D resampling weights: the one definition of every kernel, for colour and labels alike.

A 2-D resize is separable: output pixel ``(u, v)`` is ``sum_{h,w} wy[u, h] * wx[v, w] * x[h, w]``.
This module builds the per-axis weights ``wy`` and ``wx`` as *tap tables*: for each output index,
a fixed number of ``(source index, weight)`` pairs. :mod:`softprep.resample` applies the same
tables to the colour image and to the one-hot label map, so the two are paired by construction.

Semantics follow ``torch.nn.functional.interpolate(x, size=(H', W'), mode=..., align_corners=False)``
(and ``antialias=True``), with the source-to-target scale taken as ``in_size / out_size``:

* ``nearest``   torch's ``mode="nearest"`` (float32 index arithmetic, as torch computes it): source
                index ``floor(j * in / out)``, the top-left pixel of output ``j``'s footprint, which
                puts labels ``(s - 1) / 2`` source pixels up-left of the image at factor ``1/s``.
* ``nearest-exact`` torch's ``mode="nearest-exact"`` (PIL's ``NEAREST``): ``floor((j + 0.5) * in / out)``,
                the pixel at the footprint's centre: the aligned hard label.
* ``bilinear``  triangle filter; with ``antialias`` its support widens with the downscale factor.
* ``bicubic``   Keys cubic, ``a = -0.75`` (``a = -0.5`` with ``antialias``, as torch and PIL).
                Weights can be negative: see :func:`softprep.resample.soft_label` for what that
                means for soft labels.
* ``area``      the exact box filter: output pixel ``j`` averages the source interval
                ``[j * in/out, (j + 1) * in/out)`` with fractional overlaps, so every source pixel
                contributes the same total weight ``out/in``. Equals torch's ``mode="area"`` at
                integer factors; unlike it, exact at fractional ones too. ``antialias`` has no effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

KERNELS = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
#: The nearest-neighbour kernels: a hard label map sampled at one source pixel per output pixel.
NEAREST_KERNELS = ("nearest", "nearest-exact")
#: The kernel ``softprep build`` uses unless told otherwise: chosen by measurement
#: (docs/experiments/camvid.md): it trains as well as bilinear and keeps every class prior exactly.
DEFAULT_KERNEL = "area"
#: Largest per-axis common denominator for which weights are kept as exact integers: a 2-D
#: numerator then fits in uint32, and sums of them stay exact in float64.
MAX_AXIS_DENOMINATOR = 65535


@dataclass(frozen=True)
class AxisWeights:
    """Tap table of one axis.

    Attributes:
        index: ``(out, T) int64`` source index of each tap (unused taps repeat a used index).
        weight: ``(out, T) float64`` weight of each tap (unused taps weigh 0). Rows sum to 1.
        denominator: ``D`` such that every ``weight * D`` is a non-negative integer, or ``None``
            when the weights are not non-negative rationals with ``D <= MAX_AXIS_DENOMINATOR``.
    """

    index: np.ndarray
    weight: np.ndarray
    denominator: int | None

    @property
    def out_size(self) -> int:
        return self.index.shape[0]

    @property
    def taps(self) -> int:
        return self.index.shape[1]

    def int_weight(self) -> np.ndarray:
        """``(out, T) int64`` exact numerators ``weight * denominator`` (requires an exact table)."""
        if self.denominator is None:
            raise ValueError("these weights are not exact rationals with a small denominator")
        return np.rint(self.weight * self.denominator).astype(np.int64)

    def dense(self, in_size: int) -> np.ndarray:
        """``(out, in) float64`` matrix form, for tests and small references."""
        matrix = np.zeros((self.out_size, in_size))
        rows = np.repeat(np.arange(self.out_size), self.taps)
        np.add.at(matrix, (rows, self.index.ravel()), self.weight.ravel())
        return matrix


@lru_cache(maxsize=4096)
def axis_weights(kernel: str, in_size: int, out_size: int, antialias: bool = False) -> AxisWeights:
    """Tap table resampling an axis of ``in_size`` pixels to ``out_size`` pixels.

    Cached: a dataset of equal-sized images computes each table once per process.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got in={in_size} out={out_size}")
    scale = in_size / out_size
    if kernel in NEAREST_KERNELS:
        taps = _nearest_taps(in_size, out_size, centre=kernel == "nearest-exact")
    elif kernel == "area":
        taps = _area_taps(in_size, out_size)
    elif antialias:
        taps = _antialias_taps(kernel, in_size, out_size, scale)
    elif kernel == "bilinear":
        taps = _bilinear_taps(in_size, out_size, scale)
    else:
        taps = _bicubic_taps(in_size, out_size, scale)
    index, weight = _pack(taps)
    index.setflags(write=False)
    weight.setflags(write=False)
    return AxisWeights(index, weight, _common_denominator(weight))


# ---------------------------------------------------------------- kernels, one row per output index


def _nearest_taps(in_size: int, out_size: int, centre: bool) -> list[list[tuple[int, float]]]:
    # torch computes the index in float32: reproduce it so the NN labels are bit-identical.
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32) + (np.float32(0.5) if centre else np.float32(0))
    src = np.minimum(np.floor(dst * scale).astype(np.int64), in_size - 1)
    if out_size == in_size:
        src = np.arange(out_size)
    return [[(int(s), 1.0)] for s in src]


def _bilinear_taps(in_size: int, out_size: int, scale: float) -> list[list[tuple[int, float]]]:
    rows = []
    for dst in range(out_size):
        src = max(scale * (dst + 0.5) - 0.5, 0.0)
        i0 = int(src)
        i1 = min(i0 + 1, in_size - 1)
        lam = min(max(src - i0, 0.0), 1.0)
        rows.append([(i0, 1.0 - lam), (i1, lam)])
    return rows


def _cubic(x: float, a: float) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def _bicubic_taps(in_size: int, out_size: int, scale: float) -> list[list[tuple[int, float]]]:
    rows = []
    for dst in range(out_size):
        src = scale * (dst + 0.5) - 0.5  # no clamp for cubic, as torch
        i0 = math.floor(src)
        t = src - i0
        rows.append([(min(max(i0 - 1 + k, 0), in_size - 1), _cubic(t + 1.0 - k, -0.75)) for k in range(4)])
    return rows


def _triangle(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _antialias_taps(kernel: str, in_size: int, out_size: int, scale: float) -> list[list[tuple[int, float]]]:
    """torch's ``antialias=True`` filters: support widened by the downscale factor, rows renormalised."""
    interp_size = 2 if kernel == "bilinear" else 4
    kernel_fn = _triangle if kernel == "bilinear" else (lambda x: _cubic(x, -0.5))
    support = interp_size * 0.5 * scale if scale >= 1.0 else interp_size * 0.5
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    rows = []
    for dst in range(out_size):
        center = scale * (dst + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = [kernel_fn((j + xmin - center + 0.5) * invscale) for j in range(xmax - xmin)]
        total = sum(w)
        rows.append([(xmin + j, wj / total if total != 0.0 else wj) for j, wj in enumerate(w)])
    return rows


def _area_taps(in_size: int, out_size: int) -> list[list[tuple[int, float]]]:
    # In units of 1/out of a source pixel, source pixel i spans [i*out, (i+1)*out) and output
    # pixel j spans [j*in, (j+1)*in): overlaps are integers, each weight is overlap / in.
    rows = []
    for dst in range(out_size):
        lo, hi = dst * in_size, (dst + 1) * in_size
        first, last = lo // out_size, (hi - 1) // out_size
        row = []
        for i in range(first, last + 1):
            overlap = min(hi, (i + 1) * out_size) - max(lo, i * out_size)
            row.append((i, overlap / in_size))
        rows.append(row)
    return rows


# ---------------------------------------------------------------- packing and exactness


def _pack(rows: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Drop zero-weight taps, pad every row to the same tap count with zero-weight repeats."""
    rows = [[(i, w) for i, w in row if w != 0.0] or [row[0]] for row in rows]
    taps = max(len(row) for row in rows)
    index = np.empty((len(rows), taps), dtype=np.int64)
    weight = np.zeros((len(rows), taps), dtype=np.float64)
    for r, row in enumerate(rows):
        for t, (i, w) in enumerate(row):
            index[r, t], weight[r, t] = i, w
        index[r, len(row):] = row[0][0]
    return index, weight


def _common_denominator(weight: np.ndarray) -> int | None:
    """Smallest ``D <= MAX_AXIS_DENOMINATOR`` making every weight a non-negative integer over D."""
    if (weight < 0).any():
        return None
    denominator = 1
    for w in np.unique(weight):
        denominator = math.lcm(denominator, Fraction(float(w)).limit_denominator(MAX_AXIS_DENOMINATOR).denominator)
        if denominator > MAX_AXIS_DENOMINATOR:
            return None
    scaled = weight * denominator
    if np.abs(scaled - np.rint(scaled)).max() > 1e-9:
        return None
    return denominator
