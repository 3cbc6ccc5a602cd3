"""Resolution targets and the per-(image, target) resampling plan: the one place sizes are derived.

A *target* says what resolution a user wants: a factor (``0.125``), a short side in pixels
(``short512``) or a box to fit inside keeping the aspect ratio (``fit512x1024``). Images smaller
than a pixel target are upsampled, as the paper's ADE20K set-up does.

A :class:`ResamplingPlan` turns one full-resolution size and one target into everything the
pipeline needs: the output size, the row/column tap tables of the kernel, the nearest-neighbour
tables, the exact weight denominator and the most classes a pixel can receive. The store layout,
``build``, ``priors --compare-kernels``, ``verify``, ``predict`` and training's geometry all ask
:func:`resampling_plan` (or :func:`plan_for_size` for an explicit output size) and never derive
these facts themselves.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from softprep.errors import SoftprepError
from softprep.kernels import AxisWeights, axis_weights

#: Largest output side a target may produce (a guard against ``--scales 100`` on a big image).
MAX_OUTPUT_SIDE = 32768


@dataclass(frozen=True)
class Target:
    """A resolution request.

    Attributes:
        kind: ``"scale"`` (factor), ``"axes"`` (a factor per axis, e.g. a volume's ``0.5x0.5x1``),
            ``"short"`` (short side in px), ``"fit"`` (box ``(h, w)`` in px) or ``"spacing"`` (a
            volume's voxel size in mm per axis).
        value: the factor (float), the factors (floats, one per axis), the short side (int), the box
            (``(h, w)`` ints) or the spacing (floats, one per axis).
    """

    kind: str
    value: float | int | tuple[int, int]

    @property
    def name(self) -> str:
        """Canonical text, also the store group name: ``"0.125"``, ``"short512"``, ``"fit512x1024"``."""
        if self.kind == "scale":
            return repr(float(self.value))
        if self.kind == "short":
            return f"short{self.value}"
        if self.kind == "spacing":
            return "x".join(f"{v:g}" for v in self.value) + "mm"
        if self.kind == "axes":
            return "x".join(repr(float(v)) for v in self.value)
        return f"fit{self.value[0]}x{self.value[1]}"

    def __str__(self) -> str:
        return self.name

    @property
    def factor(self) -> float | None:
        """The scale factor of a ``scale`` target, else None."""
        return float(self.value) if self.kind == "scale" else None

    @property
    def factors(self) -> tuple[float, ...] | None:
        """The factor per axis of a ``scale`` (one, for every axis) or ``axes`` target, else None."""
        return (float(self.value),) if self.kind == "scale" else tuple(self.value) if self.kind == "axes" else None

    def output_size(self, *sides: int, spacing: tuple[float, ...] | None = None) -> tuple[int, ...]:
        """The output size for a full-resolution size (``height, width``, or a volume's three sides).

        ``scale``: ``floor(side * factor)`` per axis (torch's ``scale_factor`` rule);
        ``short``: the short side becomes ``value``, the other rounded to keep the ratio;
        ``fit``: the largest size inside the box with the same ratio (rounded), up or down;
        ``spacing``: a volume's voxel size in mm per axis: ``round(side * spacing / value)`` voxels,
        from the source's own ``spacing`` (mm per axis) (so the extent is kept; the exact output
        spacing is ``side * spacing / size``).
        """
        if self.kind == "scale":
            return tuple(max(1, math.floor(side * self.value)) for side in sides)
        if self.kind == "axes":
            if len(self.value) != len(sides):
                raise SoftprepError(f"target {self.name}: {len(self.value)} factors for a {len(sides)}-axis image")
            return tuple(max(1, math.floor(side * f)) for side, f in zip(sides, self.value))
        if self.kind == "spacing":
            if spacing is None:
                raise SoftprepError(f"target {self.name}: a physical spacing needs the source's voxel size (a volume)")
            wanted = self.value * len(sides) if len(self.value) == 1 else self.value  # "2mm": isotropic
            if len(wanted) != len(sides):
                raise SoftprepError(f"target {self.name}: {len(self.value)} spacings for a {len(sides)}-axis image")
            return tuple(max(1, round(side * have / want)) for side, have, want in zip(sides, spacing, wanted))
        if len(sides) != 2:
            raise SoftprepError(f"target {self.name}: pixel targets are for images; use --spacing or --scales for volumes")
        height, width = sides
        if self.kind == "short":
            ratio = self.value / min(height, width)
        else:
            ratio = min(self.value[0] / height, self.value[1] / width)
        return max(1, round(height * ratio)), max(1, round(width * ratio))


def parse_target(text: str | float | Target) -> Target:
    """``"0.125"`` / ``0.125`` / ``"1/8"`` -> scale; ``"short512"``; ``"fit512x1024"``.

    Raises:
        SoftprepError: anything else, nan/inf, or a non-positive value (one line).
    """
    if isinstance(text, Target):
        return text
    raw = str(text).strip().lower()
    axes = re.fullmatch(r"[0-9.e+-]+(?:x[0-9.e+-]+)+", raw)
    if axes:  # a factor per axis: 0.5x0.5x1
        factors = tuple(parse_target(v).value for v in raw.split("x"))
        # one name per target: a volume's 0.5x0.5x0.5 is 0.5 (as its 2x2x2mm is 2mm)
        return Target("scale", factors[0]) if len(factors) == 3 and len(set(factors)) == 1 else Target("axes", factors)
    spacing = re.fullmatch(r"([0-9.e+-]+(?:x[0-9.e+-]+)*)mm", raw)
    if spacing:
        try:
            values = tuple(float(v) for v in spacing.group(1).split("x"))
        except ValueError:
            raise SoftprepError(f"spacing {text!r}: expected mm per axis, e.g. 2x2x2mm") from None
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise SoftprepError(f"spacing {text!r}: every value must be a finite number of mm > 0, e.g. 2x2x2mm")
        if len(values) == 3 and len(set(values)) == 1:  # one name per target: 2x2x2mm is 2mm
            values = values[:1]
        return Target("spacing", values)
    short = re.fullmatch(r"short[:=]?(\d+)", raw)
    fit = re.fullmatch(r"fit[:=]?(\d+)x(\d+)", raw)
    if short:
        value = int(short.group(1))
        if value < 1:
            raise SoftprepError(f"target {text!r}: the short side must be >= 1 px")
        return Target("short", value)
    if fit:
        box = (int(fit.group(1)), int(fit.group(2)))
        if min(box) < 1:
            raise SoftprepError(f"target {text!r}: the box must be at least 1x1 px")
        return Target("fit", box)
    try:
        if "/" in raw:
            numerator, denominator = raw.split("/")
            factor = float(numerator) / float(denominator)
        else:
            factor = float(raw)
    except (ValueError, ZeroDivisionError):
        raise SoftprepError(f"target {text!r}: expected a scale factor (0.125 or 1/8), shortN (short512) "
                            "or fitHxW (fit512x1024)") from None
    if not math.isfinite(factor) or factor <= 0:
        raise SoftprepError(f"scale {text!r}: must be a finite number > 0, e.g. 0.125")
    if factor > MAX_OUTPUT_SIDE:  # even a 1-px image would outgrow the largest output side
        raise SoftprepError(f"scale {text!r}: too large (at most {MAX_OUTPUT_SIDE}); e.g. 0.125")
    return Target("scale", factor)


def target_name(target) -> str:
    """Canonical name of a target given in any form: ``0.125 -> "0.125"``, ``"1/8" -> "0.125"``,
    ``"short512" -> "short512"`` (also the store's group name)."""
    return parse_target(target).name


def parse_targets(values) -> list[Target]:
    """Targets from CLI words (``"0.125 0.25"``, ``"0.125,0.25"`` or several words), sorted and unique.

    Factors come first (ascending), then short sides, then boxes, so a store's group order is stable.
    """
    words = [w for value in values for w in str(value).replace(",", " ").split()]
    targets = {parse_target(w).name: parse_target(w) for w in words}
    order = {"scale": 0, "axes": 1, "short": 2, "fit": 3, "spacing": 4}
    return sorted(targets.values(), key=lambda t: (order[t.kind], t.value))


@dataclass(frozen=True)
class ResamplingPlan:
    """How one image of full-resolution ``source`` becomes ``size`` (a volume: three axes).

    Attributes:
        source: ``(H, W)`` full-resolution size (a volume: ``(X, Y, Z)``).
        size: ``(h, w)`` output size.
        axes: the kernel's tap table of each axis, ``H -> h``, ``W -> w`` (colour and soft label).
        nearest: ``nearest-exact`` tables per axis, the hard label aligned with the image (pixel
            centres: the store's ``nn`` map).
        floor: torch ``nearest`` tables per axis (what most pipelines do: ``nn_floor``).
        linear: ``bilinear`` (trilinear) tables per axis: nnU-Net's order-1 rule for volumes
            (:func:`softprep.resample.threshold_labels`).
    """

    source: tuple[int, ...]
    size: tuple[int, ...]
    axes: tuple[AxisWeights, ...]
    nearest: tuple[AxisWeights, ...]
    floor: tuple[AxisWeights, ...]
    linear: tuple[AxisWeights, ...] = ()

    # an image's two axes by name
    rows = property(lambda self: self.axes[0])
    cols = property(lambda self: self.axes[1])
    nearest_rows = property(lambda self: self.nearest[0])
    nearest_cols = property(lambda self: self.nearest[1])
    floor_rows = property(lambda self: self.floor[0])
    floor_cols = property(lambda self: self.floor[1])

    @property
    def floor_differs(self) -> bool:
        """Whether torch ``nearest`` samples other pixels than ``nearest-exact`` (always, but at 1:1)."""
        return not all(np.array_equal(a.index, b.index) for a, b in zip(self.floor, self.nearest))

    @property
    def denominator(self) -> int | None:
        """``D`` such that every weight (a product of one per axis) times ``D`` is an integer, or None (float weights)."""
        if any(t.denominator is None for t in self.axes):
            return None
        return math.prod(t.denominator for t in self.axes)

    @property
    def window(self) -> int:
        """Most source pixels one output pixel reads: an upper bound on its classes."""
        return math.prod(t.taps for t in self.axes)

    def max_classes(self, num_classes: int) -> int:
        """Soft-label slots this image can need: ``min(C, window)``."""
        return max(1, min(num_classes, self.window))


@lru_cache(maxsize=1024)
def plan_for_size(kernel: str, antialias: bool, source: tuple[int, ...], size: tuple[int, ...]) -> ResamplingPlan:
    """The plan resampling ``source (H, W)`` (or ``(X, Y, Z)``) to an explicit ``size`` (cached per process)."""
    if max(size) > MAX_OUTPUT_SIDE:
        raise SoftprepError(f"output size {'x'.join(map(str, size))} from {'x'.join(map(str, source))} exceeds "
                            f"{MAX_OUTPUT_SIDE} px a side; use a smaller scale")
    return ResamplingPlan(
        source=tuple(source), size=tuple(size),
        axes=tuple(axis_weights(kernel, n, m, antialias) for n, m in zip(source, size)),
        nearest=tuple(axis_weights("nearest-exact", n, m) for n, m in zip(source, size)),
        floor=tuple(axis_weights("nearest", n, m) for n, m in zip(source, size)),
        linear=tuple(axis_weights("bilinear", n, m) for n, m in zip(source, size)),
    )


def output_affine(affine, source: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """``(4, 4) float64`` voxel-to-world affine of a volume resampled from ``source`` voxels to ``size``
    with its extent kept: output voxel ``j``'s centre lies at source voxel coordinate
    ``(j + 0.5) n / m - 0.5`` on each axis (where every kernel here, ``align_corners=False``, puts it)."""
    scale = np.asarray(source, dtype=np.float64) / np.asarray(size, dtype=np.float64)
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = 0.5 * scale - 0.5
    return np.asarray(affine, dtype=np.float64) @ step


def resampling_plan(kernel: str, antialias: bool, source: tuple[int, ...], target: Target | str | float,
                    spacing: tuple[float, ...] | None = None) -> ResamplingPlan:
    """The plan of one full-resolution ``source`` (``(H, W)``, or a volume's ``(X, Y, Z)`` with its
    voxel ``spacing`` in mm for a physical target) at ``target``."""
    target = parse_target(target)
    return plan_for_size(kernel, antialias, tuple(source), target.output_size(*source, spacing=spacing))
