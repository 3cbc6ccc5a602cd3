"""The paper's Fig. 8 from a finished experiment: does a class gain where hard labels drift its prior?

For each class ``c`` at one scale: the prior drift ``|D_c|`` of a hard rule (torch ``nearest`` for the
``nn`` arm, ``nearest-exact`` for ``nn-centred``; exact, from the training split's labels, as
``softprep priors --compare-kernels`` computes it; the area soft labels' ``D`` is exactly 0) against
the class's IoU difference ``IoU(soft) - IoU(arm)`` (means over the paired seeds, from the report's
recorded runs), with Pearson's and Spearman's correlations. No training: it reads ``report.json``.

    python -m softprep_train.drift --report docs/experiments/camvid/report.json \\
        --root ../shared/datasets/camvid --out docs/experiments/camvid-drift
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from softprep.datasets import get_dataset
from softprep.priors import compare_kernels, target_label

#: Hard arm -> the rule its labels follow (the store's NN rows of ``softprep priors``).
RULE_OF_ARM = {"nn": "nearest", "nn-centred": "nearest-exact"}


def class_iou(report: dict, arm: str, scale: str) -> np.ndarray:
    """``(C,)`` mean per-class IoU of ``arm``'s recorded runs at ``scale`` (NaN where a class was never scored)."""
    runs = [run["iou"] for run in report["runs"] if run["arm"] == arm and run["scale"] == scale]
    if not runs:
        raise SystemExit(f"no recorded runs of arm {arm!r} at {scale} in the report")
    return np.nanmean(np.array([[np.nan if v is None else v for v in iou] for iou in runs], dtype=float), axis=0)


def drift_table(report: dict, root: str | Path, scale: str, jobs: int | None = None) -> dict:
    """Per class: ``|D|`` of each hard rule (x1e4) and ``IoU(soft) - IoU(arm)`` (points) at ``scale``,
    with each arm's correlations."""
    settings = report["settings"]
    dataset = get_dataset(settings.get("dataset", "camvid"), root)
    table = compare_kernels(dataset, ["nearest", "nearest-exact", "area"], [scale], settings.get("train_split", "train"),
                            jobs=jobs)
    discrepancy = {row.strategy: np.abs(np.array([float(d) for d in row.discrepancy])) for row in table.rows}
    soft = class_iou(report, "soft", scale)
    out = {"scale": scale, "classes": report["classes"], "area_sum_abs_d": float(discrepancy["area"].sum()), "arms": {}}
    for arm, rule in RULE_OF_ARM.items():
        gain = 100 * (soft - class_iou(report, arm, scale))
        d = 1e4 * discrepancy[rule]
        keep = np.isfinite(gain)
        out["arms"][arm] = {"rule": rule, "abs_d_x1e4": d.tolist(), "iou_gain_points": gain.tolist(),
                            "pearson": _pearson(d[keep], gain[keep]), "spearman": _spearman(d[keep], gain[keep])}
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def plot(result: dict, path: Path) -> Path:
    from softprep.plot import _pyplot

    plt = _pyplot()
    arms = list(result["arms"])
    fig, axes = plt.subplots(1, len(arms), figsize=(6.2 * len(arms), 4.8), sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], arms):
        entry = result["arms"][arm]
        x, y = np.array(entry["abs_d_x1e4"]), np.array(entry["iou_gain_points"])
        ax.scatter(x, y, color="C0" if arm == "nn" else "C2")
        for name, xi, yi in zip(result["classes"], x, y):
            ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=8)
        ax.set_xscale("symlog", linthresh=1)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel(f"|D| x1e4 of {entry['rule']} labels (area soft labels: exactly 0)")
        ax.set_title(f"soft vs {arm}: Pearson r {entry['pearson']:+.2f}, Spearman {entry['spearman']:+.2f}")
    axes[0, 0].set_ylabel("IoU(soft) - IoU(hard arm), points")
    fig.suptitle(f"Per-class prior drift against per-class IoU gain of soft labels at {target_label(result['scale'])} "
                 "(the paper's Fig. 8)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(result: dict, report_path: str) -> str:
    lines = [f"# Prior drift against accuracy per class (the paper's Fig. 8), CamVid at {target_label(result['scale'])}", "",
             f"From `{report_path}` (no new training): per class, the exact prior drift |D| of each hard arm's labels on "
             "the training split (x1e4, as Table V; the area soft labels' D is exactly 0) and the IoU gain of the "
             "`soft` arm over that arm (points, means over the paired seeds, scored on the report's evaluation split). "
             "Regenerate with `python -m softprep_train.drift --report ... --root ... --out ...`.", "",
             "![Fig. 8](fig8.png)", "",
             "| class | \\|D\\| nearest | IoU soft - nn | \\|D\\| nearest-exact | IoU soft - nn-centred |", "|---|---|---|---|---|"]
    nn, centred = result["arms"]["nn"], result["arms"]["nn-centred"]
    for i, name in enumerate(result["classes"]):
        lines.append(f"| {name} | {nn['abs_d_x1e4'][i]:.2f} | {nn['iou_gain_points'][i]:+.2f} | "
                     f"{centred['abs_d_x1e4'][i]:.2f} | {centred['iou_gain_points'][i]:+.2f} |")
    lines += ["", f"Correlation of |D| with the gain over `nn` (torch nearest): Pearson r = {nn['pearson']:+.2f}, "
              f"Spearman rho = {nn['spearman']:+.2f}; over `nn-centred` (nearest-exact): Pearson r = "
              f"{centred['pearson']:+.2f}, Spearman rho = {centred['spearman']:+.2f} ({len(result['classes'])} classes: "
              "a correlation over so few points is a description, not a test).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, required=True, help="An experiment's report.json.")
    parser.add_argument("--root", type=Path, required=True, help="The dataset root the experiment trained on.")
    parser.add_argument("--out", type=Path, required=True, help="Folder for fig8.png, fig8.md and fig8.json.")
    parser.add_argument("--scale", default="0.125")
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args()
    result = drift_table(json.loads(args.report.read_text()), args.root, args.scale, args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fig8.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "fig8.png")
    (args.out / "fig8.md").write_text(markdown(result, str(args.report)))
    print(f"wrote {args.out / 'fig8.md'}, fig8.png, fig8.json")


if __name__ == "__main__":
    main()
