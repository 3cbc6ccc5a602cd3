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
        kind: ``"scale"`` (factor), ``"short"`` (short side in px) or ``"fit"`` (box ``(h, w)`` in px).
        value: the factor (float), the short side (int) or the box (``(h, w)`` ints).
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
        return f"fit{self.value[0]}x{self.value[1]}"

    def __str__(self) -> str:
        return self.name

    @property
    def factor(self) -> float | None:
        """The scale factor of a ``scale`` target, else None."""
        return float(self.value) if self.kind == "scale" else None

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` for a full-resolution ``(height, width)``.

        ``scale``: ``floor(side * factor)`` per axis (torch's ``scale_factor`` rule);
        ``short``: the short side becomes ``value``, the other rounded to keep the ratio;
        ``fit``: the largest size inside the box with the same ratio (rounded), up or down.
        """
        if self.kind == "scale":
            return max(1, math.floor(height * self.value)), max(1, math.floor(width * self.value))
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
    order = {"scale": 0, "short": 1, "fit": 2}
    return sorted(targets.values(), key=lambda t: (order[t.kind], t.value))


@dataclass(frozen=True)
class ResamplingPlan:
    """How one image of full-resolution ``source`` becomes ``size``.

    Attributes:
        source: ``(H, W)`` full-resolution size.
        size: ``(h, w)`` output size.
        rows, cols: tap tables of the kernel, ``H -> h`` and ``W -> w`` (colour and soft label).
        nearest_rows, nearest_cols: ``nearest-exact`` tables, the hard label aligned with the image
            (pixel centres: the store's ``nn`` map).
        floor_rows, floor_cols: torch ``nearest`` tables (what most pipelines do: ``nn_floor``).
    """

    source: tuple[int, int]
    size: tuple[int, int]
    rows: AxisWeights
    cols: AxisWeights
    nearest_rows: AxisWeights
    nearest_cols: AxisWeights
    floor_rows: AxisWeights
    floor_cols: AxisWeights

    @property
    def floor_differs(self) -> bool:
        """Whether torch ``nearest`` samples other pixels than ``nearest-exact`` (always, but at 1:1)."""
        return not (np.array_equal(self.floor_rows.index, self.nearest_rows.index)
                    and np.array_equal(self.floor_cols.index, self.nearest_cols.index))

    @property
    def denominator(self) -> int | None:
        """``D`` such that every 2-D weight times ``D`` is an integer, or None (float weights)."""
        if self.rows.denominator is None or self.cols.denominator is None:
            return None
        return self.rows.denominator * self.cols.denominator

    @property
    def window(self) -> int:
        """Most source pixels one output pixel reads: an upper bound on its classes."""
        return self.rows.taps * self.cols.taps

    def max_classes(self, num_classes: int) -> int:
        """Soft-label slots this image can need: ``min(C, window)``."""
        return max(1, min(num_classes, self.window))


@lru_cache(maxsize=1024)
def plan_for_size(kernel: str, antialias: bool, source: tuple[int, int], size: tuple[int, int]) -> ResamplingPlan:
    """The plan resampling ``source (H, W)`` to an explicit ``size (h, w)`` (cached per process)."""
    (height, width), (out_h, out_w) = source, size
    if max(out_h, out_w) > MAX_OUTPUT_SIDE:
        raise SoftprepError(f"output size {out_h}x{out_w} (HxW) from {height}x{width} exceeds {MAX_OUTPUT_SIDE} px a side; "
                            "use a smaller scale")
    return ResamplingPlan(
        source=(height, width), size=(out_h, out_w),
        rows=axis_weights(kernel, height, out_h, antialias), cols=axis_weights(kernel, width, out_w, antialias),
        nearest_rows=axis_weights("nearest-exact", height, out_h), nearest_cols=axis_weights("nearest-exact", width, out_w),
        floor_rows=axis_weights("nearest", height, out_h), floor_cols=axis_weights("nearest", width, out_w),
    )


def resampling_plan(kernel: str, antialias: bool, source: tuple[int, int], target: Target | str | float) -> ResamplingPlan:
    """The plan of one full-resolution ``source (H, W)`` at ``target``."""
    target = parse_target(target)
    return plan_for_size(kernel, antialias, tuple(source), target.output_size(*source))
