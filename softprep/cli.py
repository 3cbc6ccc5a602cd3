"""``softprep`` command line: a thin shell over the Python API (parse, call, print)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from tqdm import tqdm

from softprep import __version__
from softprep.errors import SoftprepError, printable
from softprep.kernels import DEFAULT_KERNEL
from softprep.options import (LOCATION, SIZE, MultiValueGroup, dataset_choice, jobs_option, kernel_choice,
                              parse_target_options, split_args, target_options)
from softprep.build import DEFAULT_MAX_PIXELS
from softprep.audit import FORMATS as AUDIT_FORMATS
from softprep.export import ROWS_PER_FILE
from softprep.rules import RULES
from softprep.store import DEFAULT_SHARD_SIZE


@click.group(cls=MultiValueGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="softprep")
def main():
    """Precompute paired colour images and soft labels for low-resolution segmentation training.

    Typical use:

    \b
      softprep demo --out demo-data
      softprep build --dataset cityscapes --root demo-data --out demo.zarr --scales 0.125 0.25 0.5
      softprep info demo.zarr
      softprep priors demo.zarr            # Table V: class-prior discrepancy per kernel and target
      softprep verify demo.zarr            # every chunk and recorded statistic
    """


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write the dataset into.")
@click.option("--train", default=20, show_default=True, help="Number of train images.")
@click.option("--val", default=5, show_default=True, help="Number of val images.")
@click.option("--size", default="512x1024", show_default=True, type=SIZE, help="Image size HxW (full Cityscapes: 1024x2048).")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed writes the same files.")
def demo(out, train, val, size, seed):
    """Write a small synthetic street-scene dataset in the Cityscapes layout (label ids)."""
    from softprep.demo import make_demo

    h, w = size
    make_demo(out, train=train, val=val, size=(h, w), seed=seed)
    click.echo(f"wrote {train} train + {val} val images of {h}x{w} to {out}")


@main.command()
@click.option("--dataset", default="cityscapes", show_default=True, type=dataset_choice(),
              help="Dataset adapter: the folder layout and label table (folder: your own, see README).")
@click.option("--root", required=True, type=LOCATION, help="Dataset root folder (or s3://, gs:// URL).")
@click.option("--out", required=True, type=LOCATION, help="Store to write: a .zarr folder (or s3://, gs:// URL).")
@target_options
@click.option("--kernel", default=DEFAULT_KERNEL, show_default=True, type=kernel_choice(),
              help="Resampling kernel, shared by colour and labels.")
@click.option("--image-kernel", type=kernel_choice(), default=None,
              help="Resample the colour images with another kernel than the labels (the paper's Table IV); default: --kernel.")
@click.option("--antialias/--no-antialias", default=False, show_default=True, help="Widen bilinear/bicubic filters when downscaling (torch antialias=True).")
@click.option("--splits", multiple=True, help="Splits to build (default: the labelled ones found, e.g. train and val).")
@jobs_option()
@click.option("--shard-size", default=DEFAULT_SHARD_SIZE, show_default=True, help="Most images per shard file (the resume unit); large images get fewer.")
@click.option("--overwrite", is_flag=True, help="Delete an existing store at --out and start again.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1),
              help="Refuse images (or one image's outputs over all targets) above this many pixels: ~1 GiB per worker.")
@click.option("--scheduler", metavar="ADDRESS", help="Run on a Dask cluster: its scheduler (tcp://host:8786), or 'local' "
              "for a LocalCluster of --jobs processes (needs the dask extra).")
@click.option("--allow-upsampling", is_flag=True, help="Accept --scales factors above 1 (they enlarge every image).")
def build(dataset, root, out, scales, short_side, fit, spacing, kernel, image_kernel, antialias, splits, jobs, shard_size,
          overwrite, max_pixels, scheduler, allow_upsampling):
    """Build a store: every image of every split at every target resolution, resumably.

    Rerunning an interrupted build finishes it; a store made with other settings is refused
    unless --overwrite.
    """
    from softprep.build import build as run_build
    from softprep.datasets import get_dataset

    targets = parse_target_options(scales, short_side, fit, spacing)
    if not targets:
        raise SoftprepError("pass at least one target: --scales 0.125 0.25 0.5, --short-side 512, --fit 512x1024 or "
                            "(volumes) --spacing 2 2 2")
    adapter = get_dataset(dataset, root)
    bar, progress = _progress_bar("build")
    try:
        result = run_build(adapter, out, targets, kernel, antialias, list(split_args(splits, str)) or None,
                           jobs, overwrite, shard_size, progress, max_pixels, note=lambda text: click.echo(text, err=True),
                           scheduler=scheduler, image_kernel=image_kernel, allow_upsampling=allow_upsampling)
    finally:
        bar.close()
    click.echo(f"{out}: {result['built']} images built, {result['skipped']} already done, {result['total']} in all; complete")


@main.command()
@click.argument("store", type=LOCATION)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable: settings, per split and target sizes and bytes.")
@click.option("--ids", is_flag=True, help="List the image ids instead (SPLIT ID per line), e.g. for `softprep show`.")
@click.option("--split", default=None, help="With --ids: only this split.")
def info(store, as_json, ids, split):
    """Summarise a store: settings, splits, targets, progress and size on disk."""
    from softprep.info import describe, image_ids, summary

    if ids:
        for name, image_id in image_ids(store, split):
            click.echo(f"{printable(name)} {printable(image_id)}")
    elif as_json:
        click.echo(json.dumps(describe(store), indent=2))
    else:
        click.echo(summary(store))


@main.command(short_help="Class-prior discrepancy per class, kernel and target (Table V).")
@click.argument("store", required=False, type=LOCATION)
@click.option("--split", default=None, help="Split to report (default: train, else the first).")
@click.option("--format", "fmt", default="text", show_default=True, type=click.Choice(["text", "markdown", "csv", "json"]),
              help="text/markdown/csv: the paper's Table V layout, values x --scale-factor; json: unscaled, full precision.")
@click.option("--scale-factor", default=1e4, show_default=True, type=float, help="Multiply D by this in text/markdown/csv.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Also write a PNG bar chart of D (needs matplotlib).")
@click.option("--compare-kernels", multiple=True, help="Compute the table from --root for these kernels instead of a store, e.g. nearest bilinear area.")
@click.option("--root", type=LOCATION, help="Dataset root (with --compare-kernels).")
@click.option("--dataset", default="cityscapes", show_default=True, type=dataset_choice(), help="Dataset adapter (with --compare-kernels).")
@target_options
@click.option("--antialias/--no-antialias", default=False, show_default=True, help="Antialiased bilinear/bicubic (with --compare-kernels).")
@jobs_option("Worker processes for --compare-kernels (default: all cores).")
def priors(store, split, fmt, scale_factor, plot, compare_kernels, root, dataset, scales, short_side, fit, spacing, antialias,
           jobs):
    """Class-prior discrepancy D = p_original - p_d per class (paper eq. 5, Table V).

    \b
    From a built store (recorded masses, no pixel pass):
      softprep priors STORE.zarr [--format markdown] [--plot priors.png]
    Before building, for several kernels straight from a dataset:
      softprep priors --compare-kernels nearest bilinear area --root DATA --scales 0.125 0.25 0.5

    A row is "exact" when D was computed in rational arithmetic: its zeros are exactly 0.
    """
    from softprep import priors as prior_api

    if compare_kernels:
        targets = parse_target_options(scales, short_side, fit, spacing)
        if store is not None or root is None or not targets:
            raise SoftprepError("--compare-kernels reads a dataset, not a store: pass --root DATA and --scales, and no STORE")
        from softprep.datasets import get_dataset

        adapter = get_dataset(dataset, root)
        bar, progress = _progress_bar("priors")
        with bar:
            table = prior_api.compare_kernels(adapter, split_args(compare_kernels, str), targets, split,
                                              antialias, jobs, progress=progress)
    else:
        if store is None:
            raise SoftprepError("pass a STORE (softprep priors STORE.zarr), or --compare-kernels with --root")
        from softprep.store import open_store

        table = prior_api.store_priors(open_store(store), split)
    click.echo(prior_api.render(table, fmt, scale_factor), nl=False)
    if plot:
        from softprep.plot import plot_priors

        click.echo(f"wrote {plot_priors(table, plot)}", err=True)


def _progress_bar(desc: str):
    """A tqdm bar (on stderr, hidden when not a terminal) and a ``progress(count, total)`` callback for it."""
    bar = tqdm(total=0, unit="img", desc=desc, disable=None, file=sys.stderr)

    def progress(count, total):
        bar.total = total
        bar.update(count)

    return bar, progress


@main.command()
@click.argument("store", type=LOCATION)
@click.option("--split", default=None, help="Split to analyse (default: train, else the first).")
@click.option("--format", "fmt", default="text", show_default=True, type=click.Choice(["text", "json"]))
@jobs_option()
def stats(store, split, fmt, jobs):
    """Per target: multi-class pixel share, classes per pixel, entropy, NN/argmax disagreement,
    and per class the images where a class vanishes under NN (or soft) downsampling."""
    from softprep.stats import render, split_stats
    from softprep.store import open_store

    bar, progress = _progress_bar("stats")
    with bar:
        result = split_stats(open_store(store), split, jobs, progress=progress)
    click.echo(render(result, fmt), nl=False)


@main.command(short_help="Draw one sample at one target, like the paper's Figs 3 and 4.")
@click.argument("store", type=LOCATION)
@click.argument("image_id")
@click.option("--scale", "--target", "target", required=True, help="Stored target to draw, e.g. 0.125 or short512.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG file to write.")
@click.option("--split", default=None, help="Split holding IMAGE_ID (default: found by id).")
@click.option("--classes", "class_names", default=None,
              help="Comma-separated classes to draw weight maps of, e.g. 'pole,traffic sign' (default: the 2 most mixed).")
@click.option("--root", type=LOCATION, help="Dataset root, to add the full-resolution labels.")
def show(store, image_id, target, out, split, class_names, root):
    """Draw one sample at one target (paper Fig. 3/4): colour, labels, NN labels, soft label, class weights."""
    from softprep.show import show as draw
    from softprep.store import open_store

    classes = [c.strip() for c in class_names.split(",")] if class_names else None
    path = draw(open_store(store), image_id, target, out, split=split, classes=classes, root=root)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("store", type=LOCATION)
@click.option("--root", type=LOCATION, help="Dataset root: also check full-resolution counts and valid fractions.")
@jobs_option()
def verify(store, root, jobs):
    """Read every chunk (crc32c) and re-derive every recorded statistic.

    Prints one line per problem (split, target, image, array) and exits 1; exits 0 when all hold.
    """
    from softprep.verify import verify as check

    bar, progress = _progress_bar("verify")
    with bar:
        problems = check(store, root, jobs, progress=progress)
    for line in problems:
        click.echo(line)
    if problems:
        click.echo(f"{store}: {len(problems)} problem(s)", err=True)
        sys.exit(1)
    from softprep.verify import checked_summary

    click.echo(f"{store}: ok ({checked_summary(store, root)})")


@main.command()
@click.argument("store", type=LOCATION)
@click.option("--to", "kind", type=click.Choice(["parquet"]), required=True, help="Output kind: parquet (Hugging Face datasets).")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--rows-per-file", default=ROWS_PER_FILE, show_default=True, type=click.IntRange(min=1),
              help="Images per parquet file.")
def export(store, kind, out, rows_per_file):
    """Write STORE as a Hugging Face `datasets` folder OUT (one config per target, a dataset card
    with the build's provenance and exact priors); needs the hf extra.

    Written into OUT.exporting and renamed to OUT when complete: an interrupted export leaves no
    OUT, and rerunning the same command finishes it."""
    from softprep.export import export_parquet

    bar, progress = _progress_bar("export")
    with bar:
        export_parquet(store, out, progress, rows_per_file)
    click.echo(f"{printable(out)}: written; load with datasets.load_dataset(\"parquet\", data_dir=\"{printable(out)}/TARGET\")")


@main.command(short_help="How far a pipeline's labels drift from its images, on your own data.")
@click.option("--dataset", default="cityscapes", show_default=True, type=dataset_choice(), help="Dataset adapter of --root.")
@click.option("--root", required=True, type=LOCATION, help="Dataset root folder.")
@click.option("--split", default=None, help="Split to audit (default: train, else the first).")
@click.option("--scales", multiple=True, metavar="FACTOR", help="Scale factors <= 1, e.g. --scales 0.125 0.25.")
@click.option("--rule", "rules", multiple=True, type=click.Choice(list(RULES)),
              help="Rules to measure (default: every one whose library is installed).")
@click.option("--transform", metavar="MODULE:CALLABLE",
              help="Your own (image, mask) -> (image, mask) function, measured at the size it returns.")
@click.option("--images", "limit", type=click.IntRange(min=1), default=None, help="Audit the first N images (default: all).")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(AUDIT_FORMATS),
              help="table: one row per rule and scale, then a verdict per rule; json; csv.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Also write a PNG of offset and sum|D| per rule.")
@jobs_option()
def audit(dataset, root, split, scales, rules, transform, limit, fmt, plot, jobs):
    """Downsample the labels as each library does (torch, PIL, cv2, torchvision v2, Albumentations,
    Kornia, MONAI, or your --transform) and measure each against the exact area soft label of the
    same size: offset from the image (full-resolution px), class-prior drift D (Table V, x1e4),
    pixels that differ from the area argmax, thin structures lost, invalid or invented ids.
    """
    from softprep.audit import audit as run_audit, plot as plot_audit, render as render_audit
    from softprep.datasets import get_dataset

    adapter = get_dataset(dataset, root)
    bar, progress = _progress_bar("audit")
    with bar:
        report = run_audit(adapter, split_args(scales, str), split, rules, transform, limit, jobs, progress)
    for line in report.failure_lines():
        click.echo(f"softprep: {line}", err=True)
    click.echo(render_audit(report, fmt), nl=False)
    if plot:
        click.echo(f"wrote {plot_audit(report, plot)}", err=True)


def entry():
    """Console-script entry point."""
    main(prog_name="softprep")


if __name__ == "__main__":
    entry()
