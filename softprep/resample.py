"""Apply tap tables (:mod:`softprep.kernels`) to pixels: colour images and label maps.

This is the only module that touches pixels. The colour image and the soft label of a sample
are computed from the very same :class:`~softprep.kernels.AxisWeights`, so they are paired by
construction.

Soft labels never materialise the ``(C, H, W)`` one-hot volume. Most output pixels see a single
class under their kernel window; they are found with separable window minima and maxima (a pixel
is single-class iff the smallest and largest code in its window agree) and written directly.
Only the remaining multi-class pixels gather their windows and sum weights per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from softprep.kernels import AxisWeights
from softprep.softlabel import IGNORE_INDEX, MAX_CLASSES, SoftLabel, from_sparse_rows

#: Label value that marks unlabelled pixels in train-id maps.


def resize_image(image: np.ndarray, wy: AxisWeights, wx: AxisWeights) -> np.ndarray:
    """Resample a colour image.

    Args:
        image: ``(H, W, 3) uint8`` (any trailing channel count works).
        wy, wx: tap tables ``H -> H'`` and ``W -> W'``.

    Returns:
        ``(H', W', 3) uint8``, rounded to nearest (ties to even) and clipped to [0, 255].
    """
    both = _apply_taps(_apply_taps(image, wy, axis=0), wx, axis=1)
    np.rint(both, out=both)
    np.clip(both, 0, 255, out=both)
    return both.astype(np.uint8)


def _apply_taps(array: np.ndarray, taps: AxisWeights, axis: int) -> np.ndarray:
    """``float32`` weighted sums of ``array`` along ``axis`` (length ``in_size`` -> ``out_size``).

    Whole slices are gathered with ``np.take`` and accumulated in place. The array is viewed as
    ``(before, axis, after)``; when ``after`` is short (the 3 channels behind the last spatial
    axis) each weight is repeated over it, so every multiply still runs along one long row.
    """
    before = int(np.prod(array.shape[:axis]))
    after = int(np.prod(array.shape[axis + 1:]))
    flat = array.reshape(before, array.shape[axis], after)
    weight = taps.weight.T.astype(np.float32)[:, :, None]  # (taps, out, 1)
    if after < 64:
        weight = np.ascontiguousarray(np.repeat(weight, after, axis=2))  # (taps, out, after)

    def tap(t: int) -> np.ndarray:
        return np.take(flat, taps.index[:, t], axis=1)

    out = np.multiply(tap(0), weight[0], dtype=np.float32)
    term = np.empty_like(out)
    for t in range(1, taps.taps):
        np.multiply(tap(t), weight[t], out=term)
        out += term
    return out.reshape(*array.shape[:axis], taps.out_size, *array.shape[axis + 1:])


def nearest_labels(label: np.ndarray, wy: AxisWeights, wx: AxisWeights) -> np.ndarray:
    """``(H', W')`` label map sampled at the first tap of each axis (for ``nearest`` tables:
    torch's ``mode="nearest"``)."""
    return label[np.ix_(wy.index[:, 0], wx.index[:, 0])]


@dataclass(frozen=True)
class PreparedLabel:
    """A label map readied for soft labelling at several scales (shared work done once).

    Attributes:
        codes: ``(H, W) uint8`` class ids with ignore replaced by ``num_classes`` (the void code).
        num_classes: ``C``.
    """

    codes: np.ndarray
    num_classes: int

    def class_counts(self) -> np.ndarray:
        """``(C,) int64`` labelled full-resolution pixels per class (ignore is not counted)."""
        return np.bincount(self.codes.ravel(), minlength=self.num_classes + 1)[: self.num_classes].astype(np.int64)


def prepare_label(label: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> PreparedLabel:
    """Validate ``label`` (``(H, W) uint8`` train ids, ``ignore_index`` for unlabelled) and
    precompute what every scale needs."""
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D (H, W), got shape {label.shape}")
    if num_classes > MAX_CLASSES:
        raise ValueError(f"at most {MAX_CLASSES} classes are supported, got {num_classes}")
    ignored = label == ignore_index
    invalid = (label >= num_classes) & ~ignored  # the value num_classes too: it is the void code below
    if invalid.any():
        bad = int(label[invalid].flat[0])
        raise ValueError(f"label value {bad} is neither a class id (< {num_classes}) nor ignore ({ignore_index})")
    codes = label.astype(np.uint8, copy=True)
    codes[ignored] = num_classes
    return PreparedLabel(codes, num_classes)


def soft_label(
    label: np.ndarray | PreparedLabel,
    wy: AxisWeights,
    wx: AxisWeights,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> SoftLabel:
    """Downsample a label map into a soft label with the kernel of ``wy`` and ``wx``.

    Each output pixel gets, per class, the sum of the 2-D weights ``wy[u, h] * wx[v, w]`` of
    the source pixels of that class; weights over ignore pixels are left out, so a pixel's
    weights sum to its valid fraction.

    Negative weights (``bicubic``): a class's raw sum ``r_c`` can fall below 0 or rise above 1.
    The soft label keeps a distribution: ``s_c = max(r_c, 0)``, rescaled so that ``sum_c s_c``
    equals the valid fraction ``clip(sum_c r_c, 0, 1)``. Where every ``r_c >= 0`` and no ignore
    is near, this is ``r_c`` unchanged.

    Args:
        label: ``(H, W) uint8`` train ids, or a :class:`PreparedLabel` (then ``num_classes``
            and ``ignore_index`` come from it).
        wy, wx: tap tables ``H -> H'`` and ``W -> W'``.
        num_classes: ``C``.

    Returns:
        :class:`SoftLabel` of shape ``(H', W')``; exact integer weights when both tables are exact.
    """
    if not isinstance(label, PreparedLabel):
        if num_classes is None:
            raise TypeError("num_classes is required with a raw label map")
        label = prepare_label(label, num_classes, ignore_index)
    codes, void = label.codes, label.num_classes
    shape = (wy.out_size, wx.out_size)
    pure = _single_class_pixels(label, wy, wx)

    exact = wy.denominator is not None and wx.denominator is not None
    denominator = wy.denominator * wx.denominator if exact else None

    pure_class = codes[wy.index[:, 0]][:, wx.index[:, 0]]
    pure_class[pure_class == void] = IGNORE_INDEX

    mixed_index = np.flatnonzero(~pure)
    mass = _mixed_class_mass(codes, void, mixed_index, shape, wy, wx, exact)
    return from_sparse_rows(pure_class, denominator if exact else 1.0, mixed_index, mass, void, denominator)


def _single_class_pixels(label: PreparedLabel, wy: AxisWeights, wx: AxisWeights) -> np.ndarray:
    """``(H', W') bool``: True where every source pixel in the kernel window has the same code.

    Conservative: a window is the index range ``[min tap, max tap]`` of each axis. A window is
    single-class iff its smallest and largest code agree; both are reduced rows first, then columns
    (on the transposed, already short map, so every gather takes whole contiguous rows).
    """
    low, high = _window_extremes(label.codes, wy)  # (H', W)
    low = _window_extremes(np.ascontiguousarray(low.T), wx)[0]  # (W', H')
    high = _window_extremes(np.ascontiguousarray(high.T), wx)[1]
    return (low == high).T


def _window_extremes(rows: np.ndarray, taps: AxisWeights) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest value of ``rows`` (``(N, X)``) over each output's row window:
    two ``(taps.out_size, X)`` arrays of ``rows.dtype``."""
    first, last = taps.index.min(axis=1), taps.index.max(axis=1)
    low = rows[first]
    high = low.copy()
    for offset in range(1, int((last - first).max(initial=0)) + 1):
        row = rows[np.minimum(first + offset, last)]
        np.minimum(low, row, out=low)
        np.maximum(high, row, out=high)
    return low, high


def _mixed_class_mass(
    codes: np.ndarray,
    void: int,
    mixed_index: np.ndarray,
    shape: tuple[int, int],
    wy: AxisWeights,
    wx: AxisWeights,
    exact: bool,
) -> np.ndarray:
    """``(M, C)`` class weights of the multi-class pixels (integer numerators when ``exact``)."""
    u, v = np.divmod(mixed_index, shape[1])
    window = codes[wy.index[u][:, :, None], wx.index[v][:, None, :]]  # (M, Ty, Tx)
    if exact:
        weight = wy.int_weight()[u][:, :, None] * wx.int_weight()[v][:, None, :]
    else:
        weight = wy.weight[u][:, :, None] * wx.weight[v][:, None, :]
    bins = np.arange(len(u))[:, None, None] * (void + 1) + window
    mass = np.bincount(bins.ravel(), weights=weight.ravel().astype(np.float64), minlength=len(u) * (void + 1))
    mass = mass.reshape(len(u), void + 1)[:, :void]
    if exact:
        return np.rint(mass).astype(np.int64)
    if (wy.weight < 0).any() or (wx.weight < 0).any():
        mass = _clamp_to_distribution(mass)
    return mass


def _clamp_to_distribution(raw: np.ndarray) -> np.ndarray:
    """Negative-weight kernels: clamp class weights at 0, rescale to ``clip(sum, 0, 1)``."""
    valid = np.clip(raw.sum(axis=1, keepdims=True), 0.0, 1.0)
    clamped = np.maximum(raw, 0.0)
    total = clamped.sum(axis=1, keepdims=True)
    return np.divide(clamped * valid, total, out=np.zeros_like(clamped), where=total > 0)
