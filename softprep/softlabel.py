"""The soft-label value: a sparse per-pixel class distribution, and its dense / hard views.

A soft label at ``(H', W')`` (or any number of axes: ``(X', Y', Z')`` for a volume; "pixel" below
means voxel there) is stored as ``K`` *planes* of ``(class, weight)`` pairs per pixel,
sorted by weight, largest first (ties: lower class first). Plane 0 is the dominant class, so the
argmax map is plane 0 itself. Unused slots hold class ``IGNORE_INDEX`` (255) and weight 0. ``K`` is the
largest number of classes any pixel of the image carries: nothing is ever dropped.

Weights are *not* renormalised over valid pixels: the weights of a pixel sum to its *valid
fraction*, the share of its kernel mass that fell on labelled (non-ignore) source pixels.
A pixel wholly over ignore has no classes (valid fraction 0).

Weights are exact integers over ``denominator`` when the kernel's weights allow it (the
smallest of ``uint8``/``uint16``/``uint32`` that holds ``denominator``), ``float32`` otherwise
(``denominator is None``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The train id of unlabelled pixels, everywhere: adapters map "void" to it, hard (NN) label maps
#: hold it, losses and evaluation skip it, and an unused soft-label slot carries it as its class.
#: The one definition of the ignore value.
IGNORE_INDEX = 255
#: Code of a multi-class pixel in a packed soft label's class map (its slots are in the lists).
MIXED = 254
#: Most classes a soft label can carry (class ids stay below ``MIXED``).
MAX_CLASSES = MIXED


def weight_dtype(denominator: int | None) -> np.dtype:
    """Storage dtype of weights for a given common denominator (``None``: float)."""
    if denominator is None:
        return np.dtype(np.float32)
    for dtype in (np.uint8, np.uint16, np.uint32):
        if denominator <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"denominator {denominator} does not fit uint32")


@dataclass
class SoftLabel:
    """Sparse soft label of one image at one scale.

    Attributes:
        classes: ``(K, H', W') uint8`` class of each slot, ``IGNORE_INDEX`` when unused.
        weights: ``(K, H', W')`` weight numerators (unsigned ints) or weights (``float32``).
        num_classes: ``C``, the number of (non-ignore) classes.
        denominator: common denominator of integer weights, ``None`` for float weights.
    """

    classes: np.ndarray
    weights: np.ndarray
    num_classes: int
    denominator: int | None

    @property
    def shape(self) -> tuple[int, int]:
        """``(H', W')``."""
        return self.classes.shape[1:]

    @property
    def planes(self) -> int:
        """``K``, the most classes any pixel carries."""
        return self.classes.shape[0]

    @property
    def exact(self) -> bool:
        return self.denominator is not None

    def scaled_weights(self) -> np.ndarray:
        """``(K, H', W') float32`` weights in [0, 1]."""
        if self.denominator is None:
            return self.weights.astype(np.float32, copy=False)
        return self.weights.astype(np.float32) / np.float32(self.denominator)

    def dense(self) -> np.ndarray:
        """``(C, H', W') float32`` per-class weights; sums over C to the valid fraction."""
        size = int(np.prod(self.shape))
        out = np.zeros((self.num_classes + 1, size), dtype=np.float32)
        pixel = np.arange(size)
        values = self.scaled_weights()
        for k in range(self.planes):
            cls = self.classes[k].ravel()
            # IGNORE_INDEX slots land on the spare row C (weight 0) and are cut off below.
            out[np.minimum(cls, self.num_classes), pixel] += values[k].ravel()
        return out[: self.num_classes].reshape(self.num_classes, *self.shape)

    def argmax(self) -> np.ndarray:
        """``(H', W') uint8`` the dominant class of each pixel, ``IGNORE_INDEX`` where fully ignored."""
        return self.classes[0].copy()

    def valid_fraction(self) -> np.ndarray:
        """``(H', W') float32`` share of each pixel's kernel mass on labelled source pixels."""
        return self.scaled_weights().sum(axis=0)

    def class_mass(self) -> np.ndarray:
        """``(C,)`` total weight per class: ``int64`` numerators over ``denominator`` when exact,
        else ``float64`` weights."""
        dtype = np.int64 if self.exact else np.float64
        mass = np.zeros(self.num_classes + 1, dtype=dtype)
        for k in range(self.planes):
            mass += np.bincount(
                np.minimum(self.classes[k].ravel(), self.num_classes),
                weights=self.weights[k].ravel().astype(np.float64),
                minlength=self.num_classes + 1,
            ).astype(dtype)
        return mass[: self.num_classes]


def from_sparse_rows(
    pure_class: np.ndarray,
    pure_weight: float | int,
    mixed_index: np.ndarray,
    mixed_mass: np.ndarray,
    num_classes: int,
    denominator: int | None,
) -> SoftLabel:
    """Assemble a :class:`SoftLabel` from single-class and multi-class pixels.

    Args:
        pure_class: ``(H', W') uint8`` the class of each single-class pixel (``IGNORE_INDEX``: ignored);
            the values at multi-class pixels are overwritten.
        pure_weight: the weight a single-class pixel carries (``denominator``, or 1.0).
        mixed_index: ``(M,) int`` flat indices of the multi-class pixels.
        mixed_mass: ``(M, C)`` per-class weight (numerators when exact); zeros are dropped.
    """
    shape, size = pure_class.shape, pure_class.size
    order = np.argsort(-mixed_mass, axis=1, kind="stable")
    sorted_mass = np.take_along_axis(mixed_mass, order, axis=1)
    nonzero = (sorted_mass > 0).sum(axis=1)
    planes = max(1, int(nonzero.max(initial=0)))

    classes = np.full((planes, size), IGNORE_INDEX, dtype=np.uint8)
    weights = np.zeros((planes, size), dtype=weight_dtype(denominator))
    classes[0] = pure_class.ravel()
    weights[0] = np.where(classes[0] == IGNORE_INDEX, 0, pure_weight)
    classes[0, mixed_index] = IGNORE_INDEX
    weights[0, mixed_index] = 0
    for k in range(planes):
        used = nonzero > k
        classes[k, mixed_index[used]] = order[used, k]
        weights[k, mixed_index[used]] = sorted_mass[used, k]
    return SoftLabel(classes.reshape(planes, *shape), weights.reshape(planes, *shape), num_classes, denominator)


@dataclass
class PackedSoftLabel:
    """A :class:`SoftLabel` as stored: a class map for the single-class pixels, lists for the rest.

    Most pixels carry one class with full weight (or nothing); only the few multi-class pixels
    need slots. Nothing derivable is stored: a single-class pixel's weight is the full weight,
    and (integer weights) a mixed pixel's dominant weight is the full weight less its ignored
    share and its other slots.

    Attributes:
        classes: ``(H', W') uint8``: the class of a single-class pixel, ``IGNORE_INDEX`` where nothing is
            labelled, ``MIXED`` at multi-class pixels.
        mixed_classes: ``(K, M) uint8`` the slot classes of the ``M`` mixed pixels in row-major
            order, largest weight first, ``IGNORE_INDEX`` when unused.
        mixed_weights: ``(K, M)``: integer weights: row 0 the *ignored share* (``denominator``
            less the pixel's weights), row ``k >= 1`` slot ``k``'s weight; ``float32`` weights:
            every slot's weight (a derived float would not round-trip).
    """

    classes: np.ndarray
    mixed_classes: np.ndarray
    mixed_weights: np.ndarray
    num_classes: int
    denominator: int | None

    @property
    def mixed(self) -> int:
        """``M``, the number of multi-class pixels."""
        return self.mixed_classes.shape[1]

    @property
    def planes(self) -> int:
        """``K``, the most classes any pixel carries (at least 1)."""
        return max(1, self.mixed_classes.shape[0])

    @property
    def exact(self) -> bool:
        return self.denominator is not None

    @property
    def full_weight(self) -> int | float:
        """The weight of a single-class pixel: ``denominator``, or 1.0 for float weights."""
        return self.denominator if self.exact else 1.0

    def slot_weights(self) -> np.ndarray:
        """``(K, M)`` every slot's weight of the mixed pixels (slot 0 derived): ``int64`` numerators
        when exact, else ``float32``."""
        if not self.exact:
            return self.mixed_weights.astype(np.float32, copy=False)
        weights = self.mixed_weights.astype(np.int64)
        if self.mixed:
            weights[0] = self.denominator - weights.sum(axis=0)
        return weights

    def class_mass(self) -> np.ndarray:
        """``(C,)`` total weight per class, as :meth:`SoftLabel.class_mass` (without unpacking)."""
        c = self.num_classes
        single = np.bincount(self.classes.ravel(), minlength=256)[:c]
        listed = np.bincount(np.minimum(self.mixed_classes, c).ravel(), weights=self.slot_weights().ravel().astype(np.float64),
                             minlength=c + 1)[:c]
        if self.exact:
            return single.astype(np.int64) * self.denominator + np.rint(listed).astype(np.int64)
        return single.astype(np.float64) + listed


def pack(soft: SoftLabel) -> PackedSoftLabel:
    """Lossless :class:`PackedSoftLabel` of ``soft`` (``unpack(pack(s))`` equals ``s``)."""
    classes, weights = soft.classes, soft.weights
    full = soft.denominator if soft.exact else 1.0
    mixed = (classes[0] != IGNORE_INDEX) & (weights[0] != full)
    if soft.planes > 1:
        mixed |= classes[1] != IGNORE_INDEX
    packed_classes = np.where(mixed, np.uint8(MIXED), classes[0])
    mixed_classes = classes[:, mixed]
    mixed_weights = weights[:, mixed].copy()
    if soft.exact:
        total = mixed_weights.sum(axis=0, dtype=np.int64)
        mixed_weights[0] = soft.denominator - total
    return PackedSoftLabel(packed_classes, mixed_classes, mixed_weights, soft.num_classes, soft.denominator)


def unpack(packed: PackedSoftLabel) -> SoftLabel:
    """The :class:`SoftLabel` of a packed one: ``(K, H', W')`` slots, ``K`` = :attr:`PackedSoftLabel.planes`."""
    shape, size = packed.classes.shape, packed.classes.size
    dtype = weight_dtype(packed.denominator)
    flat = packed.classes.ravel()
    where = np.flatnonzero(flat == MIXED)
    if len(where) != packed.mixed:
        raise ValueError(f"the class map has {len(where)} mixed pixels, the lists {packed.mixed}")
    classes = np.full((packed.planes, size), IGNORE_INDEX, dtype=np.uint8)
    weights = np.zeros((packed.planes, size), dtype=dtype)
    classes[0] = flat
    weights[0] = np.where(flat == IGNORE_INDEX, 0, packed.full_weight).astype(dtype)
    if packed.mixed:
        k = packed.mixed_classes.shape[0]
        classes[:k, where] = packed.mixed_classes
        weights[:k, where] = packed.slot_weights().astype(dtype)
    return SoftLabel(classes.reshape(packed.planes, *shape), weights.reshape(packed.planes, *shape), packed.num_classes,
                     packed.denominator)
