"""``softprep-train experiment``: the paper's comparison, small and real, on CamVid.

Builds the stores, trains every arm with the same model, schedule, seeds and augmentation (only
the label down-sampling and the loss change), evaluates each on val at full resolution, and
writes ``report.md``, ``report.json`` and plots into the output folder:

* Table I   -- NN labels (``ce-nn``) against soft labels (``kl``), per class and mIoU, per scale;
* Table III -- soft labels without multi-class pixels (``--no-mc``);
* Table IV  -- colour and label kernels chosen apart (bilinear/bicubic colour x NN / soft-bilinear /
               soft-bicubic labels; arms ``t4-*``, stores built with ``--image-kernel``);
* kernels   -- soft labels from ``area``, ``bilinear``, ``bilinear`` + antialias and ``bicubic``, and
               every kernel's prior discrepancy and multi-class share: the evidence for the default;
* Fig. 8    -- per-class IoU gain (soft - NN) against the per-class reduction of |D|;
* Table V   -- the prior discrepancy of the train split (``softprep priors``).

Every arm runs with each seed; a difference is called real only when it exceeds the seeds' spread.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from softprep.build import build
from softprep.datasets import get_dataset
from softprep.errors import SoftprepError
from softprep.kernels import KERNELS
from softprep.plan import parse_target
from softprep.priors import compare_kernels, render, store_priors, target_label
from softprep.stats import split_stats
from softprep.store import open_store


@dataclass(frozen=True)
class Arm:
    """One training configuration: which store (label kernel, colour kernel, antialias), loss and
    multi-class setting."""

    name: str
    kernel: str
    loss: str
    mc: bool = True
    image_kernel: str | None = None  # None: the label kernel
    antialias: bool = False

    @property
    def store_name(self) -> str:
        colour = f"-colour-{self.image_kernel}" if self.image_kernel and self.image_kernel != self.kernel else ""
        return f"{self.kernel}{'-aa' if self.antialias else ''}{colour}"

    @property
    def colour(self) -> str:
        return self.image_kernel or self.kernel


ARMS = (
    Arm("nn", "bilinear", "ce-nn"),  # the usual pipeline: NN labels from the same store
    Arm("soft", "bilinear", "kl"),
    Arm("soft-no-mc", "bilinear", "kl", mc=False),
    Arm("soft-area", "area", "kl"),
    # Table IV: colour and labels from kernels chosen apart ("nn" and "soft" are its bilinear-colour row)
    Arm("t4-bilinear-soft-bicubic", "bicubic", "kl", image_kernel="bilinear"),
    Arm("t4-bicubic-nn", "bicubic", "ce-nn"),
    Arm("t4-bicubic-soft-bilinear", "bilinear", "kl", image_kernel="bicubic"),
    Arm("t4-bicubic-soft-bicubic", "bicubic", "kl"),
    # the remaining kernel for the default: bilinear with antialias (bicubic is t4-bicubic-soft-bicubic)
    Arm("soft-bilinear-aa", "bilinear", "kl", antialias=True),
)
#: The arms of the default run (Tables I and III, area vs bilinear); ``--arms`` picks others.
DEFAULT_ARMS = ("nn", "soft", "soft-no-mc", "soft-area")
#: Table IV cells: (colour kernel, labels) -> arm.
TABLE4 = {("bilinear", "NN"): "nn", ("bilinear", "soft-bilinear"): "soft", ("bilinear", "soft-bicubic"): "t4-bilinear-soft-bicubic",
          ("bicubic", "NN"): "t4-bicubic-nn", ("bicubic", "soft-bilinear"): "t4-bicubic-soft-bilinear",
          ("bicubic", "soft-bicubic"): "t4-bicubic-soft-bicubic"}


@dataclass
class Settings:
    """The experiment's configuration: the default fits 60 minutes of this project's 2-core CPU."""

    root: str
    out: str
    dataset: str = "camvid"
    scales: tuple[float, ...] = (0.125, 0.25)
    seeds: tuple[int, ...] = (0, 1, 2)
    model: str = "hrnetv2_w18_small"
    iters: dict = field(default_factory=lambda: {"0.125": 240, "0.25": 140})
    batch_size: int = 8
    lr: float = 0.05
    warmup_iters: int = 10
    workers: int = 1
    arms: tuple[str, ...] = DEFAULT_ARMS

    @classmethod
    def quick(cls, root: str, out: str) -> "Settings":
        """End to end in about 2 minutes: every arm once, a few iterations, at 1/8 only."""
        return cls(root, out, scales=(0.125,), seeds=(0,), iters={"0.125": 3}, workers=0)


def build_stores(settings: Settings, log) -> dict[str, Path]:
    """One store per (label kernel, antialias, colour kernel) the arms need, at every scale, and the
    bilinear store (Table V, evidence); ``--root`` labels serve eval."""
    dataset = get_dataset(settings.dataset, settings.root)
    needed = {a.store_name: a for a in ARMS if a.name in settings.arms}
    needed.setdefault("bilinear", Arm("bilinear", "bilinear", "kl"))
    stores = {}
    for name, arm in sorted(needed.items()):
        path = Path(settings.out) / "stores" / f"{name}.zarr"
        start = time.perf_counter()
        build(dataset, path, settings.scales, kernel=arm.kernel, antialias=arm.antialias, image_kernel=arm.image_kernel,
              splits=["train", "val"], jobs=None)
        log(f"store {path}: built in {time.perf_counter() - start:.0f} s")
        stores[name] = path
    return stores


def train_arm(settings: Settings, store: Path, arm: Arm, scale: float, seed: int) -> dict:
    """Train and evaluate one arm at one scale with one seed; the eval report as a dict."""
    from softprep_train.evaluate import evaluate, save_report
    from softprep_train.train import TrainConfig, fit

    target = parse_target(scale).name
    run = Path(settings.out) / "runs" / f"{arm.name}-{target}-s{seed}"
    config = TrainConfig(store=str(store), scale=target, out=str(run), model=settings.model, loss=arm.loss, mc=arm.mc,
                         batch_size=settings.batch_size, iters=settings.iters[target], lr=settings.lr,
                         warmup_iters=min(settings.warmup_iters, settings.iters[target] - 1), workers=settings.workers,
                         log_every=max(1, settings.iters[target] // 4), checkpoint_every=10**9, seed=seed,
                         overwrite=True)
    summary = fit(config, progress=False)
    report = evaluate(run / "last.pt", store, "val", root=settings.root, progress=False)
    save_report(report, run / "eval-val.json")
    return {"arm": arm.name, "scale": scale, "seed": seed, "miou": report.miou,
            "iou": [None if np.isnan(v) else float(v) for v in report.iou], "seconds": summary["seconds"],
            "final_loss": summary["final_loss"]}


def kernel_evidence(settings: Settings, stores: dict[str, Path]) -> dict:
    """Per kernel and scale: sum |D| (x1e4) of the train split, and (for built stores) the multi-class share."""
    dataset = get_dataset(settings.dataset, settings.root)
    kernels = [k for k in KERNELS]
    table = compare_kernels(dataset, kernels, settings.scales, split="train")
    antialiased = compare_kernels(dataset, ["bilinear"], settings.scales, split="train", antialias=True)
    rows = {(r.strategy, r.target): float(r.sum_abs) * 1e4 for r in table.rows + antialiased.rows}
    evidence = {"sum_abs_d_x1e4": {f"{k}@{target_label(t)}": v for (k, t), v in rows.items()}, "multi_class_share": {}}
    for name, path in stores.items():
        if "-colour-" in name:  # the same labels as the store of its label kernel
            continue
        for s in split_stats(open_store(path), "train").targets:
            evidence["multi_class_share"][f"{name}@{target_label(s.target)}"] = s.summary()["multi_class_share"]
    evidence["table"] = render(table, "markdown") + "\n" + render(antialiased, "markdown")
    return evidence


def summarise(results: list[dict], classes: list[str]) -> dict:
    """Mean and std of mIoU and per-class IoU per (arm, scale) over seeds."""
    out = {}
    for key in sorted({(r["arm"], r["scale"]) for r in results}):
        runs = [r for r in results if (r["arm"], r["scale"]) == key]
        miou = np.array([r["miou"] for r in runs])
        iou = np.array([[np.nan if v is None else v for v in r["iou"]] for r in runs], dtype=float)
        out[f"{key[0]}@{key[1]}"] = {
            "arm": key[0], "scale": key[1], "seeds": len(runs), "miou_mean": float(miou.mean()),
            "miou_std": float(miou.std(ddof=1)) if len(runs) > 1 else 0.0,
            "iou_mean": [None if np.isnan(v) else float(v) for v in np.nanmean(iou, axis=0)] if len(iou) else [],
        }
    return out


def fig8(summary: dict, priors: dict, classes: list[str], scales, path: Path) -> dict:
    """Per class: IoU gain (soft - NN) against |D_nn| - |D_soft|; scatter per scale, Pearson r."""
    correlations = {}
    points = {}
    for scale in scales:
        nn, soft = summary.get(f"nn@{scale}"), summary.get(f"soft@{scale}")
        if not nn or not soft:
            continue
        label = target_label(parse_target(scale).name)
        gain = np.array([np.nan if a is None or b is None else b - a for a, b in zip(nn["iou_mean"], soft["iou_mean"])])
        d_nn, d_soft = np.abs(priors[f"nearest@{label}"]), np.abs(priors[f"bilinear@{label}"])
        reduction = d_nn - d_soft
        ok = ~np.isnan(gain)
        r = float(np.corrcoef(reduction[ok], gain[ok])[0, 1]) if ok.sum() > 2 and gain[ok].std() > 0 else float("nan")
        correlations[label] = r
        points[label] = (reduction, gain)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return correlations
    fig, axes = plt.subplots(1, max(1, len(points)), figsize=(6 * max(1, len(points)), 4.5), squeeze=False)
    for ax, (label, (reduction, gain)) in zip(axes[0], points.items()):
        ax.scatter(reduction * 1e4, gain * 100)
        for c, name in enumerate(classes):
            if not np.isnan(gain[c]):
                ax.annotate(name, (reduction[c] * 1e4, gain[c] * 100), fontsize=7)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.axvline(0, color="grey", linewidth=0.5)
        ax.set_xlabel("|D_nn| - |D_soft| (x1e4)")
        ax.set_ylabel("IoU gain soft - NN (points)")
        ax.set_title(f"{label}: Pearson r = {correlations[label]:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return correlations


def _table(summary: dict, arms: list[str], scales, classes: list[str]) -> str:
    header = ["arm", "scale", *classes, "mIoU (mean ± std)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scale in scales:
        for arm in arms:
            entry = summary.get(f"{arm}@{scale}")
            if entry is None:
                continue
            cells = ["-" if v is None else f"{100 * v:.1f}" for v in entry["iou_mean"]]
            lines.append(f"| {arm} | {target_label(parse_target(scale).name)} | " + " | ".join(cells)
                         + f" | {100 * entry['miou_mean']:.1f} ± {100 * entry['miou_std']:.1f} |")
    return "\n".join(lines)


def verdict(summary: dict, a: str, b: str, scale) -> str:
    """``b`` against ``a``: the difference of means, called real only beyond both arms' seed spread."""
    x, y = summary.get(f"{a}@{scale}"), summary.get(f"{b}@{scale}")
    if not x or not y:
        return "n/a"
    diff = y["miou_mean"] - x["miou_mean"]
    if min(x["seeds"], y["seeds"]) < 2:
        return f"{100 * diff:+.1f} mIoU (one seed: no spread to judge it by)"
    spread = max(x["miou_std"], y["miou_std"])
    return f"{100 * diff:+.1f} mIoU ({'beyond' if abs(diff) > spread else 'within'} the seed spread of {100 * spread:.1f})"


def run_experiment(settings: Settings, log=print) -> dict:
    """Run everything; returns the report dict also written to ``OUT/report.json``."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    arms = [a for a in ARMS if a.name in settings.arms]
    unknown = set(settings.arms) - {a.name for a in ARMS}
    if unknown or not arms:
        raise SoftprepError(f"unknown arm(s) {', '.join(sorted(unknown)) or '(none given)'}; choose from {', '.join(a.name for a in ARMS)}")
    stores = build_stores(settings, log)
    classes = open_store(stores["bilinear"]).classes
    evidence = kernel_evidence(settings, stores)
    table5 = store_priors(open_store(stores["bilinear"]), "train")
    priors = {f"{r.strategy}@{target_label(r.target)}": [float(d) for d in r.discrepancy] for r in table5.rows}
    results = []
    for scale in settings.scales:
        for seed in settings.seeds:
            for arm in arms:
                result = train_arm(settings, stores[arm.store_name], arm, scale, seed)
                results.append(result)
                log(f"{arm.name:<11} {target_label(parse_target(scale).name):>4} seed {seed}: mIoU {100 * result['miou']:.1f} "
                    f"({result['seconds']:.0f} s)")
    summary = summarise(results, classes)
    correlations = fig8(summary, priors, classes, settings.scales, out / "fig8.png")
    from softprep.plot import plot_priors

    plot_priors(table5, out / "table5.png")
    report = {"settings": {**asdict(settings), "scales": list(settings.scales), "seeds": list(settings.seeds)},
              "classes": classes, "results": results, "summary": summary, "kernel_evidence": evidence,
              "table5": {k: v for k, v in priors.items()}, "fig8_pearson_r": correlations,
              "verdicts": {f"{b} vs {a} @{s}": verdict(summary, a, b, s) for s in settings.scales
                           for a, b in (("nn", "soft"), ("soft", "soft-no-mc"), ("soft", "soft-area"),
                                        ("soft", "soft-bilinear-aa"), ("soft", "t4-bicubic-soft-bicubic"),
                                        ("nn", "t4-bicubic-nn"), ("soft", "t4-bicubic-soft-bilinear"))
                           if f"{a}@{s}" in summary and f"{b}@{s}" in summary},
              "seconds": time.perf_counter() - started}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report, table5))
    return report


def markdown(report: dict, table5) -> str:
    s = report["settings"]
    arms = [a for a in s["arms"]]
    evidence = report["kernel_evidence"]
    lines = [
        f"# CamVid: soft labels against nearest neighbour ({s['model']}, from scratch)",
        "",
        f"{len(s['seeds'])} seed(s) per arm, {', '.join(f'{k}: {v} iterations' for k, v in s['iters'].items())}, "
        f"batch {s['batch_size']}, lr {s['lr']}, crop = the stored size, the paper's augmentation; evaluated on val "
        f"at full resolution (480x360). Total {report['seconds'] / 60:.1f} min.",
        "",
        "## Table I and III: per-class IoU and mIoU (mean over seeds)",
        "",
        _table(report["summary"], arms, s["scales"], report["classes"]),
        "",
        *_table4(report["summary"], s["scales"]),
        "## Verdicts (a difference is real only beyond the seeds' spread)",
        "",
        *[f"- {k}: {v}" for k, v in report["verdicts"].items()],
        "",
        "## Kernels: prior discrepancy (train, sum |D| x1e4) and multi-class share",
        "",
        "| kernel | " + " | ".join(target_label(parse_target(t).name) for t in s["scales"]) + " |",
        "|---|" + "---|" * len(s["scales"]),
    ]
    for kernel in [*KERNELS, "bilinear+aa"]:
        cells = [f"{evidence['sum_abs_d_x1e4'].get(f'{kernel}@{target_label(parse_target(t).name)}', float('nan')):.2f}"
                 for t in s["scales"]]
        lines.append(f"| {kernel} | " + " | ".join(cells) + " |")
    lines += ["", "Multi-class pixel share of the built stores: "
              + ", ".join(f"{k} {100 * v:.1f}%" for k, v in evidence["multi_class_share"].items()), "",
              "## Fig. 8: IoU gain against prior-discrepancy reduction", "", "![fig8](fig8.png)", "",
              "Pearson r: " + ", ".join(f"{k} {v:.2f}" for k, v in report["fig8_pearson_r"].items()), "",
              "## Table V (train split, bilinear store)", "", render(table5, "markdown"), "![table5](table5.png)", ""]
    return "\n".join(lines)


def _table4(summary: dict, scales) -> list[str]:
    """Table IV: mIoU (mean ± std) per colour kernel (rows) and label kind (columns), where run."""
    labels = ["NN", "soft-bilinear", "soft-bicubic"]
    lines = []
    for scale in scales:
        cells = {key: summary.get(f"{arm}@{scale}") for key, arm in TABLE4.items()}
        if sum(v is not None for v in cells.values()) < 3:
            continue
        lines += [f"## Table IV at {target_label(parse_target(scale).name)}: colour kernel x labels (mIoU, mean ± std)", "",
                  "| colour | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for colour in ("bilinear", "bicubic"):
            row = [f"{100 * c['miou_mean']:.1f} ± {100 * c['miou_std']:.1f}" if (c := cells[(colour, label)]) else "-"
                   for label in labels]
            lines.append(f"| {colour} | " + " | ".join(row) + " |")
        lines.append("")
    return lines
