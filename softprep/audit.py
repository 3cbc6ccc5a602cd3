"""``softprep audit``: how far a pipeline's labels drift from its images, measured on the user's data.

Each rule of :mod:`softprep.rules` (or a user's own transform) downsamples every image's labels;
each result is compared with the exact **area** soft label of the same output size, computed by
the kernels that build stores. Per rule and scale, over the images:

* **offset** ``(dy, dx)`` in full-resolution pixels: where the rule samples labels relative to the
  image's pixels (negative: up / left). Found by least squares: the rule's one-hot labels against
  area soft labels of the image shifted by every whole pixel ``d`` along one axis; the squared
  error is a parabola around the true offset, whose vertex (through the three smallest errors)
  gives it to a fraction of a pixel. torch ``nearest`` samples the top-left pixel of each
  ``s x s`` footprint: ``-(s - 1) / 2``; ``nearest-exact`` its centre pixel: 0 at odd ``s``, and
  ``+0.5`` at even ``s`` (no single pixel lies at the centre of an even footprint).
* **prior drift** ``D = p_original - p_rule`` per class (the paper's eq. 5, x10^4 as Table V),
  each image's pixels weighted by ``H W / (h w)``; area soft labels have ``D = 0`` exactly.
* **differs**: the share of valid pixels whose label differs from the area soft label's argmax.
* **thin lost**: of the full-resolution pixels of thin structures (those no ``s x s`` square
  within their class covers: pieces narrower than the factor), the share whose class the rule
  gives no output pixel they fall in.
* **invalid**: the share of output pixels whose value is neither a class id nor ignore (e.g.
  averaged ids); **invented**: valid class ids absent from the pixel's footprint.

Memory is per image (a worker holds one image and its tallies); the result is the same for any
``jobs``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from softprep.datasets import Dataset
from softprep.errors import SoftprepError, printable
from softprep.kernels import AxisWeights
from softprep.parallel import run_tasks
from softprep.plan import Target, parse_targets, plan_for_size
from softprep.priors import target_label
from softprep.resample import prepare_label, soft_label
from softprep.rules import RULES, Rule, user_rule
from softprep.softlabel import IGNORE_INDEX

FORMATS = ("table", "json", "csv")
#: Offsets up to this (full-resolution pixels) read as aligned: at an even factor no single source
#: pixel lies at a footprint's centre, so even ``nearest-exact`` samples half a pixel from it.
ALIGNED_BELOW = 0.6
#: The measured reference row: the argmax of the area soft label itself.
REFERENCE = "area-argmax"


@dataclass
class Tally:
    """One rule at one scale, summed over images (what a worker sends back)."""

    num_classes: int
    shifts: int  # the curves cover offsets -shifts .. shifts full-resolution pixels
    counts: np.ndarray = None  # (C,) float64 rule pixels per class, in full-resolution pixels
    pixels: int = 0  # output pixels
    valid: int = 0  # output pixels with a class id
    invalid: int = 0
    invented: int = 0
    compared: int = 0  # valid here and in the area argmax
    differ: int = 0
    thin_total: float = 0.0  # full-resolution thin-structure pixels
    thin_kept: float = 0.0
    error_y: np.ndarray = None  # (2 shifts + 1,) squared error for each vertical offset
    error_x: np.ndarray = None
    images: int = 0
    sizes: set = field(default_factory=set)  # (full (H, W), output (h, w)) pairs seen

    def __post_init__(self):
        if self.counts is None:
            self.counts = np.zeros(self.num_classes)
            self.error_y = np.zeros(2 * self.shifts + 1)
            self.error_x = np.zeros(2 * self.shifts + 1)

    def merge(self, other: "Tally") -> None:
        for name in ("counts", "error_y", "error_x"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("pixels", "valid", "invalid", "invented", "compared", "differ", "thin_total", "thin_kept", "images"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.sizes |= other.sizes


def offset(errors: np.ndarray, shifts: int) -> float:
    """The sub-pixel offset at the vertex of the parabola through the three smallest errors
    (``errors[k]`` belongs to offset ``k - shifts``); NaN without a usable minimum."""
    if not np.isfinite(errors).all() or not errors.any():
        return math.nan
    k = int(np.clip(np.argmin(errors), 1, len(errors) - 2))
    left, mid, right = errors[k - 1:k + 2]
    curvature = left - 2 * mid + right
    vertex = 0.5 * (left - right) / curvature if curvature > 0 else 0.0
    return float(k - shifts + np.clip(vertex, -1, 1))


# ------------------------------------------------------------------------------------------ one image


def _axis_onehot(codes: np.ndarray, taps: AxisWeights, axis: int, void: int) -> np.ndarray:
    """The one-hot of ``codes (H, W)`` (class ids, ``void`` for ignore) resampled along ``axis`` only:
    ``(void + 1, out, W)`` for axis 0, ``(void + 1, H, out)`` for axis 1, float64."""
    moved = codes if axis == 1 else codes.T
    rows, _ = moved.shape
    out = np.zeros((void + 1) * rows * taps.out_size)
    position = np.arange(rows)[:, None] * taps.out_size + np.arange(taps.out_size)[None, :]
    for t in range(taps.taps):
        bins = moved[:, taps.index[:, t]].astype(np.int64) * (rows * taps.out_size) + position
        out += np.bincount(bins.ravel(), weights=np.broadcast_to(taps.weight[:, t], bins.shape).ravel(), minlength=out.size)
    planes = out.reshape(void + 1, rows, taps.out_size)
    return planes if axis == 1 else planes.transpose(0, 2, 1)


def _shifted_box(planes: np.ndarray, axis: int, full: int, out: int, shifts: np.ndarray) -> np.ndarray:
    """The exact box filter (area) of ``planes`` along ``axis`` (1 or 2), ``full -> out``, with every
    footprint moved by each of ``shifts`` source pixels (the edge pixel repeated beyond the image):
    ``(len(shifts), *planes.shape)`` with that axis ``out`` long.

    A box average is a difference of the prefix sum ``P`` at the footprint's ends, and ``P`` is exact
    between whole pixels by linear interpolation (the one-hot is constant over a pixel)."""
    values = np.moveaxis(planes, axis, -1)  # (..., full)
    prefix = np.concatenate([np.zeros((*values.shape[:-1], 1)), np.cumsum(values, axis=-1)], axis=-1)
    edges = np.arange(out + 1) * (full / out)  # footprint ends, source pixels
    x = edges[None, :] + shifts[:, None]  # (S, out + 1)
    g = np.clip(np.floor(x), 0, full - 1).astype(np.int64)
    at = np.take(prefix, g, axis=-1) + (x - g) * np.take(values, g, axis=-1)  # (..., S, out + 1)
    boxes = np.diff(at, axis=-1) * (out / full)  # (..., S, out)
    return np.moveaxis(np.moveaxis(boxes, -2, 0), -1, axis + 1)


def thin_labels(label: np.ndarray, window: tuple[int, int], ignore: int = IGNORE_INDEX) -> np.ndarray:
    """``(H, W) uint8``: ``label`` where a pixel lies in no ``window`` rectangle of one class (a piece
    narrower than the window: a pole, a sign at that scale), else ``ignore``."""
    from scipy import ndimage

    low = ndimage.minimum_filter(label, size=window, mode="nearest")
    high = ndimage.maximum_filter(label, size=window, mode="nearest")
    uniform = low == high  # the window anchored here holds one class
    # A pixel is covered by a uniform window when one of the windows holding it is: the dilation
    # by the reflected window (scipy centres windows at size // 2; the reflection moves an even one by 1).
    origin = tuple(-1 if w % 2 == 0 else 0 for w in window)
    covered = ndimage.maximum_filter(uniform, size=window, mode="constant", cval=False, origin=origin)
    return np.where(covered, ignore, label).astype(np.uint8)


def measure(image: np.ndarray, label: np.ndarray, num_classes: int, ignore: int, targets: Sequence[Target],
            rules: Sequence[Rule], where: str = "") -> tuple[dict, np.ndarray, list[str]]:
    """Every rule at every target on one image.

    Args:
        image: ``(H, W, 3) uint8``; label: ``(H, W) uint8`` train ids.
        rules: built-in rules get the target's size; a user's transform picks its own.

    Returns:
        ``{(rule name, target name): Tally}``, the full-resolution ``counts (C,) int64``, and
        ``(rule, line)`` for each rule that failed on this image (the line names the rule and ``where``).
    """
    prepared = prepare_label(label, num_classes, ignore)
    tallies, failures = {}, []
    for target in targets:
        size = target.output_size(*label.shape)
        reference = _Reference(prepared, size)
        for rule in (r for r in rules if r.requires != () or r.name in RULES):
            try:
                mask = _checked(rule.apply(image.copy(), label.copy(), size), label.shape, rule.name, where, size=size)[1]
            except SoftprepError as error:
                failures.append((rule.name, str(error)))
                continue
            except Exception as error:  # noqa: BLE001 - a library's own failure: one line, the other rules go on
                failures.append((rule.name, f"rule {rule.name} on {printable(where)}: {type(error).__name__}: "
                                            f"{_first_line(error)}; skipped for this image"))
                continue
            tallies[rule.name, target.name] = reference.tally(mask)
        tallies[REFERENCE, target.name] = reference.tally(reference.argmax)
    for rule in (r for r in rules if r.requires == () and r.name not in RULES):  # a user's transform, at its own size
        try:
            mask = _checked(rule.apply(image.copy(), label.copy(), None), label.shape, rule.name, where, user=True)[1]
        except SoftprepError as error:
            failures.append((rule.name, str(error)))
            continue
        except Exception as error:  # noqa: BLE001 - whatever the user's code raises: one line naming it and the image
            failures.append((rule.name, f"--transform {rule.name} on {printable(where)}: raised {type(error).__name__}: "
                                        f"{_first_line(error)}; skipped for this image"))
            continue
        tallies[rule.name, _size_name(label.shape, mask.shape)] = _Reference(prepared, mask.shape).tally(mask)
    return tallies, prepared.class_counts(), failures


def _first_line(error: Exception) -> str:
    return printable((str(error).strip().splitlines() or [""])[0][:160])


def _size_name(full: tuple[int, int], out: tuple[int, int]) -> str:
    """A user transform's scale: the factor its output size implies (its short side), as a target name."""
    factor = min(out) / min(full)
    return repr(float(round(factor, 6)))


def _checked(result, full: tuple[int, int], name: str, where: str, size=None, user: bool = False):
    """A rule's ``(image, mask)``: a pair, a 2-D integer mask (a trailing channel of 1 dropped),
    image and mask of one size, no larger than the input, ``size`` when asked."""
    def refuse(what: str):
        who = f"--transform {name}" if user else f"rule {name}"
        return SoftprepError(f"{who} on {printable(where)}: {what}; skipped for this image")

    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise refuse(f"returned {type(result).__name__}, expected (image, mask)")
    image, mask = (np.asarray(part) for part in result)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise refuse(f"returned a mask of shape {mask.shape}, expected (h, w)")
    if mask.dtype.kind not in "ui":
        raise refuse(f"returned a {mask.dtype} mask; return integer class ids (uint8)")
    if image.shape[:2] != mask.shape:
        raise refuse(f"returned an image of {image.shape[1]}x{image.shape[0]} and a mask of {mask.shape[1]}x{mask.shape[0]} "
                     "(WxH): their sizes must agree")
    if mask.shape[0] > full[0] or mask.shape[1] > full[1] or min(mask.shape) < 1:
        raise refuse(f"returned a {mask.shape[1]}x{mask.shape[0]} mask from a {full[1]}x{full[0]} image; the audit "
                     "measures downsampling")
    if size is not None and mask.shape != tuple(size):
        raise refuse(f"returned {mask.shape[1]}x{mask.shape[0]}, asked {size[1]}x{size[0]} (WxH)")
    if mask.min() < 0 or mask.max() > 255:
        return image, np.clip(mask, 0, 256).astype(np.int64)  # out of range: counted as invalid
    return image, mask


class _Reference:
    """The exact area soft label of one image at one output size, with what every rule is compared to."""

    def __init__(self, prepared, size: tuple[int, int]):
        self.num_classes, codes = prepared.num_classes, prepared.codes
        self.full = codes.shape
        self.size = tuple(int(v) for v in size)
        plan = plan_for_size("area", False, self.full, self.size)
        self.soft = soft_label(prepared, plan.rows, plan.cols).dense()  # (C, h, w) float32
        argmax = self.soft.argmax(axis=0).astype(np.uint8)
        self.argmax = np.where(self.soft.max(axis=0) > 0, argmax, IGNORE_INDEX).astype(np.uint8)
        self.weight = self.full[0] * self.full[1] / (self.size[0] * self.size[1])  # full-resolution pixels per output
        scale = (self.full[0] / self.size[0], self.full[1] / self.size[1])
        self.shifts = int(math.ceil(max(scale))) + 1
        window = (max(1, round(scale[0])), max(1, round(scale[1])))
        thin = prepare_label(thin_labels(np.where(codes == self.num_classes, IGNORE_INDEX, codes), window), self.num_classes)
        self.thin = soft_label(thin, plan.rows, plan.cols).dense() * self.weight  # full-resolution thin pixels
        void = self.num_classes
        shifts = np.arange(-self.shifts, self.shifts + 1)
        rows_only = _axis_onehot(codes, plan.cols, 1, void)[:void]  # (C, H, w): columns resampled
        cols_only = _axis_onehot(codes, plan.rows, 0, void)[:void]  # (C, h, W): rows resampled
        curves = {"y": _shifted_box(rows_only, 1, self.full[0], self.size[0], shifts),
                  "x": _shifted_box(cols_only, 2, self.full[1], self.size[1], shifts)}  # (S, C, h, w)
        pixels = self.size[0] * self.size[1]
        #: per axis: (S, C * h * w) class weights of each shifted footprint, and (S, h * w) their sums of squares
        self.curves = {axis: (c.reshape(len(shifts), -1), (c ** 2).sum(axis=1).reshape(len(shifts), pixels))
                       for axis, c in curves.items()}
        self.margin = {axis: int(math.ceil(self.shifts / s)) + 1 for axis, s in zip("yx", scale)}

    def tally(self, mask: np.ndarray) -> Tally:
        c = self.num_classes
        mask = mask.astype(np.int64)
        valid = mask < c
        tally = Tally(c, self.shifts)
        tally.pixels, tally.valid, tally.images = mask.size, int(valid.sum()), 1
        tally.invalid = int(((mask >= c) & (mask != IGNORE_INDEX)).sum())
        tally.sizes = {(self.full, self.size)}
        tally.counts = np.bincount(mask[valid], minlength=c)[:c] * self.weight
        labels = np.where(valid, mask, 0)
        carried = np.take_along_axis(self.soft, labels[None], axis=0)[0]
        tally.invented = int((valid & (carried == 0)).sum())
        both = valid & (self.argmax != IGNORE_INDEX)
        tally.compared, tally.differ = int(both.sum()), int((both & (mask != self.argmax)).sum())
        tally.thin_total = float(self.thin.sum())
        tally.thin_kept = float(np.where(valid, np.take_along_axis(self.thin, labels[None], axis=0)[0], 0).sum())
        flat = labels.ravel() * labels.size + np.arange(labels.size)  # (class, pixel) in a (C, h * w) plane
        for axis, (weights, squares) in self.curves.items():
            inside = valid.copy()
            m = self.margin[axis]
            if axis == "y":
                inside[:m], inside[len(inside) - m:] = False, False
            else:
                inside[:, :m], inside[:, inside.shape[1] - m:] = False, False
            keep = inside.ravel()
            error = (1 - 2 * weights[:, flat[keep]] + squares[:, keep]).sum(axis=1)
            setattr(tally, f"error_{axis}", error * self.weight)
        return tally


def _audit_images(dataset: Dataset, samples: list, targets: list[Target], rule_names: list[str],
                  transform: str | None) -> tuple[dict, np.ndarray, list[str], int]:
    """A worker's share: tallies summed over ``samples``, full-resolution counts, failure lines, images read."""
    rules = [RULES[name] for name in rule_names] + ([user_rule(transform)] if transform else [])
    tallies: dict = {}
    counts = np.zeros(dataset.num_classes, np.int64)
    failures: list[str] = []
    for sample in samples:
        try:
            image, label = dataset.read_pair(sample)
        except SoftprepError as error:  # a bad mask (values outside the class table): every rule would fail
            failures.append(("", f"{error}; image skipped"))
            continue
        found, full, failed = measure(image, label, dataset.num_classes, dataset.ignore_index, targets, rules,
                                      where=str(sample.image))
        counts += full
        failures += failed
        for key, tally in found.items():
            if key in tallies:
                tallies[key].merge(tally)
            else:
                tallies[key] = tally
    return tallies, counts, failures, len(samples)


# ------------------------------------------------------------------------------------------- the report


@dataclass
class RuleResult:
    """One rule at one scale, summed over the images."""

    rule: str
    target: str
    what: str
    dy: float
    dx: float
    discrepancy: list[float]  # D per class (p_original - p_rule)
    differs: float
    thin_lost: float
    invalid: float
    invented: float
    images: int

    @property
    def sum_abs(self) -> float:
        return float(np.abs(self.discrepancy).sum())

    @property
    def max_abs(self) -> float:
        return float(np.abs(self.discrepancy).max())


@dataclass
class AuditReport:
    """What ``softprep audit`` found: a row per rule and scale, rules skipped, failure lines."""

    dataset: str
    split: str
    classes: list[str]
    images: int
    rows: list[RuleResult]
    skipped: dict[str, str]  # rule -> why (and its install line)
    failures: list[tuple[str, str]]  # (rule, one line naming it and the image); rule "" for an unreadable image
    seconds: float

    def failure_lines(self) -> list[str]:
        """The first failure of each rule (and of reading images), with how many more there were."""
        first: dict[str, tuple[str, int]] = {}
        for rule, line in self.failures:
            text, count = first.get(rule, (line, 0))
            first[rule] = (text, count + 1)
        return [text + (f" (and {count - 1} more image(s))" if count > 1 else "") for text, count in first.values()]

    def verdicts(self) -> list[str]:
        """One line per rule: its offset, prior drift and losses at each scale."""
        lines = []
        for rule in dict.fromkeys(row.rule for row in self.rows):
            parts = [_verdict(row) for row in self.rows if row.rule == rule]
            lines.append(f"{rule}: " + "; ".join(parts))
        return lines


def _direction(dy: float, dx: float) -> str:
    """``"labels sampled 3.5 px up-left of the image's pixel centres"`` (objects then appear 3.5 px
    down-right in the labels), ``"labels sampled 1.0 px up, 2.0 px right ..."``, or aligned (offsets
    within ALIGNED_BELOW)."""
    if math.isnan(dy) or math.isnan(dx):
        return "offset unknown"
    if abs(dy) <= ALIGNED_BELOW and abs(dx) <= ALIGNED_BELOW:
        return f"aligned with the image (dy {dy:+.1f}, dx {dx:+.1f} px)"
    vertical = "" if abs(dy) <= ALIGNED_BELOW else ("up" if dy < 0 else "down")
    horizontal = "" if abs(dx) <= ALIGNED_BELOW else ("left" if dx < 0 else "right")
    if vertical and horizontal and abs(abs(dy) - abs(dx)) < 0.15:
        return f"labels sampled {abs(dy):.1f} px {vertical}-{horizontal} of the image's pixel centres"
    parts = [f"{abs(v):.1f} px {word}" for v, word in ((dy, vertical), (dx, horizontal)) if word]
    return "labels sampled " + ", ".join(parts) + " of the image's pixel centres"


def _verdict(row: RuleResult) -> str:
    text = f"{_direction(row.dy, row.dx)} at {target_label(row.target)}; sum|D| {1e4 * row.sum_abs:.0f}"
    text += f"; {100 * row.differs:.1f}% of pixels differ from the area argmax; {100 * row.thin_lost:.0f}% of thin-structure pixels lost"
    if row.invalid or row.invented:
        text += f"; {100 * row.invalid:.2f}% invalid ids, {100 * row.invented:.2f}% ids not in the pixel's footprint (averaged ids?)"
    return text


def audit(dataset: Dataset, targets, split: str | None = None, rules: Sequence[str] | None = None,
          transform: str | None = None, limit: int | None = None, jobs: int | None = None,
          progress: Callable[[int, int], None] | None = None) -> AuditReport:
    """Measure ``rules`` (default: every registered rule) and a user's ``transform`` (``module:callable``)
    at ``targets`` on the first ``limit`` images of ``split`` (default: train, else the first).

    Raises:
        SoftprepError: an unknown rule, a bad transform, no images (one line).
    """
    started = time.perf_counter()
    targets = parse_targets(targets)
    if not targets and not transform:
        raise SoftprepError("pass --scales (e.g. 0.125 0.25) or a --transform to audit")
    if any(t.factors is not None and max(t.factors) > 1 for t in targets):
        raise SoftprepError("--scales: the audit measures downsampling; give factors <= 1 (e.g. 0.125 0.25)")
    names = list(rules) if rules else list(RULES)
    unknown = [name for name in names if name not in RULES]
    if unknown:
        raise SoftprepError(f"unknown rule {unknown[0]!r}; choose from {', '.join(RULES)}")
    if transform:
        user_rule(transform)  # a clear error now, not one per worker
    skipped = {name: f"{', '.join(RULES[name].missing())} not installed ({RULES[name].install})"
               for name in names if RULES[name].missing()}
    names = [name for name in names if name not in skipped]
    splits = dataset.splits()
    split = split or ("train" if "train" in splits else (splits[0] if splits else None))
    if split is None:
        raise SoftprepError(f"{dataset.root}: no {dataset.name} splits found; is --root the dataset folder?")
    samples = dataset.samples(split)[:limit]
    if not samples:
        raise SoftprepError(f"{dataset.root}: split {split!r} has no images")
    batch = max(1, min(16, len(samples) // (4 * max(1, jobs or 2))))
    tasks = [(dataset, samples[i:i + batch], targets, names, transform) for i in range(0, len(samples), batch)]
    tallies: dict = {}
    counts = np.zeros(dataset.num_classes, np.int64)
    failures: list[str] = []
    done = 0
    for found, full, failed, read in run_tasks(_audit_images, tasks, jobs):
        counts += full
        failures += failed
        for key, tally in found.items():
            if key in tallies:
                tallies[key].merge(tally)
            else:
                tallies[key] = tally
        done += read
        if progress:
            progress(read, len(samples))
    rows = _rows(tallies, counts, [*names, *([transform] if transform else []), REFERENCE], transform)
    return AuditReport(dataset.name, split, list(dataset.classes), len(samples), rows, skipped, failures,
                       time.perf_counter() - started)


def _rows(tallies: dict, counts: np.ndarray, order: list[str], transform: str | None) -> list[RuleResult]:
    original = counts / max(counts.sum(), 1)
    rows = []
    targets = sorted({key[1] for key in tallies}, key=lambda name: -float(name) if name[0].isdigit() else 0)
    for name in order:
        for target in targets:
            tally = tallies.get((name, target))
            if tally is None:
                continue
            prior = tally.counts / tally.counts.sum() if tally.counts.sum() else tally.counts
            what = RULES[name].what if name in RULES else (f"{name}(image, mask)" if name == transform
                                                           else "argmax of the exact area soft label (softprep)")
            rows.append(RuleResult(
                name, target, what, offset(tally.error_y, tally.shifts), offset(tally.error_x, tally.shifts),
                list(original - prior), tally.differ / max(tally.compared, 1),
                1 - tally.thin_kept / tally.thin_total if tally.thin_total else 0.0,
                tally.invalid / max(tally.pixels, 1), tally.invented / max(tally.pixels, 1), tally.images))
    return rows


def render(report: AuditReport, fmt: str = "table") -> str:
    """The report as an aligned ``table`` (with a verdict per rule), ``json`` or ``csv``."""
    if fmt == "json":
        return json.dumps(to_json(report), indent=2) + "\n"
    if fmt not in FORMATS:
        raise SoftprepError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    header = ["rule", "scale", "dy px", "dx px", "sum|D|", "max|D|", "differs", "thin lost", "invalid", "invented"]
    body = [[row.rule, target_label(row.target), f"{row.dy:+.2f}", f"{row.dx:+.2f}", f"{1e4 * row.sum_abs:.1f}",
             f"{1e4 * row.max_abs:.1f}", f"{100 * row.differs:.2f}%", f"{100 * row.thin_lost:.1f}%",
             f"{100 * row.invalid:.2f}%", f"{100 * row.invented:.2f}%"] for row in report.rows]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header + ["what"], *[b + [r.what] for b, r in zip(body, report.rows)]])
        return out.getvalue()
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [f"audit of {report.dataset} {report.split}: {report.images} images, against the exact area soft label "
             f"of each output size; offsets in full-resolution px (negative: up / left), D x1e4 (Table V)"]
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
              for r in [header, *body]]
    lines += ["", *report.verdicts()]
    lines += [f"{name}: skipped: {why}" for name, why in report.skipped.items()]
    return "\n".join(lines) + "\n"


def to_json(report: AuditReport) -> dict:
    return {"dataset": report.dataset, "split": report.split, "classes": report.classes, "images": report.images,
            "seconds": report.seconds, "skipped": report.skipped, "failures": [line for _, line in report.failures],
            "verdicts": report.verdicts(),
            "rows": [{"rule": r.rule, "target": r.target, "what": r.what, "dy": r.dy, "dx": r.dx,
                      "discrepancy": r.discrepancy, "sum_abs": r.sum_abs, "max_abs": r.max_abs, "differs": r.differs,
                      "thin_lost": r.thin_lost, "invalid": r.invalid, "invented": r.invented, "images": r.images}
                     for r in report.rows]}


def plot(report: AuditReport, path: str | Path, dpi: int = 120) -> Path:
    """A PNG: per rule and scale, the offset ``dy`` and ``dx`` and the prior drift sum|D| (needs matplotlib)."""
    from softprep.plot import _pyplot

    plt = _pyplot()
    rules = list(dict.fromkeys(row.rule for row in report.rows))
    targets = list(dict.fromkeys(row.target for row in report.rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(rules) + 2.2), sharey=True)
    y = np.arange(len(rules))
    height = 0.8 / max(1, len(targets))
    panels = (("dy", "vertical offset dy, full-res px (negative: up)"), ("dx", "horizontal offset dx, full-res px (negative: left)"),
              ("sum_abs", "prior drift sum|D| x1e4 (Table V)"))
    for i, target in enumerate(targets):
        rows = {row.rule: row for row in report.rows if row.target == target}
        position = y - 0.4 + (i + 0.5) * height
        for ax, (name, _) in zip(axes, panels):
            scale = 1e4 if name == "sum_abs" else 1
            values = [scale * getattr(rows[r], name) if r in rows else np.nan for r in rules]
            ax.barh(position, values, height, label=target_label(target), color=f"C{i}")
    for ax, (_, label) in zip(axes, panels):
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_xlabel(label)
    axes[0].set_yticks(y, rules)
    axes[0].invert_yaxis()
    axes[0].legend(title="scale", fontsize="small")
    fig.suptitle(f"softprep audit: {report.dataset} {report.split}, {report.images} images, against the exact area soft label")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


__all__ = ["AuditReport", "RuleResult", "audit", "measure", "offset", "plot", "render", "thin_labels", "to_json"]
