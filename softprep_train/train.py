"""``softprep-train fit``: one training loop, read top to bottom.

SGD (momentum 0.9, weight decay 1e-4), poly learning rate (power 0.9) after a linear warm-up,
AMP on GPU, optional gradient clipping, JSON-lines logs, atomic checkpoints, bit-identical
``--resume`` on CPU (the data order and every augmentation are functions of seed and iteration),
DDP when started by ``torchrun`` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from softprep.errors import SoftprepError
from softprep.plan import target_name
from softprep.location import is_remote, location
from softprep.store import open_store, store_lock
from softprep_train.data import IMAGENET_MEAN, IMAGENET_STD, Augment, StoreDataset, TrainSampler, collate, normalise, to_device  # noqa: F401 - normalise, IMAGENET_* re-exported
from softprep_train.checkpoint import load_checkpoint_state, save_checkpoint
from softprep_train.config import TrainConfig
from softprep_train.losses import LOSSES
from softprep_train.models import build_model, model_dims, slow_on_cpu
from softprep_train.volumes import VolumeDataset


def lr_at(config: TrainConfig, iteration: int, total: int) -> float:
    """Linear warm-up to ``lr``, then ``lr * (1 - progress) ** poly_power``."""
    if iteration < config.warmup_iters:
        return config.lr * (iteration + 1) / config.warmup_iters
    progress = (iteration - config.warmup_iters) / max(1, total - config.warmup_iters)
    return config.lr * (1 - min(progress, 1.0)) ** config.poly_power


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, to compare ranks and runs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


#: Settings a resumed run may change: they do not alter what is computed.
FREE_ON_RESUME = {"resume", "overwrite", "stop_at", "workers", "log_every", "checkpoint_every", "device", "densify", "out",
                  "cache"}
#: Optimisers by name: parameters and config -> a torch optimiser.
OPTIMIZERS = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
}
#: Files a run writes into its --out.
RUN_FILES = ("last.pt", "log.jsonl", "summary.json")


def _check_same_run(config: TrainConfig, saved: dict, path: Path) -> None:
    """Refuse to resume with settings that would change the run (schedule, data, model, loss)."""
    mine, defaults = asdict(config), {f.name: f.default for f in fields(TrainConfig)}
    saved = {k: saved.get(k, defaults.get(k)) for k in mine}  # checkpoints from before a setting existed
    differing = [k for k in mine if k not in FREE_ON_RESUME and _plain(mine[k]) != _plain(saved[k])]
    if differing:
        detail = ", ".join(f"{k}: checkpoint has {saved.get(k)!r}, asked {mine[k]!r}" for k in differing)
        raise SoftprepError(f"{path}: cannot resume with other settings ({detail}); use the same options or a new --out")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _prepare_out(config: TrainConfig, out: Path) -> None:
    """Refuse to write into a finished or running run's folder unless resuming or overwriting."""
    last = out / "last.pt"
    if config.resume or not any((out / name).exists() for name in RUN_FILES):
        return
    if not config.overwrite:
        raise SoftprepError(f"{out}: already holds a run ({'last.pt' if last.exists() else 'log.jsonl'}); pass --resume "
                            "to continue it, --overwrite to start again, or choose a new --out")
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _truncate_log(path: Path, iteration: int) -> None:
    """Keep the log records up to ``iteration`` (those a resumed run does not redo), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iter"] <= iteration:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in kept))
    os.replace(partial, path)


def _format_eta(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class _StopSignals:
    """While active, SIGINT and SIGTERM set :attr:`received` instead of killing the loop, so it can
    checkpoint the iteration it is at and exit (a scheduler's preemption loses no work)."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def fit(config: TrainConfig, progress: bool = True, on_epoch: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """Train; returns the summary that is also written to ``out/summary.json``.

    ``on_epoch(epoch, model)`` is called (rank 0) after each completed epoch (1-based), the model
    in eval mode (learning curves); training resumes afterwards.

    Raises:
        SoftprepError: bad settings, an --out holding another run, a NaN loss, or SIGINT/SIGTERM
            (after writing a checkpoint of the current iteration; continue with ``--resume``).
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return _fit(config, progress, on_epoch)
    with store_lock(config.out, "softprep-train fit", "run folder"):  # one run per --out at a time
        return _fit(config, progress, on_epoch)


def _fit(config: TrainConfig, progress: bool, on_epoch) -> dict:
    run = _set_up(config, progress)
    return run if isinstance(run, dict) else _train(run, progress, on_epoch)


@dataclass
class _Run:
    """What the set-up prepares and the loop trains: the settings, where the run lives, its data,
    model and optimiser, and how far it got (``iteration``, the run's first and latest losses)."""

    config: TrainConfig
    out: Path
    rank: int
    world_size: int
    device: torch.device
    store: object  # softprep.store.Store
    crop: tuple[int, int]
    densify: str
    batches_per_epoch: int
    total: int
    class_weights: torch.Tensor | None
    model: torch.nn.Module
    trained: torch.nn.Module  # the model, wrapped for DDP when distributed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: str
    amp_dtype: torch.dtype | None
    loader: DataLoader
    prepare: Callable[[torch.Tensor], torch.Tensor]  # the model's input from a batch's image (images: ImageNet-normalised)
    finish: Callable  # the dataset's: a raw sparse sample -> dense tensors (on the device with densify="device")
    iteration: int = 0
    first_loss: float | None = None
    last_loss: float | None = None

    @property
    def last(self) -> Path:
        return self.out / "last.pt"

    def checkpoint(self) -> None:
        """Save the run where it is to ``last.pt`` (rank 0; atomic)."""
        if self.rank != 0:
            return
        spec = self.store.spec
        save_checkpoint(self.last, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "iteration": self.iteration, "config": asdict(self.config), "classes": self.store.classes,
            "dataset": spec.dataset, "palette": spec.palette, "kernel": spec.kernel, "antialias": spec.antialias,
            # the whole store spec it trained on (label and colour kernels, targets): what predict resamples with
            "store_spec": spec.root_attrs(complete=True),
            "num_classes": spec.num_classes, "crop": list(self.crop), "in_channels": spec.image_channels,
            # the run's first and latest losses: a summary written after a resume covers the whole run
            "first_loss": self.first_loss, "last_loss": self.last_loss,
        })


def _set_up(config: TrainConfig, progress: bool) -> "_Run | dict":
    """Everything before the first step: the settings in canonical form (a new config: the caller's
    is not changed), the distributed group, the run folder, data, model, optimiser, and a checkpoint
    to resume from. Returns the finished run's summary instead when ``--resume`` finds nothing left."""
    store = location(config.store)  # the same store by any path compares equal on --resume
    config = replace(config, scale=target_name(config.scale), store=str(store if is_remote(store) else store.resolve()))
    # --- distributed set-up (torchrun sets these variables) ---
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device)
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        _prepare_out(config, out)
    store = open_store(config.store)
    spec = store.spec
    if not store.complete:
        raise SoftprepError(f"{config.store}: store is not completely built; finish it with `softprep build` first")
    num_classes = spec.num_classes
    if config.class_weights is not None and len(config.class_weights) != num_classes:
        raise SoftprepError(f"--class-weights has {len(config.class_weights)} values; the store has {num_classes} classes "
                            f"({', '.join(store.classes[:4])}, ...): give one weight per class")

    # --- data: images (crops of a resize, flips) or volumes (3-D patches, flips) ---
    view = store.samples(config.split, config.scale)
    axes = view.sizes.shape[1]
    if model_dims(config.model) != axes:
        raise SoftprepError(f"{config.model} segments {model_dims(config.model)}-D inputs; split {config.split!r} of "
                            f"{config.store} holds {'volumes' if axes == 3 else 'images'}: use "
                            f"{'--model unet3d' if axes == 3 else 'a 2-D model (--model unet_small, hrnetv2_w48, ...)'}")
    crop = tuple(config.crop) if config.crop else tuple(int(v) for v in view.sizes.min(axis=0))
    if len(crop) != axes:
        raise SoftprepError(f"--crop {'x'.join(map(str, crop))} has {len(crop)} sides; the store's "
                            f"{'volumes have 3 (XxYxZ)' if axes == 3 else 'images have 2 (HxW)'}")
    densify = config.densify if config.densify != "auto" else ("device" if device.type == "cuda" else "worker")
    for value, registry, what in ((config.optimizer, OPTIMIZERS, "optimizer"), (config.loss, LOSSES, "loss")):
        if value not in registry:
            raise SoftprepError(f"unknown {what} {value!r}; choose one of {', '.join(registry)}")
    if axes == 3:  # intensities arrive standardised per volume
        dataset, prepare = VolumeDataset(config.store, config.split, config.scale, crop, densify=densify, cache=config.cache,
                                         nn_sampling=config.nn_sampling), (lambda image: image)
    else:
        dataset, prepare = StoreDataset(config.store, config.split, config.scale, Augment(crop), densify, cache=config.cache,
                                        nn_sampling=config.nn_sampling), normalise
    batches_per_epoch = TrainSampler(dataset, config.batch_size, config.seed, 0, rank, world_size).batches_per_epoch()
    total = config.epochs * batches_per_epoch if config.epochs else config.iters
    class_weights = torch.tensor(config.class_weights, dtype=torch.float32, device=device) if config.class_weights else None

    # --- model, optimiser, mixed precision ---
    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes, config.pretrained, spec.image_channels).to(device)
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), config)
    amp = config.amp if config.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    iteration, first_loss, last_loss = 0, None, None
    last = out / "last.pt"
    if config.resume and last.is_file():
        state = load_checkpoint_state(last, device)
        _check_same_run(config, state["config"], last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        iteration, first_loss, last_loss = state["iteration"], state.get("first_loss"), state.get("last_loss")
        if iteration >= total and (out / "summary.json").is_file():  # nothing left: the finished run's summary
            return {**json.loads((out / "summary.json").read_text()), "already_finished": True}
    elif config.resume and rank == 0 and progress:  # killed before its first checkpoint: nothing to lose
        print(f"{last}: no checkpoint yet; starting the run at iteration 0", flush=True)
    if rank == 0:
        _truncate_log(out / "log.jsonl", iteration)  # records past the checkpoint are redone
    if world_size > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over all ranks
    trained = DistributedDataParallel(model) if world_size > 1 else model

    sampler = TrainSampler(dataset, config.batch_size, config.seed, iteration, rank, world_size)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        collate_fn=collate, pin_memory=device.type == "cuda", persistent_workers=config.workers > 0,
                        prefetch_factor=4 if config.workers > 0 else None)
    return _Run(config, out, rank, world_size, device, store, crop, densify, batches_per_epoch, total, class_weights,
                model, trained, optimizer, scaler, amp, amp_dtype, loader, prepare, dataset.finish, iteration, first_loss,
                last_loss)


def _train(run: _Run, progress: bool, on_epoch) -> dict:
    """The loop, from ``run.iteration`` to the end (or ``--stop-at``, or a signal), then the summary."""
    config, rank, world_size, device, model, trained = run.config, run.rank, run.world_size, run.device, run.model, run.trained
    optimizer, scaler, amp_dtype, total, crop, last = run.optimizer, run.scaler, run.amp_dtype, run.total, run.crop, run.last
    iteration, num_classes, out = run.iteration, run.store.spec.num_classes, run.out
    piped = progress and rank == 0 and not sys.stdout.isatty()  # a plain line per log window instead of a bar
    if progress and rank == 0:
        note = " (slow on a CPU: try --model hrnetv2_w18_small or fewer --iters)" if (
            device.type == "cpu" and slow_on_cpu(config.model) and total - iteration > 1000) else ""
        loaded = getattr(model.backbone, "pretrained_tensors", None)
        weights = f"pretrained {loaded[0]}/{loaded[1]} backbone tensors from {config.pretrained}" if loaded else "random init"
        print(f"fit: {config.model} ({weights}) on {device}, iterations {iteration} -> {total}, batch {config.batch_size} "
              f"per process x {world_size}, crop {'x'.join(map(str, crop))}, loss {config.loss}{note}", flush=True)
    log = open(out / ("log.jsonl" if rank == 0 else f"log.rank{rank}.jsonl"), "a")
    bar = tqdm(total=total, initial=iteration, desc="fit", unit="it", disable=None if progress and rank == 0 else True)
    start, wait, window_images, window_start, losses = time.perf_counter(), 0.0, 0, time.perf_counter(), []
    batches = iter(run.loader)
    trained.train()
    stop = min(total, config.stop_at or total)
    with _StopSignals() as signals:
        while iteration < stop and not signals.received:
            fetch = time.perf_counter()
            try:
                batch = to_device(next(batches), device, num_classes, run.finish)
            except RuntimeError:
                if signals.received:  # the signal also ended a DataLoader worker
                    break
                raise
            wait += time.perf_counter() - fetch
            lr = lr_at(config, iteration, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = trained(run.prepare(batch["image"]))
            loss = LOSSES[config.loss](logits, batch, config, run.class_weights)
            if not torch.isfinite(loss):
                raise SoftprepError(f"loss is {loss.item()} at iteration {iteration} (lr {lr:.3g}); lower --lr, add "
                                    f"--clip-grad or --warmup-iters; the last good checkpoint is {last}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            iteration = run.iteration = iteration + 1
            losses.append(loss.item())
            run.first_loss = losses[0] if run.first_loss is None else run.first_loss
            run.last_loss = losses[-1]
            window_images += batch["image"].shape[0] * world_size
            bar.update(1)
            if iteration % config.log_every == 0 or iteration == stop:
                now = time.perf_counter()
                record = {"iter": iteration, "loss": losses[-1], "mean_loss": float(np.mean(losses[-config.log_every:])),
                          "lr": lr, "images_per_s": window_images / (now - window_start), "data_wait_share": wait / (now - window_start)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{record['mean_loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{record['images_per_s']:.1f}")
                if piped:
                    eta = (now - start) / max(1, len(losses)) * (stop - iteration)
                    print(f"iter {iteration}/{total}  loss {record['mean_loss']:.4f}  lr {lr:.2e}  "
                          f"{record['images_per_s']:.1f} img/s  eta {_format_eta(eta)}  data-wait {record['data_wait_share']:.0%}",
                          flush=True)
                window_images, window_start, wait = 0, now, 0.0
            if iteration % config.checkpoint_every == 0 and iteration < stop:
                run.checkpoint()
            if on_epoch is not None and rank == 0 and iteration % run.batches_per_epoch == 0:
                trained.eval()
                on_epoch(iteration // run.batches_per_epoch, model)
                trained.train()
    bar.close()
    if signals.received:
        run.checkpoint()
        log.close()
        raise SoftprepError(f"{signals.received} at iteration {iteration}: checkpoint {last} written; continue with the "
                            "same command plus --resume")
    if world_size > 1:  # BN running statistics drift per rank on CPU (no SyncBatchNorm there): keep rank 0's
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    run.checkpoint()
    seconds = time.perf_counter() - start
    summary = {"rank": rank, "world_size": world_size, "iterations": iteration, "seconds": seconds,
               "final_loss": run.last_loss, "first_loss": run.first_loss,
               "weights_sha256": weights_digest(model), "checkpoint": str(last), "device": str(device), "amp": run.amp,
               "densify": run.densify}
    if device.type == "cuda":
        summary["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    (out / ("summary.json" if rank == 0 else f"summary.rank{rank}.json")).write_text(json.dumps(summary, indent=2))
    log.close()
    if world_size > 1:
        dist.destroy_process_group()
    return summary


__all__ = ["TrainConfig", "fit", "lr_at", "weights_digest"]
