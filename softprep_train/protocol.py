"""The experiment's protocol, declared once: its arms, default seeds and epochs per scale, the
comparisons it reports, the thin classes it follows, and :class:`Settings` (one run's plan). The
runner (:mod:`softprep_train.experiment`), the report (:mod:`softprep_train.experiment_report`)
and the command line import it; it imports none of them (and no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from softprep.plan import target_name

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


def settings_from_options(root: str, out: str, dataset: str, eval_split: str, jobs: int, quick: bool = False,
                          scales: str | None = None, seeds: str | None = None, arms: str | None = None,
                          epochs: int | None = None) -> Settings:
    """The :class:`Settings` of ``softprep-train experiment``'s options: the default protocol (or
    ``--quick``), restricted to comma-separated ``scales`` (each keeping its default arms, seeds and
    epochs), then ``seeds``, ``arms`` (comma-separated) and ``epochs`` applied to every scale."""
    make = Settings.quick if quick else Settings
    settings = make(root, out, dataset=dataset, eval_split=eval_split, jobs=jobs)
    if scales:
        chosen = [v.strip() for v in scales.split(",")]
        default = Settings(root, out)

        def pick(table: dict, fallback: dict) -> dict:
            return {k: table.get(k, fallback[k] if k in fallback else next(iter(fallback.values()))) for k in chosen}

        settings.arms, settings.seeds = pick(settings.arms, default.arms), pick(settings.seeds, default.seeds)
        settings.epochs = pick(settings.epochs, default.epochs)
    if seeds:
        settings.seeds = {k: tuple(int(v) for v in seeds.split(",")) for k in settings.arms}
    if arms:
        settings.arms = {k: tuple(a.strip() for a in arms.split(",")) for k in settings.arms}
    if epochs:
        settings.epochs = {k: epochs for k in settings.arms}
    return settings


def run_name(scale: str, arm: str, seed: int) -> str:
    return f"{arm}-{target_name(scale)}-s{seed}"


__all__ = ["ARMS", "Arm", "COMPARISONS", "DEFAULT_ARMS", "DEFAULT_EPOCHS", "DEFAULT_SEEDS", "Settings", "THIN_CLASSES",
           "per_scale_text", "run_name", "settings_from_options"]
