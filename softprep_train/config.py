"""A training run's settings, declared once: ``fit`` runs them, every checkpoint saves them, and
``softprep-train fit``'s options take their defaults from here (no torch needed to read them)."""

from __future__ import annotations

from dataclasses import dataclass, fields


#: How hard (``ce-nn``) labels are sampled through the geometry: ``centre`` is ``nearest-exact``
#: (pixel centres, aligned with the colour image; the default: +3.2 mIoU over ``floor`` at 1/8 in
#: docs/experiments/camvid), ``floor`` is torch ``nearest`` (what pipelines do; labels up-left).
NN_SAMPLINGS = ("centre", "floor")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint."""

    store: str
    scale: str  # the training target: a stored factor ("0.25") or name ("short512")
    out: str
    model: str = "hrnetv2_w48"
    loss: str = "kl"  # "kl" | "ce-nn"
    nn_sampling: str = "centre"  # ce-nn labels: one of NN_SAMPLINGS
    mc: bool = True  # KL over multi-class pixels too (Table III)
    class_weights: list[float] | None = None
    split: str = "train"
    crop: tuple[int, int] | None = None  # (h, w); default: the split's smallest stored size at --scale
    batch_size: int = 12
    iters: int = 80000
    epochs: int | None = None  # overrides iters when set
    lr: float = 0.01
    optimizer: str = "sgd"  # "sgd" (momentum) | "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_iters: int = 0
    amp: str = "auto"  # "auto" (bf16 on GPU, off on CPU) | "off" | "bf16" | "fp16"
    clip_grad: float | None = None
    workers: int = 2
    cache: bool = False  # keep every decoded stored sample in memory (small datasets: the read stops dominating)
    densify: str = "auto"  # "auto" (device on GPU, worker on CPU) | "worker" | "device"
    log_every: int = 10
    checkpoint_every: int = 1000
    seed: int = 0
    pretrained: str | None = None
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False  # start again in an --out that holds a run
    stop_at: int | None = None  # stop (with a checkpoint) after this iteration, as if interrupted


def default(name: str):
    """The default of :class:`TrainConfig` field ``name``."""
    return next(f.default for f in fields(TrainConfig) if f.name == name)
