"""The experiment's finding in plain words, derived from ``report.json`` alone.

The README headline, ``docs/experiments/camvid.md``'s status and the report's own "Finding"
section are all this text, so their figures equal the report's to the digit::

    python -m softprep_train.experiment_finding docs/experiments/camvid/report.json \\
        --block README.md docs/experiments/camvid/report.md \\
        --block docs/experiments/camvid.md report.md

replaces the text between ``<!-- finding:begin -->`` and ``<!-- finding:end -->`` in each file,
with the report linked relative to that file.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from softprep.plan import target_name
from softprep.priors import target_label

BEGIN, END = "<!-- finding:begin -->", "<!-- finding:end -->"
#: The paper's reported gain of soft labels over NN at low resolution (its Tables I and III), mIoU points.
PAPER_GAIN = "10-30"
SOFT_VS_HARD = (("nn", "soft"), ("nn-centred", "soft"))
HARD_NAMES = {"nn": "NN", "nn-centred": "NN aligned at pixel centres"}
#: The other comparisons the finding quotes, and how it names them.
OTHERS = ((("nn", "nn-centred"), "aligning NN at pixel centres (nn-centred - nn)"),
          (("soft", "soft-no-mc"), "dropping multi-class pixels (Table III, soft-no-mc - soft)"),
          (("soft", "soft-bilinear"), "the paper's bilinear kernel (soft-bilinear - soft)"))


def points(value: float) -> str:
    """A difference (a fraction) in signed points with two decimals: ``+1.19``."""
    return f"{100 * value:+.2f}"


def ci_text(low: float, high: float) -> str:
    """A CI (fractions) in points: ``[-3.04, +5.43]``."""
    return f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def _describe(c: dict) -> str:
    """``+1.19 mIoU (95% CI [-3.04, +5.43]; bootstrap [-0.97, +3.43]; 4 seeds)``."""
    return (f"{points(c['t']['mean'])} mIoU (95% CI {ci_text(c['t']['low'], c['t']['high'])}; two-level bootstrap "
            f"{ci_text(*c['bootstrap'])}; {c['seeds']} paired seeds)")


def _real(c: dict) -> bool:
    return c["verdict"].startswith("real")


def _by_pair(report: dict) -> dict[tuple[str, str, str], dict]:
    return {(c["a"], c["b"], c["scale"]): c for c in report["primary"]}


def _scales(report: dict) -> list[str]:
    """Scale labels (``1/8``, ``1/4``) in the protocol's order."""
    return [target_label(target_name(s)) for s in report["settings"]["arms"]]


def _outcome(over_nn: dict, over_centred: dict | None) -> str:
    """What soft labels did at one scale against the two hard arms, in words."""
    better = [a for a, c in (("nn", over_nn), ("nn-centred", over_centred)) if c and _real(c) and c["t"]["mean"] > 0]
    worse = [a for a, c in (("nn", over_nn), ("nn-centred", over_centred)) if c and _real(c) and c["t"]["mean"] < 0]
    if better == ["nn", "nn-centred"]:
        return "soft labels beat both NN and NN aligned at pixel centres"
    if better == ["nn"]:
        return "soft labels beat NN but not NN aligned at pixel centres: the gain is alignment, not softness"
    if worse:
        return f"soft labels are worse than {' and '.join(HARD_NAMES[a] for a in worse)}"
    return "soft labels are not distinguishable from NN, nor from NN aligned at pixel centres"


def verdict(report: dict) -> str:
    """One sentence: does soft beat the hard arms, and is any gain alignment rather than softness?"""
    pairs = _by_pair(report)
    outcomes: dict[str, list[str]] = {}  # outcome -> scales, in the protocol's order
    for scale in _scales(report):
        if (over_nn := pairs.get(("nn", "soft", scale))) is not None:
            outcomes.setdefault(_outcome(over_nn, pairs.get(("nn-centred", "soft", scale))), []).append(scale)
    if not outcomes:
        return "No soft-vs-NN comparison has two paired seeds yet."
    text = "; ".join(f"at {' and '.join(scales)} {outcome}" for outcome, scales in outcomes.items())
    if not any(_real(c) and c["t"]["mean"] > 0 for (a, b, _), c in pairs.items() if (a, b) in SOFT_VS_HARD):
        text += f": the paper's {PAPER_GAIN} mIoU gains (its Tables I and III) are not reproduced here"
    return text[0].upper() + text[1:] + "."


def finding(report: dict, link: str | None = None) -> str:
    """The finding as markdown (a verdict, bullets of figures, a table of arm means), every figure from ``report``;
    ``link``: the report's path from the file the text goes into (``None``: the report itself)."""
    s, conv, pairs = report["settings"], report["convergence"], _by_pair(report)
    interim = report["runs_recorded"] < report["runs_planned"]
    schedule = ", ".join(f"{s['epochs'][k]} epochs at {target_label(k)}" for k in s["arms"])
    status = f"Interim ({report['runs_recorded']} of {report['runs_planned']} runs): " if interim else ""
    head = (f"**{status}{s['dataset']}, `{s['model']}` from scratch ({schedule}), arms paired by seed, scored on "
            f"`{s['eval_split']}` at full resolution.** {verdict(report)}")
    parts = [head]
    for scale in _scales(report):
        said = [f"soft - {HARD_NAMES[a]} = {_describe(c)}" for a, b in SOFT_VS_HARD
                if (c := pairs.get((a, b, scale)))]
        if said:
            parts.append(f"At {scale}: " + "; ".join(said) + ".")
    adjusted = [c["holm"]["adjusted_p"] for c in report["primary"]]
    real = [f"{c['name']} ({c['verdict'].removeprefix('real: ')})" for c in report["primary"] if _real(c)]
    if adjusted:
        parts.append(f"Holm-corrected over the {len(adjusted)} mIoU comparisons: "
                     + (f"real: {', '.join(real)}." if real else f"none is real (smallest adjusted p {min(adjusted):.2g})."))
    for scale in _scales(report):
        said = [f"{what}: {points(c['t']['mean'])} mIoU (95% CI {ci_text(c['t']['low'], c['t']['high'])})"
                for (a, b), what in OTHERS if (c := pairs.get((a, b, scale)))]
        if said:
            parts.append(f"Also at {scale}: " + "; ".join(said) + ".")
    if conv:
        parts.append(f"The NN baseline at {target_label(conv['scale'])}: {conv['miou']:.1f} mIoU "
                     f"({'meets' if conv['above_bar'] else 'below'} the protocol's bar of {conv['bar']:.0f}); its last "
                     f"20% of epochs added {conv['gain_last_20pct']:+.2f} points (plateau bar: under 1, "
                     f"{'met' if conv['converged'] else 'NOT met'}); thin classes above {conv['learned_above']:.0f} IoU: "
                     f"{', '.join(conv['thin_learned']) or 'none'} (at least {conv['thin_needed']} needed: "
                     f"{'met' if conv['thin_learned_enough'] else 'NOT met'}).")
    parts.append(f"Compute: {report['cpu_minutes_of_runs']:.0f} CPU-minutes in {report['runs_recorded']} runs "
                 f"({report['machine']}).")
    if link:
        parts.append(f"Report: [{link}]({link}).")
    rows = ["| arm | scale | seeds | mIoU mean ± std |", "|---|---|---|---|"]
    rows += [f"| {e['arm']} | {target_label(e['scale'])} | {e['seeds']} | {100 * e['miou_mean']:.1f} ± "
             f"{100 * e['miou_std']:.1f} |" for e in report["summary"].values()]
    return parts[0] + "\n\n" + "\n".join(f"- {part}" for part in parts[1:]) + "\n\n" + "\n".join(rows)


def replace_block(text: str, block: str, path: str = "file") -> str:
    """``text`` with the part between :data:`BEGIN` and :data:`END` replaced by ``block``."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no {BEGIN} ... {END} block; add one where the finding goes")
    return pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text, count=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the experiment's report.json")
    parser.add_argument("--block", nargs=2, action="append", default=[], metavar=("FILE", "LINK"),
                        help="a markdown file with a finding block, and the report's link from that file")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    for path, link in args.block:
        file = Path(path)
        file.write_text(replace_block(file.read_text(), finding(report, link), path))
        print(f"{path}: finding updated")


if __name__ == "__main__":
    main()
