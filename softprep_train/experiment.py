"""``softprep-train experiment``: does training on soft labels beat nearest neighbour? Paired seeds,
converged models, confidence intervals.

One protocol for any dataset adapter's root (CamVid by default):

The protocol itself (arms, defaults, comparisons, :class:`Settings`) is :mod:`softprep_train.protocol`.

1. **Stores.** One colour kernel (``area``) for every arm, so the colour images are identical:
   ``stores/area.zarr`` (area soft labels, the stored NN maps and the full-resolution labels at
   target ``1.0``) and ``stores/bilinear.zarr`` (bilinear soft labels, area colour). Each
   training scale ``s`` also stores ``2 s``, so the augmentation (resize by U(0.5, 2)) never
   enlarges a stored sample.
2. **Arms** (:data:`ARMS`), the same model, schedule, seeds and augmentation draws; only the
   labels and the loss change: ``nn`` (torch ``nearest``, what pipelines do), ``nn-centred``
   (``nearest-exact`` from full resolution: the aligned hard baseline), ``soft`` (area, KL),
   ``soft-no-mc`` (Table III), ``soft-bilinear`` (the paper's kernel).
3. **Runs.** Every (scale, arm, seed) trains ``unet_small`` (full-resolution logits) from scratch
   with AdamW + poly, is scored on the evaluation split at full resolution every few epochs
   (learning curves) and at the end (per-image confusion matrices), and records
   ``runs/NAME/result.json`` beside its checkpoint and the exact commands. A rerun skips runs whose
   result is recorded with the same settings: the experiment resumes, across sessions too.
4. **Report.** Paired differences with t and two-level bootstrap CIs, Holm-corrected
   (:mod:`softprep_train.comparison`); convergence of the NN arm; learning curves and the paper's
   Fig. 5/6 (:mod:`softprep_train.experiment_report`).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

import numpy as np

from softprep.build import build
from softprep.datasets import get_dataset
from softprep.errors import SoftprepError
from softprep.parallel import die_with_parent
from softprep.plan import target_name
from softprep.store import open_store
from softprep_train.protocol import (ARMS, COLOUR_KERNEL, DEFAULT_ARMS, DEFAULT_EPOCHS, DEFAULT_SEEDS, FULL,  # noqa: F401
                                     Arm, Settings, per_scale_text, run_name)

def check_settings(settings: Settings) -> None:
    unknown = {a for arms in settings.arms.values() for a in arms} - set(ARMS)
    if unknown:
        raise SoftprepError(f"unknown arm(s) {', '.join(sorted(unknown))}; choose from {', '.join(ARMS)}")
    for scale in settings.scales:
        if scale not in settings.seeds or scale not in settings.epochs:
            raise SoftprepError(f"scale {scale}: give its seeds and epochs")
    dataset = get_dataset(settings.dataset, settings.root)
    for split in (settings.train_split, settings.eval_split):
        if not dataset.has_split(split):
            raise SoftprepError(f"{settings.root}: no split {split!r} in this {settings.dataset} root "
                                f"(it has {', '.join(dataset.splits()) or 'none'}); choose --eval-split from those")


def build_stores(settings: Settings, log: Callable[[str], None]) -> dict[str, Path]:
    """``{label kernel: store path}``: every store the arms read, colour by :data:`COLOUR_KERNEL`."""
    dataset = get_dataset(settings.dataset, settings.root)
    kernels = sorted({ARMS[a].kernel for arms in settings.arms.values() for a in arms} | {COLOUR_KERNEL})
    stores = {}
    for kernel in kernels:
        # named by content: a run at other scales builds its own store instead of refusing this one
        path = Path(settings.out) / "stores" / f"{kernel}-{'-'.join(settings.store_targets(kernel))}.zarr"
        start = time.perf_counter()
        log(f"store {path}: building (targets {', '.join(settings.store_targets(kernel))}) ...")
        result = build(dataset, path, settings.store_targets(kernel), kernel=kernel, image_kernel=COLOUR_KERNEL,
                       splits=sorted({settings.train_split, settings.eval_split}), jobs=None)
        log(f"store {path}: {result['built']} images built, {result['skipped']} already there "
            f"({time.perf_counter() - start:.0f} s)")
        stores[kernel] = path
    _check_same_colour(stores, settings)
    return stores


def _check_same_colour(stores: dict[str, Path], settings: Settings) -> None:
    """Every store's training-split colour images equal the area store's, byte for byte (one read
    per size bucket: the stores share the dataset, so they share the bucket layout)."""
    reference = open_store(stores[COLOUR_KERNEL])
    for kernel, path in stores.items():
        if kernel == COLOUR_KERNEL:
            continue
        store = open_store(path)
        for target in store.targets:
            ours, theirs = reference.samples(settings.train_split, target), store.samples(settings.train_split, target)
            differing = _first_differing_image(ours, theirs)
            if differing is not None:
                raise SoftprepError(f"{path}: colour image {differing} at {target} differs from the {COLOUR_KERNEL} "
                                    "store's; delete OUT/stores and rerun")


def _first_differing_image(ours, theirs) -> str | None:
    """The id of the first image whose colour differs between two views of one split, else None."""
    if ours.ids != theirs.ids or not np.array_equal(ours.sizes, theirs.sizes):  # not the same images at all
        return next((a for a, b in zip(ours.ids, theirs.ids) if a != b), ours.ids[0] if ours.ids else "(none)")
    for name in dict.fromkeys(ours.buckets):  # equal sizes: equal buckets and positions
        members = [i for i, bucket in enumerate(ours.buckets) if bucket == name]  # in bucket-position order
        a, b = ours.bucket(members[0])["image"][:], theirs.bucket(members[0])["image"][:]
        if not np.array_equal(a, b):
            return ours.ids[members[int(np.argmax((a != b).reshape(len(a), -1).any(1)))]]
    return None


def train_config(settings: Settings, stores: dict[str, Path], scale: str, arm_name: str, seed: int):
    """The :class:`TrainConfig` of one run."""
    from softprep_train.train import TrainConfig

    arm = ARMS[arm_name]
    epochs = None if settings.iters else settings.epochs[scale]
    return TrainConfig(store=str(Path(stores[arm.kernel]).resolve()), scale=target_name(scale),
                       out=str(Path(settings.out, "runs", run_name(scale, arm_name, seed)).resolve()),
                       model=settings.model, loss=arm.loss, mc=arm.mc, nn_sampling=arm.nn_sampling,
                       split=settings.train_split, batch_size=settings.batch_size, iters=settings.iters or 0,
                       epochs=epochs, lr=settings.lr, poly_power=settings.poly_power, optimizer=settings.optimizer,
                       weight_decay=settings.weight_decay,
                       workers=0, cache=True, log_every=50, checkpoint_every=10**9, seed=seed, overwrite=True,
                       device="cpu")


def fit_command(config) -> str:
    """The ``softprep-train fit`` command line that trains exactly ``config``."""
    args = ["softprep-train", "fit", "--store", config.store, "--scale", config.scale, "--out", config.out,
            "--model", config.model, "--loss", config.loss, "--mc" if config.mc else "--no-mc",
            "--nn-sampling", config.nn_sampling, "--split", config.split, "--batch-size", str(config.batch_size),
            *(["--epochs", str(config.epochs)] if config.epochs else ["--iters", str(config.iters)]),
            "--optimizer", config.optimizer, "--lr", str(config.lr), "--poly-power", str(config.poly_power),
            "--weight-decay", str(config.weight_decay),
            "--workers", "0", "--cache", "--seed", str(config.seed), "--device", "cpu", "--overwrite"]
    return shlex.join(args)


def _eval_pairs(store_path: Path, split: str, target: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The evaluation split in memory: ``(image at target (h, w, 3) uint8, labels (H, W) uint8)``."""
    store = open_store(store_path)
    images, labels = store.samples(split, target), store.samples(split, FULL)
    return [(np.ascontiguousarray(images[i].image), labels[i].nn()) for i in range(len(images))]


def train_and_score(settings: Settings, stores: dict[str, Path], scale: str, arm_name: str, seed: int,
                    threads: int = 1, parent: int | None = None) -> dict:
    """One run: train with learning-curve evaluations, score the final checkpoint per image, record it."""
    import torch

    from softprep_train.comparison import miou_from_confusion
    from softprep_train.evaluate import image_confusions, load_checkpoint
    from softprep_train.train import fit

    die_with_parent(parent)  # a stopped experiment leaves no run training on
    torch.set_num_threads(threads)
    config = train_config(settings, stores, scale, arm_name, seed)
    run = Path(config.out)
    pairs = _eval_pairs(stores[COLOUR_KERNEL], settings.eval_split, config.scale)
    classes = open_store(stores[COLOUR_KERNEL]).classes
    total_epochs = config.epochs or 0
    curve_epochs = {e for e in range(settings.eval_every, total_epochs, settings.eval_every)} | {round(0.8 * total_epochs)}
    curve: list[tuple[int, float]] = []

    def on_epoch(epoch: int, model) -> None:
        if epoch in curve_epochs and epoch < total_epochs:
            curve.append((epoch, float(miou_from_confusion(image_confusions(model, pairs, len(classes)).sum(0)))))

    summary = fit(config, progress=False, on_epoch=on_epoch)
    model, _ = load_checkpoint(run / "last.pt", torch.device("cpu"))
    per_image = image_confusions(model, pairs, len(classes))
    miou = float(miou_from_confusion(per_image.sum(0)))
    curve.append((total_epochs, miou))
    evaluate = shlex.join(["softprep-train", "eval", "--checkpoint", str(run / "last.pt"), "--store",
                           str(Path(stores[COLOUR_KERNEL]).resolve()), "--split", settings.eval_split])
    (run / "command.txt").write_text(fit_command(config) + "\n" + evaluate + "\n")
    result = {"arm": arm_name, "scale": config.scale, "seed": seed, "miou": miou,
              "iou": _plain_iou(per_image.sum(0)), "curve": curve, "seconds": summary["seconds"],
              "final_loss": summary["final_loss"], "iterations": summary["iterations"],
              "eval_split": settings.eval_split, "config": _config_key(config),
              "per_image_confusion": per_image.tolist()}
    partial = run / "result.json.partial"
    partial.write_text(json.dumps(result))
    os.replace(partial, run / "result.json")
    return result


def _plain_iou(confusion: np.ndarray) -> list[float | None]:
    from softprep_train.comparison import iou_from_confusion

    return [None if np.isnan(v) else float(v) for v in iou_from_confusion(confusion)]


def _config_key(config) -> dict:
    """What decides a run's result: its training config without paths that may move."""
    key = asdict(config)
    for name in ("store", "out", "overwrite", "workers", "cache", "log_every", "checkpoint_every", "device"):
        key.pop(name, None)
    return key


def recorded(settings: Settings, stores: dict[str, Path], scale: str, arm: str, seed: int) -> dict | None:
    """The recorded result of a run, if one exists with the same settings and evaluation split."""
    path = Path(settings.out) / "runs" / run_name(scale, arm, seed) / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError:
        return None
    from softprep_train.train import TrainConfig

    config = _config_key(train_config(settings, stores, scale, arm, seed))
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    saved = {k: result.get("config", {}).get(k, defaults.get(k)) for k in config}  # settings added since: their defaults
    return result if saved == config and result.get("eval_split") == settings.eval_split else None


def run_experiment(settings: Settings, log: Callable[[str], None] = print, report_only: bool = False) -> dict:
    """Build the stores, train every run not yet recorded (``settings.jobs`` at a time), write the report.

    ``report_only``: train nothing; report the runs recorded so far (a long experiment's interim report).
    """
    from joblib import Parallel, delayed

    from softprep_train.experiment_report import write_report

    check_settings(settings)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stores = build_stores(settings, log)
    runs = settings.runs()
    results = {run: r for run in runs if (r := recorded(settings, stores, *run)) is not None}
    todo = [] if report_only else [run for run in runs if run not in results]
    log(f"runs: {len(runs)} planned, {len(results)} already recorded, {len(todo)} to train ({settings.jobs} at a time)")
    if todo:
        jobs = max(1, min(settings.jobs, len(todo)))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        tasks = (delayed(train_and_score)(settings, stores, *run, threads, os.getpid()) for run in todo)
        run_seconds = []
        # loky replaces a worker whose memory grew by more than 300 MB during a run (the run's cache
        # and model); the run was recorded, so its warning only alarms
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor")
            for result in Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")(tasks):
                results[(_scale_key(settings, result["scale"]), result["arm"], result["seed"])] = result
                run_seconds.append(result["seconds"])
                left = len(todo) - len(run_seconds)
                eta = np.mean(run_seconds) * math.ceil(left / jobs)  # runs finish `jobs` at a time
                log(f"{result['arm']:<13} {result['scale']:>5} seed {result['seed']}: mIoU {100 * result['miou']:.1f} "
                    f"({result['seconds'] / 60:.1f} min); {len(run_seconds)}/{len(todo)} done, about {eta / 60:.0f} min left")
    log("report: statistics and pictures ...")
    report = write_report(settings, stores, [results[run] for run in runs if run in results],
                          time.perf_counter() - started, command=_invocation(), planned=len(runs))
    log(f"report: {out / 'report.md'}")
    return report


def _scale_key(settings: Settings, name: str) -> str:
    return next(s for s in settings.scales if target_name(s) == name)


def _invocation() -> str:
    """The command line as the user would type it (``python -m softprep_train.cli`` is ``softprep-train``)."""
    if not sys.argv or not sys.argv[0]:
        return ""
    program = Path(sys.argv[0]).name
    # --report-only reports what the same command without it trains (recorded runs are reused)
    args = [a for a in sys.argv[1:] if a != "--report-only"]
    return shlex.join(["softprep-train" if program in ("cli.py", "softprep-train") else program, *args])


__all__ = ["ARMS", "Arm", "Settings", "run_experiment", "train_and_score"]
