"""``softprep-train experiment``: does training on soft labels beat nearest neighbour? Paired seeds,
converged models, confidence intervals.

One protocol for any dataset adapter's root (CamVid by default):

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from softprep.build import build
from softprep.datasets import get_dataset
from softprep.errors import SoftprepError
from softprep.parallel import die_with_parent
from softprep.plan import target_name
from softprep.store import open_store

#: The colour kernel of every arm's store (identical colour images across arms).
COLOUR_KERNEL = "area"
FULL = "1.0"


@dataclass(frozen=True)
class Arm:
    """One way of making the training labels: the store's label kernel, the loss, multi-class
    pixels, and how hard labels are sampled."""

    name: str
    kernel: str  # the label kernel of the store it reads (colour: always COLOUR_KERNEL)
    loss: str  # "kl" | "ce-nn"
    mc: bool = True
    nn_sampling: str = "centre"
    about: str = ""


ARMS = {arm.name: arm for arm in (
    Arm("nn", "area", "ce-nn", nn_sampling="floor",
        about="torch `nearest` labels (the stored `nn_floor` map, resampled again by torch `nearest` in the augmentation)"),
    Arm("nn-centred", "area", "ce-nn", nn_sampling="centre",
        about="`nearest-exact` at pixel centres through the augmentation: hard labels aligned with the colour image"),
    Arm("soft", "area", "kl", about="area soft labels, KL loss (eq. 4)"),
    Arm("soft-no-mc", "area", "kl", mc=False, about="area soft labels, single-class pixels only (Table III)"),
    Arm("soft-bilinear", "bilinear", "kl", about="bilinear soft labels (the paper's kernel), area colour"),
)}

#: The default protocol per training scale (a stored factor name). 90 epochs at 1/8: at 60 the NN
#: arm stopped below 45 mIoU (44.2 over 5 seeds) while still learning; at 90 seed 3, its weakest,
#: went from 43.5 to 46.7.
DEFAULT_ARMS = {"0.125": ("nn", "nn-centred", "soft", "soft-no-mc", "soft-bilinear"), "0.25": ("nn", "nn-centred", "soft")}
DEFAULT_SEEDS = {"0.125": (0, 1, 2, 3, 4), "0.25": (0, 1, 2)}
DEFAULT_EPOCHS = {"0.125": 90, "0.25": 30}


def per_scale_text(table: dict, show=str) -> str:
    """A per-scale default for ``--help``: ``{"0.125": 90, "0.25": 30}`` -> ``90 at 1/8; 30 at 1/4``."""
    return "; ".join(f"{show(value)} at 1/{round(1 / float(scale))}" for scale, value in table.items())


#: (a, b): the comparisons ``b - a`` reported, where both arms ran at a scale.
COMPARISONS = (("nn", "soft"), ("nn-centred", "soft"), ("nn", "nn-centred"), ("soft", "soft-no-mc"),
               ("soft", "soft-bilinear"))
#: CamVid's thin classes (the secondary endpoints); other datasets: their rarest classes.
THIN_CLASSES = {"camvid": ("pole", "sign symbol", "fence", "pedestrian", "bicyclist")}


@dataclass
class Settings:
    """The protocol: per training scale (a stored factor name), its arms, seeds and epochs.

    The default takes about 4.5 hours of a 2-core CPU (two runs at a time, one core each): 25 runs
    of about 16 minutes at 1/8, 9 of about 15 at 1/4; it resumes, so it can span sessions.
    """

    root: str
    out: str
    dataset: str = "camvid"
    train_split: str = "train"
    eval_split: str = "val"
    model: str = "unet_small"
    arms: dict = field(default_factory=lambda: dict(DEFAULT_ARMS))
    seeds: dict = field(default_factory=lambda: dict(DEFAULT_SEEDS))
    epochs: dict = field(default_factory=lambda: dict(DEFAULT_EPOCHS))
    iters: int | None = None  # instead of epochs (the quick run)
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 2e-3
    #: poly decay power: 2 anneals within the budget (0.9, the paper's, still adds ~3 points in the
    #: last 20% of 60 epochs: measured on the NN arm at 1/8, seed 0)
    poly_power: float = 2.0
    weight_decay: float = 1e-4
    eval_every: int = 4  # epochs between learning-curve points (also 80% of the run)
    jobs: int = 2  # runs at a time, one core each
    replicates: int = 2000  # bootstrap replicates

    @classmethod
    def quick(cls, root: str, out: str, **overrides) -> "Settings":
        """End to end in under 2 minutes: every arm at 1/8 with 2 seeds, a few iterations each."""
        return cls(root, out, arms={"0.125": tuple(ARMS)}, seeds={"0.125": (0, 1)}, epochs={"0.125": 1}, iters=4,
                   replicates=200, **overrides)

    @property
    def scales(self) -> list[str]:
        return list(self.arms)

    def runs(self) -> list[tuple[str, str, int]]:
        """``(scale, arm, seed)`` in the order they run: scale by scale, seed-major (pairs finish together)."""
        return [(scale, arm, seed) for scale in self.scales for seed in self.seeds[scale] for arm in self.arms[scale]]

    def store_targets(self, kernel: str) -> list[str]:
        """Targets a store needs: every scale its arms train at, twice each (no enlarging), and 1.0
        in the area store (centred NN labels, full-resolution evaluation labels)."""
        scales = [s for s in self.scales if any(ARMS[a].kernel == kernel for a in self.arms[s])]
        targets = {target_name(s) for s in scales} | {target_name(min(1.0, 2 * float(s))) for s in scales}
        if kernel == COLOUR_KERNEL:
            targets |= {FULL} | {target_name(s) for s in self.scales}
        return sorted(targets, key=float)


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


def run_name(scale: str, arm: str, seed: int) -> str:
    return f"{arm}-{target_name(scale)}-s{seed}"


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
    from softprep_train.evaluate import iou_from_confusion

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
