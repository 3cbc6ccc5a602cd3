"""``softprep-train``: fit, eval, predict (a thin shell over :mod:`softprep_train`).

Distributed: ``torchrun --nproc-per-node N -m softprep_train.cli fit ...``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from softprep.errors import SoftprepError, install_hint
from softprep.options import LOCATION, SIZE, OneLineErrors, dataset_choice, out_folder
from softprep_train.config import NN_SAMPLINGS, TrainConfig, default
from softprep_train.protocol import DEFAULT_ARMS, DEFAULT_EPOCHS, DEFAULT_SEEDS, per_scale_text

try:  # the registries name --model's and --loss's choices; without torch, entry() says what to install
    from softprep_train.losses import LOSSES
    from softprep_train.models import MODELS
except ImportError:
    MODELS, LOSSES = {}, {}


def device_option(function):
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")(function)


def no_verify_option(function):
    return click.option("--no-verify", is_flag=True,
                        help="Load a checkpoint without softprep's checksum trailer (foreign weights).")(function)


class _Group(OneLineErrors):
    prog = "softprep-train"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Train segmentation models on soft labels from a softprep store (KL loss, paper eq. 4).

    \b
      softprep-train fit --store STORE.zarr --scale 0.25 --model hrnetv2_w48 --loss kl --out runs/hr
      softprep-train eval --checkpoint runs/hr/last.pt --store STORE.zarr --split val
      softprep-train predict --checkpoint runs/hr/last.pt --images DIR --out DIR
    """


class ModelName(click.ParamType):
    """A name from the model registry, or ``smp:ARCH/ENCODER``."""

    name = "MODEL"

    def get_metavar(self, param, *args, **kwargs):
        return "[" + "|".join(MODELS) + "|smp:ARCH/ENCODER]"

    def convert(self, value, param, ctx):
        if value in MODELS or (str(value).startswith("smp:") and "/" in str(value)):
            return value
        self.fail(f"{value!r}: choose one of {', '.join(MODELS)}, or smp:ARCH/ENCODER", param, ctx)


def _class_weights(path: Path | None) -> list[float] | None:
    if path is None:
        return None
    try:
        return [float(v) for v in json.loads(Path(path).read_text())]
    except (OSError, ValueError, TypeError) as error:
        raise SoftprepError(f"{path}: expected a JSON list of one weight per class ({error})") from None


@main.command()
@click.option("--store", required=True, type=LOCATION, help="softprep store to train from (a folder, or s3://, gs:// URL).")
@click.option("--scale", required=True, help="Training target, a stored one: a factor (0.25) or a name (short512, fit512x1024).")
@out_folder("Run folder: logs, checkpoints.")
@click.option("--model", default=default("model"), show_default=True, type=ModelName(),
              help="A registered model (hrnetv2_w48 is the paper's; unet_small, hrnetv2_w18_small and deeplabv3plus_r18 "
              "suit a CPU), or smp:ARCH/ENCODER from segmentation_models_pytorch (e.g. smp:DeepLabV3Plus/resnet50).")
@click.option("--loss", default=default("loss"), show_default=True, type=click.Choice(list(LOSSES)),
              help="kl: soft labels; ce-nn: NN hard labels (baseline).")
@click.option("--nn-sampling", default=default("nn_sampling"), show_default=True, type=click.Choice(NN_SAMPLINGS),
              help="ce-nn labels: centre = nearest-exact at pixel centres through the whole augmentation (aligned with "
              "the image); floor = torch nearest (what most pipelines do: labels (s-1)/2 px up-left).")
@click.option("--mc/--no-mc", default=default("mc"), show_default=True, help="KL over multi-class pixels too, or single-class pixels only.")
@click.option("--class-weights", type=click.Path(dir_okay=False, path_type=Path), help="JSON list of per-class loss weights.")
@click.option("--split", default=default("split"), show_default=True, help="Store split to train on.")
@click.option("--crop", type=SIZE, default=None, help="Crop HxW (volumes: patch XxYxZ; default: the smallest stored size at --scale; every image's when all are equal).")
@click.option("--batch-size", default=default("batch_size"), show_default=True, help="Images per step per process (global batch = this x processes).")
@click.option("--iters", default=default("iters"), show_default=True, help="Iterations (ignored with --epochs).")
@click.option("--epochs", type=int, default=default("epochs"), help="Train for this many epochs instead of --iters.")
@click.option("--lr", default=default("lr"), show_default=True, help="Peak learning rate, then poly decay.")
@click.option("--poly-power", default=default("poly_power"), show_default=True, help="Power of the poly learning-rate decay.")
@click.option("--optimizer", default=default("optimizer"), show_default=True, type=click.Choice(["sgd", "adamw"]),
              help="sgd (momentum) or adamw.")
@click.option("--momentum", default=default("momentum"), show_default=True, help="SGD momentum.")
@click.option("--weight-decay", default=default("weight_decay"), show_default=True, help="Weight decay of the optimizer.")
@click.option("--warmup-iters", default=default("warmup_iters"), show_default=True, help="Linear warm-up before the poly schedule.")
@click.option("--amp", default=default("amp"), show_default=True, type=click.Choice(["auto", "off", "bf16", "fp16"]), help="auto: bf16 on GPU, off on CPU.")
@click.option("--clip-grad", type=float, default=default("clip_grad"), help="Clip the gradient norm to this value.")
@click.option("--workers", default=default("workers"), show_default=True, help="DataLoader worker processes.")
@click.option("--cache", is_flag=True, default=default("cache"), help="Keep decoded stored samples in memory (small datasets: faster steps).")
@click.option("--densify", default=default("densify"), show_default=True, type=click.Choice(["auto", "worker", "device"]),
              help="Where sparse soft labels become dense: auto = device on GPU, worker on CPU.")
@click.option("--log-every", default=default("log_every"), show_default=True, help="Iterations between log lines (OUT/log.jsonl; stdout when piped).")
@click.option("--checkpoint-every", default=default("checkpoint_every"), show_default=True, help="Iterations between checkpoints (OUT/last.pt; also at the end and on SIGINT/SIGTERM).")
@click.option("--seed", default=default("seed"), show_default=True, help="Seed of initialisation, data order and augmentation.")
@click.option("--pretrained", type=click.Path(path_type=Path),
              help="Local ImageNet backbone weights: a state dict file, or for segformer a Hugging Face model folder (never downloaded).")
@device_option
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt (bit-identical on CPU).")
@click.option("--overwrite", is_flag=True, help="Start again in an --out that already holds a run (its files are deleted).")
@click.option("--stop-at", type=int, default=None, help="Stop after this iteration with a checkpoint (time-limited jobs); continue later with --resume.")
def fit(**options):
    """Train a model on a store split at one target resolution."""
    from softprep_train.train import fit as run_fit

    options["class_weights"] = _class_weights(options["class_weights"])
    for key in ("store", "out", "pretrained"):
        options[key] = str(options[key]) if options[key] is not None else None
    summary = run_fit(TrainConfig(**options))
    if summary.get("already_finished"):
        click.echo(f"{summary['checkpoint']}: the run already finished ({summary['iterations']} iterations); nothing to resume")
    elif summary["rank"] == 0:
        losses = (f"loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}" if summary["final_loss"] is not None
                  else "no loss recorded")
        click.echo(f"trained {summary['iterations']} iterations in {summary['seconds']:.1f} s on {summary['device']}: "
                   f"{losses}; checkpoint {summary['checkpoint']}")


@main.command(name="eval")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path))
@click.option("--store", required=True, type=LOCATION)
@click.option("--split", default="val", show_default=True)
@click.option("--root", type=click.Path(path_type=Path), help="Dataset root, when the store has no 1.0 target to read full-resolution labels from.")
@click.option("--mode", default="whole", show_default=True, type=click.Choice(["whole", "slide"]), help="Whole image or sliding window (crop size, 2/3 stride).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="JSON report (default: next to the checkpoint).")
@device_option
@no_verify_option
def evaluate(checkpoint, store, split, root, mode, out, device, no_verify):
    """Full-resolution per-class IoU and mIoU (paper Table I layout)."""
    from softprep_train.evaluate import evaluate as run_eval, save_report

    report = run_eval(checkpoint, store, split, root, mode, device, verify=not no_verify)
    click.echo(report.table(), nl=False)
    path = save_report(report, out or Path(checkpoint).with_name(f"eval-{split}.json"))
    present = int((~np.isnan(report.iou)).sum())
    click.echo(f"mIoU {100 * report.miou:.1f} on {split}: mean over the {present} of {len(report.classes)} classes present "
               f"in the labels or predictions; report {path}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path))
@click.option("--images", required=True, type=click.Path(path_type=Path), help="Folder of .png/.jpg images (searched recursively).")
@out_folder("Folder for the masks (the images' sub-folders are kept).")
@click.option("--mode", default="whole", show_default=True, type=click.Choice(["whole", "slide"]))
@device_option
@no_verify_option
def predict(checkpoint, images, out, mode, device, no_verify):
    """Prediction masks per image, in the image's relative folder: <name>_pred.png (colour),
    <name>_trainIds.png and, for Cityscapes, <name>_labelIds.png (for cityscapesScripts)."""
    from softprep_train.predict import predict_folder

    written = predict_folder(checkpoint, images, out, mode, device, verify=not no_verify)
    click.echo(f"wrote {len(written)} masks to {out}")


def _joined(values) -> str:
    return ",".join(str(v) for v in values)


@main.command()
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root (for camvid: SegNet's layout).")
@out_folder("Folder for stores, runs (checkpoints, commands, results) and the report; rerun to resume.")
@click.option("--dataset", default="camvid", show_default=True, type=dataset_choice(), help="Dataset adapter of --root (folder: your own).")
@click.option("--eval-split", default="val", show_default=True, help="Labelled split every run is scored on.")
@click.option("--quick", is_flag=True, help="Every arm at 1/8, 2 seeds, 4 iterations each (under 2 minutes): a smoke test.")
@click.option("--seeds", default=None, help=f"Comma-separated seeds for every scale (default: {per_scale_text(DEFAULT_SEEDS, _joined)}).")
@click.option("--arms", default=None, help=f"Comma-separated arms for every scale (default: {per_scale_text(DEFAULT_ARMS, _joined)}).")
@click.option("--scales", default=None, help=f"Comma-separated training scales (default: {_joined(DEFAULT_ARMS)}).")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help=f"Epochs of every run at every scale (default: {per_scale_text(DEFAULT_EPOCHS)}).")
@click.option("--jobs", default=2, show_default=True, help="Runs trained at a time (one core each).")
@click.option("--report-only", is_flag=True, help="Train nothing: report the runs recorded so far (an interim report).")
def experiment(root, out, dataset, eval_split, quick, seeds, arms, scales, epochs, jobs, report_only):
    """Soft labels against nearest neighbour, paired by seed: arms nn, nn-centred, soft, soft-no-mc,
    soft-bilinear trained to convergence, scored at full resolution, compared with t and bootstrap
    CIs (Holm-corrected); report.md/.json, learning curves and predictions in OUT."""
    from softprep_train.experiment import run_experiment
    from softprep_train.protocol import settings_from_options

    settings = settings_from_options(str(root), str(out), dataset, eval_split, jobs, quick, scales, seeds, arms, epochs)
    report = run_experiment(settings, log=lambda text: click.echo(text, err=True), report_only=report_only)
    click.echo(f"{out / 'report.md'}: {len(report['runs'])} runs")
    for comparison in report["primary"]:
        t = comparison["t"]
        click.echo(f"  {comparison['name']}: {100 * t['mean']:+.2f} mIoU, 95% CI [{100 * t['low']:+.2f}, "
                   f"{100 * t['high']:+.2f}] ({comparison['verdict']})")


def entry():
    try:
        import torch  # noqa: F401
    except ImportError:
        click.echo(f"softprep-train: error: torch is not installed; install the training extra: {install_hint('train')}",
                   err=True)
        sys.exit(1)
    main(prog_name="softprep-train")


if __name__ == "__main__":
    entry()
