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
    both = resample_axes(image, (wy, wx))
    np.rint(both, out=both)
    np.clip(both, 0, 255, out=both)
    return both.astype(np.uint8)


def resample_axes(array: np.ndarray, taps) -> np.ndarray:
    """``float32`` resampling of the leading ``len(taps)`` axes of ``array`` (an image's two, a volume's
    three; trailing axes such as channels are carried), one axis after another by its tap table."""
    for axis, table in enumerate(taps):
        array = _apply_taps(array, table, axis=axis)
    return array


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


def nearest_labels(label: np.ndarray, *taps: AxisWeights) -> np.ndarray:
    """``(H', W')`` label map (any number of axes, one table each) sampled at the first tap of each
    axis: ``nearest`` tables give torch's ``mode="nearest"``, ``nearest-exact`` ones its centred rule."""
    return label[np.ix_(*(t.index[:, 0] for t in taps))]


def threshold_labels(linear: SoftLabel) -> np.ndarray:
    """nnU-Net's hard labels (``resize_segmentation``: each class's one-hot resized with order-1
    interpolation, the class set where it reaches 0.5, a later class over an earlier one) from the
    soft label of the linear kernel (``bilinear`` tables on every axis): ``(shape) uint8``,
    0 (background) where no class reaches half of the voxel.

    Exact weights are compared in integers (``2 w >= D``): a class at exactly one half counts.
    """
    reach = linear.weights.astype(np.int64) * 2 >= linear.denominator if linear.exact else linear.weights >= 0.5
    reach &= linear.classes != IGNORE_INDEX
    labels = np.zeros(linear.shape, np.uint8)
    for classes, reached in zip(linear.classes, reach):  # at most two slots reach one half
        np.maximum(labels, classes, out=labels, where=reached)
    return labels


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
    if label.ndim not in (2, 3):
        raise ValueError(f"label map must be 2-D (H, W) or 3-D (X, Y, Z), got shape {label.shape}")
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
    return soft_label_axes(label, (wy, wx), num_classes, ignore_index)


def soft_label_axes(label: np.ndarray | PreparedLabel, taps, num_classes: int | None = None,
                    ignore_index: int = IGNORE_INDEX) -> SoftLabel:
    """:func:`soft_label` for a label map of any number of axes (a volume: ``(X, Y, Z) uint8``), one
    tap table per axis: the weight of a source voxel in an output voxel is the product of its axes'
    weights, so area soft labels are the exact partial volume of each class.

    Returns:
        :class:`SoftLabel` of shape ``tuple(t.out_size for t in taps)``.
    """
    if not isinstance(label, PreparedLabel):
        if num_classes is None:
            raise TypeError("num_classes is required with a raw label map")
        label = prepare_label(label, num_classes, ignore_index)
    codes, void = label.codes, label.num_classes
    if codes.ndim != len(taps):
        raise ValueError(f"a {codes.ndim}-axis label map needs {codes.ndim} tap tables, got {len(taps)}")
    shape = tuple(t.out_size for t in taps)
    pure = _single_class_pixels(codes, taps)

    exact = all(t.denominator is not None for t in taps)
    denominator = int(np.prod([t.denominator for t in taps])) if exact else None

    pure_class = codes[np.ix_(*(t.index[:, 0] for t in taps))]
    pure_class[pure_class == void] = IGNORE_INDEX

    mixed_index = np.flatnonzero(~pure)
    mass = _mixed_class_mass(codes, void, mixed_index, shape, taps, exact)
    return from_sparse_rows(pure_class, denominator if exact else 1.0, mixed_index, mass, void, denominator)


def _single_class_pixels(codes: np.ndarray, taps) -> np.ndarray:
    """``bool`` of the output shape: True where every source pixel in the kernel window has the same code.

    Conservative: a window is the index range ``[min tap, max tap]`` of each axis. A window is
    single-class iff its smallest and largest code agree; both are reduced one axis after another,
    each brought to the front first (contiguous), so every gather takes whole contiguous rows.
    """
    low = high = codes
    for axis, table in enumerate(taps):
        low = np.moveaxis(_window_reduce(np.ascontiguousarray(np.moveaxis(low, axis, 0)), table, np.minimum), 0, axis)
        high = np.moveaxis(_window_reduce(np.ascontiguousarray(np.moveaxis(high, axis, 0)), table, np.maximum), 0, axis)
    return low == high


def _window_reduce(rows: np.ndarray, taps: AxisWeights, reduce) -> np.ndarray:
    """``reduce`` (``np.minimum`` or ``np.maximum``) of ``rows`` (``(N, ...)``) over each output's
    window along axis 0: a ``(taps.out_size, ...)`` array of ``rows.dtype``."""
    first, last = taps.index.min(axis=1), taps.index.max(axis=1)
    out = rows[first]
    for offset in range(1, int((last - first).max(initial=0)) + 1):
        reduce(out, rows[np.minimum(first + offset, last)], out=out)
    return out


def _mixed_class_mass(codes: np.ndarray, void: int, mixed_index: np.ndarray, shape: tuple[int, ...], taps,
                      exact: bool) -> np.ndarray:
    """``(M, C)`` class weights of the multi-class pixels (integer numerators when ``exact``)."""
    coords = np.unravel_index(mixed_index, shape)
    n = len(taps)
    index, weight = [], None
    for axis, (table, coord) in enumerate(zip(taps, coords)):
        view = (slice(None),) + tuple(slice(None) if k == axis else None for k in range(n))  # (M, 1.., T, ..1)
        index.append(table.index[coord][view])
        axis_weight = (table.int_weight() if exact else table.weight)[coord][view]
        weight = axis_weight if weight is None else weight * axis_weight
    window = codes[tuple(index)]  # (M, T0, T1, ...)
    weight = np.broadcast_to(weight, window.shape)
    bins = np.arange(len(mixed_index)).reshape((-1,) + (1,) * n) * (void + 1) + window
    mass = np.bincount(bins.ravel(), weights=weight.ravel().astype(np.float64), minlength=len(mixed_index) * (void + 1))
    mass = mass.reshape(len(mixed_index), void + 1)[:, :void]
    if exact:
        return np.rint(mass).astype(np.int64)
    if any((table.weight < 0).any() for table in taps):
        mass = _clamp_to_distribution(mass)
    return mass


def _clamp_to_distribution(raw: np.ndarray) -> np.ndarray:
    """Negative-weight kernels: clamp class weights at 0, rescale to ``clip(sum, 0, 1)``."""
    valid = np.clip(raw.sum(axis=1, keepdims=True), 0.0, 1.0)
    clamped = np.maximum(raw, 0.0)
    total = clamped.sum(axis=1, keepdims=True)
    return np.divide(clamped * valid, total, out=np.zeros_like(clamped), where=total > 0)
