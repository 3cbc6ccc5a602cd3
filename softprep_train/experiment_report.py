"""The experiment's report: paired statistics, convergence, tables and pictures, from recorded runs.

Writes into the experiment's folder ``report.md``, ``report.json``, ``learning-curves.png`` and
``predictions.png`` (the paper's Fig. 5/6: colour, ground truth and each hard/soft arm's prediction
for the evaluation images with the most thin-class pixels).
"""

from __future__ import annotations

import json
import os
import platform
from functools import partial
from pathlib import Path

import numpy as np

from softprep.plan import target_name
from softprep.priors import render, store_priors, target_label
from softprep.store import open_store
from softprep_train.comparison import Comparison, PairInput, compare_family, iou_from_confusion
from softprep_train.experiment_finding import ci_text, finding
from softprep_train.protocol import ARMS, COLOUR_KERNEL, COMPARISONS, FULL, THIN_CLASSES, Settings, run_name

#: The convergence bar of the protocol: the NN arm's gain over the last 20% of epochs, in mIoU points.
CONVERGED_BELOW = 1.0
#: Thin classes count as learned above this IoU (points), and the baseline must learn this many.
LEARNED_ABOVE = 10.0
THIN_LEARNED_AT_LEAST = 2
#: The NN baseline's mIoU (points) at the first scale below which the comparison says little.
BASELINE_AT_LEAST = 45.0


def _class_iou(confusion: np.ndarray, c: int) -> np.ndarray:
    return iou_from_confusion(confusion)[..., c]


def thin_classes(settings: Settings, classes: list[str], store) -> list[str]:
    """The named thin classes of the dataset, else its 5 rarest classes in the training split."""
    named = [c for c in THIN_CLASSES.get(settings.dataset, ()) if c in classes]
    if named:
        return named
    counts = store.counts(settings.train_split).sum(0)
    return [classes[i] for i in np.argsort(counts, kind="stable")[:5]]


def _arrays(results: list[dict], scale: str, arm: str, seeds: list[int]):
    by_seed = {r["seed"]: r for r in results if r["scale"] == scale and r["arm"] == arm}
    scores = np.array([by_seed[s]["miou"] for s in seeds])
    confusions = np.array([by_seed[s]["per_image_confusion"] for s in seeds], dtype=np.int64)
    return scores, confusions


def comparisons(settings: Settings, results: list[dict], classes: list[str], thin: list[str]):
    """The primary family (mIoU, every comparison at every scale) and the secondary one (thin-class
    IoU, soft against both hard arms), each Holm-corrected."""
    primary, secondary = [], []
    for scale in settings.scales:
        name = target_name(scale)
        arms = settings.arms[scale]
        for a, b in COMPARISONS:
            if a not in arms or b not in arms:
                continue
            seeds = sorted({r["seed"] for r in results if r["scale"] == name and r["arm"] == a}
                           & {r["seed"] for r in results if r["scale"] == name and r["arm"] == b})
            if len(seeds) < 2:  # nothing to pair yet (an interim report)
                continue
            score_a, conf_a = _arrays(results, name, a, seeds)
            score_b, conf_b = _arrays(results, name, b, seeds)
            label = target_label(name)
            primary.append(PairInput(f"{b} - {a} @ {label}", a, b, label, score_a, score_b, conf_a, conf_b))
            if b == "soft" and a in ("nn", "nn-centred"):
                for cls in thin:
                    c = classes.index(cls)
                    secondary.append(PairInput(f"{cls}: {b} - {a} @ {label}", a, b, label,
                                               iou_from_confusion(conf_a.sum(1))[:, c], iou_from_confusion(conf_b.sum(1))[:, c],
                                               conf_a, conf_b, partial(_class_iou, c=c)))
    return (compare_family(primary, replicates=settings.replicates),
            compare_family(secondary, replicates=settings.replicates))


def summarise(settings: Settings, results: list[dict]) -> dict:
    """Per ``arm@scale``: seeds, mIoU mean/std, per-class IoU mean, learning curve mean/min/max."""
    out = {}
    for scale in settings.scales:
        name = target_name(scale)
        for arm in settings.arms[scale]:
            runs = [r for r in results if r["scale"] == name and r["arm"] == arm]
            if not runs:
                continue
            miou = np.array([r["miou"] for r in runs])
            iou = np.array([[np.nan if v is None else v for v in r["iou"]] for r in runs], dtype=float)
            epochs = [e for e, _ in runs[0]["curve"]]
            curves = np.array([[v for _, v in r["curve"]] for r in runs if [e for e, _ in r["curve"]] == epochs])
            with np.errstate(invalid="ignore"):
                iou_mean = np.nanmean(iou, axis=0) if np.isfinite(iou).any(axis=0).all() else np.array(
                    [np.nanmean(col) if np.isfinite(col).any() else np.nan for col in iou.T])
            out[f"{arm}@{name}"] = {
                "arm": arm, "scale": name, "seeds": len(runs), "miou_mean": float(miou.mean()),
                "miou_std": float(miou.std(ddof=1)) if len(runs) > 1 else 0.0,
                "iou_mean": [None if np.isnan(v) else float(v) for v in iou_mean],
                "curve_epochs": epochs, "curve_mean": curves.mean(0).tolist(), "curve_min": curves.min(0).tolist(),
                "curve_max": curves.max(0).tolist(), "minutes_mean": float(np.mean([r["seconds"] for r in runs]) / 60),
                **_last_fifth(epochs, curves.mean(0).tolist()),
            }
    return out


def _last_fifth(epochs: list[int], mean: list[float]) -> dict:
    """The epoch nearest 80% of the run and the mean curve's gain (mIoU points) from there to the end."""
    if len(epochs) < 2:
        return {}
    at_80 = min(range(len(epochs)), key=lambda i: abs(epochs[i] - 0.8 * epochs[-1]))
    return {"epoch_80": epochs[at_80], "gain_last_20pct": 100 * (mean[-1] - mean[at_80])}


def convergence(settings: Settings, summary: dict, classes: list[str], thin: list[str]) -> dict:
    """The NN arm at the first scale: final mIoU, its gain over the last 20% of epochs (from the
    learning curve at 80%), and which thin classes it learned (> 10 IoU)."""
    scale = target_name(settings.scales[0])
    entry = summary.get(f"nn@{scale}")
    if not entry or "gain_last_20pct" not in entry:
        return {}
    gain = entry["gain_last_20pct"]
    learned = [c for c in thin if (v := entry["iou_mean"][classes.index(c)]) is not None and 100 * v > LEARNED_ABOVE]
    return {"scale": scale, "miou": 100 * entry["miou_mean"], "bar": BASELINE_AT_LEAST,
            "above_bar": 100 * entry["miou_mean"] >= BASELINE_AT_LEAST, "epoch_80": entry["epoch_80"],
            "epochs": entry["curve_epochs"][-1],
            "gain_last_20pct": gain, "converged": gain < CONVERGED_BELOW, "learned_above": LEARNED_ABOVE,
            "thin_learned": learned, "thin_needed": THIN_LEARNED_AT_LEAST,
            "thin_learned_enough": len(learned) >= THIN_LEARNED_AT_LEAST}


def write_report(settings: Settings, stores: dict, results: list[dict], seconds: float, command: str = "",
                 planned: int | None = None) -> dict:
    out = Path(settings.out)
    area = open_store(stores[COLOUR_KERNEL])
    classes = area.classes
    thin = thin_classes(settings, classes, area)
    summary = summarise(settings, results)
    primary, secondary = comparisons(settings, results, classes, thin)
    report = {
        "command": command, "machine": machine(), "minutes_this_invocation": seconds / 60,
        "runs_planned": planned if planned is not None else len(results), "runs_recorded": len(results),
        "cpu_minutes_of_runs": sum(r["seconds"] for r in results) / 60,
        "settings": {k: v for k, v in vars(settings).items()}, "classes": classes, "thin_classes": thin,
        "arms": {name: arm.about for name, arm in ARMS.items()},
        "summary": summary, "convergence": convergence(settings, summary, classes, thin),
        "primary": [c.to_json() for c in primary], "secondary": [c.to_json() for c in secondary],
        "runs": [{k: v for k, v in r.items() if k != "per_image_confusion"} for r in results],
    }
    pictures = {"curves": learning_curves(settings, summary, out / "learning-curves.png"),
                "predictions": predictions(settings, stores, classes, thin, out / "predictions.png")}
    report["pictures"] = {k: v.name for k, v in pictures.items() if v}
    priors = priors_tables(settings, stores)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "report.md").write_text(markdown(report, primary, secondary, priors))
    return report


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, tuple)):
        return str(value)
    raise TypeError(type(value).__name__)


def machine() -> str:
    import torch

    cpu = " ".join(filter(None, (platform.machine(), platform.processor())))
    return f"{cpu}, {os.cpu_count()} CPU cores, no GPU used, Python {platform.python_version()}, torch {torch.__version__}"


def priors_tables(settings: Settings, stores: dict) -> str:
    """Table V: the prior discrepancy of the training split for NN and each soft-label kernel."""
    parts = []
    for kernel, path in sorted(stores.items()):
        table = store_priors(open_store(path), settings.train_split)
        parts.append(render(table, "markdown"))
    return "\n\n".join(parts)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


ARM_COLOURS = {"nn": "#d62728", "nn-centred": "#ff7f0e", "soft": "#1f77b4", "soft-no-mc": "#9467bd",
               "soft-bilinear": "#2ca02c"}


def learning_curves(settings: Settings, summary: dict, path: Path) -> Path | None:
    """Evaluation mIoU against epoch per arm: mean over seeds, band from min to max; one panel per scale."""
    plt = _pyplot()
    if plt is None:
        return None
    scales = [target_name(s) for s in settings.scales]
    fig, axes = plt.subplots(1, len(scales), figsize=(6.5 * len(scales), 4.6), squeeze=False)
    for ax, scale in zip(axes[0], scales):
        for arm in ARMS:
            entry = summary.get(f"{arm}@{scale}")
            if not entry:
                continue
            epochs = entry["curve_epochs"]
            colour = ARM_COLOURS.get(arm)
            ax.plot(epochs, 100 * np.array(entry["curve_mean"]), color=colour, marker="o", markersize=3,
                    label=f"{arm} ({entry['seeds']} seeds): {100 * entry['miou_mean']:.1f}")
            ax.fill_between(epochs, 100 * np.array(entry["curve_min"]), 100 * np.array(entry["curve_max"]),
                            color=colour, alpha=0.15, linewidth=0)
        ax.set_title(f"{settings.dataset} {settings.eval_split}, trained at {target_label(scale)} "
                     "(full-resolution mIoU)", fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mIoU (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def predictions(settings: Settings, stores: dict, classes: list[str], thin: list[str], path: Path) -> Path | None:
    """The paper's Fig. 5/6: for the 3 evaluation images with the most thin-class pixels, colour,
    ground truth, and the seed-0 prediction of each hard and soft arm at the first scale."""
    import torch

    from softprep.show import colourise
    from softprep_train.evaluate import load_checkpoint
    from softprep_train.predict import predict_image

    plt = _pyplot()
    scale = target_name(settings.scales[0])
    arms = [a for a in ("nn", "nn-centred", "soft") if a in settings.arms[settings.scales[0]]]
    seed = settings.seeds[settings.scales[0]][0]
    checkpoints = {a: Path(settings.out) / "runs" / run_name(settings.scales[0], a, seed) / "last.pt" for a in arms}
    if plt is None or not all(p.is_file() for p in checkpoints.values()):
        return path if path.is_file() else None  # checkpoints stay local: keep the figure drawn where they were
    store = open_store(stores[COLOUR_KERNEL])
    palette = np.array(store.spec.palette, dtype=np.uint8)
    full = store.samples(settings.eval_split, FULL)
    thin_ids = np.array([classes.index(c) for c in thin])
    thin_pixels = [int(np.isin(full[i].nn(), thin_ids).sum()) for i in range(len(full))]
    chosen: list[int] = []  # the most thin-class pixels, from different sequences (frames >= 10 apart)
    for i in np.argsort(thin_pixels, kind="stable")[::-1]:
        if len(chosen) < 3 and all(abs(int(i) - j) >= 10 for j in chosen):
            chosen.append(int(i))
    models = {a: load_checkpoint(p, torch.device("cpu")) for a, p in checkpoints.items()}  # (model, state)
    columns = ["colour", "ground truth", *[f"{a} prediction" for a in arms]]
    fig, axes = plt.subplots(len(chosen), len(columns), figsize=(3.2 * len(columns), 2.5 * len(chosen) + 0.8), squeeze=False)

    for row, i in enumerate(chosen):
        image, label = full[i].image, full[i].nn()
        panels = [image, colourise(label, palette)]
        with torch.no_grad():  # what `softprep-train predict` draws: resized with the colour kernel, logits upsampled
            panels += [colourise(predict_image(*models[arm], image), palette) for arm in arms]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=11)
        axes[row][0].set_ylabel(full.ids[i], fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[c] / 255) for c in range(len(classes))]
    fig.legend(handles, classes, loc="lower center", ncol=min(len(classes), 11), fontsize=9, frameon=False)
    fig.suptitle(f"Trained at {target_label(scale)} (seed {seed}), predicted at {target_label(scale)} and upsampled "
                 f"to full resolution; thin classes: {', '.join(thin)}", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _comparison_rows(family: list[Comparison]) -> list[str]:
    lines = ["| comparison | seeds | mean paired diff | 95% CI (t) | 95% CI (bootstrap: seeds, images) | Holm p | "
             "corrected CI (t) | corrected CI (bootstrap) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for c in family:
        lines.append(f"| {c.name} | {c.seeds} | {100 * c.t.mean:+.2f} | {ci_text(c.t.low, c.t.high)} | {ci_text(*c.bootstrap)} | "
                     f"{c.holm.adjusted_p:.3g} | {ci_text(c.t_corrected.low, c.t_corrected.high)} ({100 * c.holm.level:.2f}%) | "
                     f"{ci_text(*c.bootstrap_corrected)} | {c.verdict} |")
    return lines


def _iou_table(report: dict) -> list[str]:
    classes = report["classes"]
    lines = ["| arm | scale | seeds | " + " | ".join(classes) + " | mIoU (mean ± std) | last 20% of epochs |",
             "|---|---|---|" + "---|" * (len(classes) + 2)]
    for entry in report["summary"].values():
        cells = ["-" if v is None else f"{100 * v:.1f}" for v in entry["iou_mean"]]
        gain = f"{entry['gain_last_20pct']:+.2f}" if "gain_last_20pct" in entry else "-"
        lines.append(f"| {entry['arm']} | {target_label(entry['scale'])} | {entry['seeds']} | " + " | ".join(cells)
                     + f" | {100 * entry['miou_mean']:.1f} ± {100 * entry['miou_std']:.1f} | {gain} |")
    return lines


def markdown(report: dict, primary: list[Comparison], secondary: list[Comparison], priors: str) -> str:
    s = report["settings"]
    conv = report["convergence"]
    schedule = ", ".join(f"{target_label(target_name(k))}: {v} epochs, seeds {', '.join(map(str, s['seeds'][k]))}, "
                         f"arms {', '.join(s['arms'][k])}" for k, v in s["epochs"].items() if k in s["arms"])
    interim = report["runs_recorded"] < report["runs_planned"]
    lines = [
        f"# {s['dataset']}: soft labels against nearest neighbour ({s['model']}, from scratch, paired seeds)",
        "",
        *([f"**Interim report: {report['runs_recorded']} of {report['runs_planned']} runs recorded.** Rerun the same "
           "command to train the rest (recorded runs are kept); every figure below covers the recorded runs only.", ""]
          if interim else []),
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}.  ",
        f"Compute: {report['cpu_minutes_of_runs']:.0f} CPU-minutes of training and evaluation in "
        f"{len(report['runs'])} runs, {s['jobs']} at a time; this invocation spent "
        f"{report['minutes_this_invocation']:.1f} minutes of wall time on stores and training, before this report (runs "
        "recorded by earlier invocations are reused).",
        "",
        f"Protocol: {schedule}; batch {s['batch_size']}, {s['optimizer']} lr {s['lr']} with poly decay, weight decay "
        f"{s['weight_decay']}; the paper's augmentation (resize U(0.5, 2), crop the stored size, flip), drawn "
        "identically for every arm of a seed (same initial weights, batches and draws). Every arm reads colour "
        f"resampled with `{COLOUR_KERNEL}` (identical images, checked byte for byte); each scale's stores also hold "
        f"twice that scale, so no training sample is enlarged. Scored on `{s['eval_split']}` at full resolution "
        "(logits upsampled bilinearly to the original label size).",
        "",
        "Arms: " + "; ".join(f"`{a}`: {report['arms'][a]}" for a in sorted({x for v in s["arms"].values() for x in v},
                                                                           key=list(report["arms"]).index)) + ".",
        "",
        "## Finding",
        "",
        finding(report),
        "",
        "## Primary endpoint: mIoU, paired by seed (differences in mIoU points)",
        "",
        "One family, Holm-corrected; a difference is called real only when Holm's adjusted p < 0.05 and the "
        "corrected CIs (t over seeds, and the two-level bootstrap over seeds then evaluation images) both exclude 0.",
        "",
        *_comparison_rows(primary),
        "",
        "## Convergence of the NN baseline",
        "",
    ]
    if conv:
        lines += [f"`nn` at {target_label(conv['scale'])}: {conv['miou']:.1f} mIoU after {conv['epochs']} epochs; the last "
                  f"20% of epochs (from epoch {conv['epoch_80']}) added {conv['gain_last_20pct']:+.2f} points "
                  f"({'converged: below' if conv['converged'] else 'NOT converged: at or above'} {CONVERGED_BELOW:.0f}). "
                  f"Thin classes above {LEARNED_ABOVE:.0f} IoU: {', '.join(conv['thin_learned']) or 'none'}.", "",
                  "The protocol's bars for a baseline that has learned: "
                  f"NN >= {conv['bar']:.0f} mIoU ({'met' if conv['above_bar'] else 'NOT met'}), "
                  f"last 20% of epochs < {CONVERGED_BELOW:.0f} point ({'met' if conv['converged'] else 'NOT met'}), "
                  f"at least {THIN_LEARNED_AT_LEAST} thin classes above {LEARNED_ABOVE:.0f} IoU "
                  f"({'met' if conv['thin_learned_enough'] else 'NOT met'}).", ""]
    else:
        lines += ["Not judged: the run has no learning curve (a run by iterations, e.g. --quick).", ""]
    lines += ["## Per-class IoU and mIoU (mean over seeds)", "",
              "The last column: mean mIoU gained over the last 20% of epochs (points; below 1: converged).", "",
              *_iou_table(report), "",
              "## Secondary endpoints: thin-class IoU, soft against the hard arms", "",
              "A second Holm family over these comparisons; same columns (IoU points).", "",
              *_comparison_rows(secondary), ""]
    if report["pictures"].get("curves"):
        lines += ["## Learning curves", "", "Mean over seeds; the band spans the lowest and highest seed.", "",
                  f"![learning curves]({report['pictures']['curves']})", ""]
    if report["pictures"].get("predictions"):
        lines += ["## Predictions (the paper's Fig. 5/6)", "",
                  "The evaluation images with the most thin-class pixels; seed 0 of each arm.", "",
                  f"![predictions]({report['pictures']['predictions']})", ""]
    lines += ["## Prior discrepancy of the training split (Table V)", "", priors, ""]
    return "\n".join(lines)


__all__ = ["write_report"]
