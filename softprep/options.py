"""CLI options and parameter types declared once, for both ``softprep`` and ``softprep-train``
(rasterio's ``rio/options.py`` is the model): commands receive typed values (locations, sizes,
targets), and choices come from the registries (datasets, kernels)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from softprep.errors import SoftprepError, printable
from softprep.kernels import KERNELS


#: Options that take several values after one flag (``--scales 0.125 0.25 0.5``).
MULTI_VALUE_OPTIONS = ("--scales", "--splits", "--compare-kernels", "--short-side", "--fit", "--rule", "--spacing")
#: Of those, the ones whose values after one flag make one value (``--spacing 2 2 2``: one voxel size;
#: ``--spacing 2 2 2 --spacing 4 4 4``: two).
GROUPED_OPTIONS = ("--spacing",)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def expand_multi_value_options(args: list[str]) -> list[str]:
    """Rewrite ``--scales a b c`` as ``--scales a --scales b --scales c`` for click (a
    :data:`GROUPED_OPTIONS` one as ``--spacing "a b c"``).

    A negative number after such an option is a value (to be refused with a real message), not a flag.
    """
    out, option = [], None
    for arg in args:
        if arg in MULTI_VALUE_OPTIONS:
            option = arg
            if arg in GROUPED_OPTIONS:
                out += [arg, ""]
                continue
        elif option and (not arg.startswith("-") or _is_number(arg)):
            if option in GROUPED_OPTIONS:
                out[-1] = f"{out[-1]} {arg}".strip()
            else:
                out += [option, arg]
            continue
        else:
            option = None
            out.append(arg)
    return out


class OneLineErrors(click.Group):
    """A click group that turns :class:`SoftprepError` into one line on stderr and exit status 1."""

    prog = "softprep"

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SoftprepError as error:
            click.echo(f"{self.prog}: error: {printable(error)}", err=True)
            sys.exit(1)


class MultiValueGroup(OneLineErrors):
    """Also accept multi-value options (``--scales 0.125 0.25``)."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, expand_multi_value_options(list(args)))


def target_options(function):
    """``--scales``, ``--short-side``, ``--fit`` and (volumes) ``--spacing``: the resolution targets,
    parsed the same way everywhere."""
    function = click.option("--spacing", multiple=True, metavar="MM",
                            help="Volumes: the output voxel size in mm per axis, e.g. --spacing 2 2 2 (one value: "
                            "isotropic); repeat the flag for more targets (--spacing 2 2 2 --spacing 4); the "
                            "extent is kept, from each volume's own voxel size.")(function)
    function = click.option("--fit", multiple=True, metavar="HxW",
                            help="Fit inside this box keeping the ratio, e.g. --fit 512x1024 (upsamples smaller images).")(function)
    function = click.option("--short-side", multiple=True, metavar="PX",
                            help="Resize so the short side is PX pixels, e.g. --short-side 512 (upsamples smaller images).")(function)
    return click.option("--scales", multiple=True, metavar="FACTOR",
                        help="Scale factors, e.g. --scales 0.125 0.25 0.5 (output size floor(side * factor)); "
                        "a factor per axis as 0.5x0.5x1 (volumes).")(function)


def parse_target_options(scales, short_side, fit, spacing=()) -> list:
    """The targets of :func:`target_options` (one-line errors for bad values)."""
    from softprep.plan import parse_targets

    words = split_args(scales, str) + [f"short{v}" for v in split_args(short_side, str)]
    words += [f"fit{v}" for v in split_args(fit, str)]
    for value in spacing:  # one voxel size per --spacing: "2 2 2", "2", or targets such as "2x2x2mm 4mm"
        mm = str(value).replace(",", " ").split()
        if all(_is_number(v) for v in mm):
            words.append("x".join(mm) + "mm")
        else:
            words += [v if v.endswith("mm") else f"{v}mm" for v in mm]
    return parse_targets(words)


def dataset_choice():
    from softprep.datasets import DATASETS

    return click.Choice(sorted(DATASETS))


def kernel_choice():
    return click.Choice(KERNELS)


class LocationType(click.ParamType):
    """A local path, or an object-storage URL (``s3://bucket/key``, ``gs://...``) kept intact."""

    name = "path|url"

    def convert(self, value, param, ctx):
        from softprep.location import location

        try:
            return location(value)
        except SoftprepError as error:
            self.fail(str(error), param, ctx)


LOCATION = LocationType()


def split_args(values, kind=float):
    """Accept both ``--scales 0.125 --scales 0.25`` and ``--scales "0.125 0.25"`` (or ``0.125,0.25``)."""
    return [kind(v) for value in values for v in str(value).replace(",", " ").split()]




class SizeType(click.ParamType):
    """``HxW`` (e.g. ``256x512``) -> ``(h, w)`` ints; a volume's ``XxYxZ`` -> ``(x, y, z)``."""

    name = "HxW"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        try:
            sides = tuple(int(v) for v in str(value).lower().split("x"))
            if len(sides) not in (2, 3) or min(sides) < 1:
                raise ValueError
        except ValueError:
            self.fail(f"{value!r}: expected HxW (a volume: XxYxZ) with positive sides, e.g. 256x512", param, ctx)
        return sides


SIZE = SizeType()


def out_folder(help: str, required: bool = True):
    """``--out`` naming a folder to write."""
    return click.option("--out", required=required, type=click.Path(file_okay=False, path_type=Path), help=help)


def jobs_option(help: str = "Worker processes (default: all cores).", default=None):
    return click.option("--jobs", "-j", type=int, default=default, show_default=default is not None, help=help)
