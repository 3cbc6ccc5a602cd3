"""The experiment's finding in plain words, derived from ``report.json`` alone.

``docs/experiments/camvid.md``'s status and the report's own "Finding" section are :func:`finding`;
the README's headline is :func:`front_page`, from the reports of every evaluation split (val, then
test); their figures equal the reports' to the digit::

    python -m softprep_train.experiment_finding docs/experiments/camvid/report.json \\
        --block docs/experiments/camvid.md camvid/report.md \\
        --front README.md docs/experiments/camvid/report.md \\
        --also test docs/experiments/camvid-test/report.json docs/experiments/camvid-test/report.md

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


def _excludes_zero(c: dict) -> bool:
    """The uncorrected 95% t interval lies on one side of 0."""
    return c["t"]["low"] > 0 or c["t"]["high"] < 0


def _relation(c: dict, other: str) -> str:
    """How soft labels relate to ``other`` in one comparison, naming the correction when it decides."""
    if _real(c):
        return f"beat {other}" if c["t"]["mean"] > 0 else f"are worse than {other}"
    if _excludes_zero(c):
        direction = "beat" if c["t"]["mean"] > 0 else "fall behind"
        return (f"{direction} {other} only before correction ({points(c['t']['mean'])} mIoU, 95% CI "
                f"{ci_text(c['t']['low'], c['t']['high'])} excludes 0; Holm-adjusted p {c['holm']['adjusted_p']:.3f})")
    return f"are not distinguishable from {other}"


def _outcome(over_nn: dict, over_centred: dict | None) -> str:
    """What soft labels did at one scale against the two hard arms, in words."""
    pair = [c for c in (over_nn, over_centred) if c is not None]
    if len(pair) == 2 and not any(_excludes_zero(c) for c in pair):
        return "soft labels are not distinguishable from NN, nor from NN aligned at pixel centres"
    if len(pair) == 2 and all(_real(c) for c in pair) and len({c["t"]["mean"] > 0 for c in pair}) == 1:
        verb = "beat both" if over_nn["t"]["mean"] > 0 else "are worse than both"
        return f"soft labels {verb} NN and NN aligned at pixel centres"
    text = "soft labels " + _relation(over_nn, HARD_NAMES["nn"])
    if over_centred is not None:
        text += ", and " + _relation(over_centred, HARD_NAMES["nn-centred"])
        if over_nn["t"]["mean"] > 0 and _excludes_zero(over_nn) and not _excludes_zero(over_centred):
            text += ": the gain is alignment, not softness"
    return text


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


#: The front page's claims, in its order: the comparison (b - a), what it compares, and its headline
#: by the first split's verdict: a real gain, a real loss, a CI that excludes 0 only before the
#: correction, or no difference.
CLAIMS = (
    (("nn", "nn-centred"), "hard labels sampled at pixel centres (`nearest-exact`) against torch `nearest`",
     ("**Align your hard labels**", "**Aligned hard labels are worse**", "Aligned hard labels differ only before correction",
      "Aligning hard labels makes no measurable difference")),
    (("nn-centred", "soft"), "area soft labels against hard labels sampled at pixel centres",
     ("**Soft labels beat aligned hard labels**", "**Soft labels are worse than aligned hard labels**",
      "Soft labels differ from aligned hard labels only before correction",
      "**Soft labels add nothing measurable beyond aligned hard labels**")),
    (("nn", "soft"), "area soft labels against torch `nearest` hard labels, what most pipelines use",
     ("**Soft labels beat torch `nearest` labels**", "Soft labels are worse than torch `nearest` labels",
      "Soft labels beat torch `nearest` labels only before correction",
      "Soft labels are not distinguishable from torch `nearest` labels")),
    (("soft", "soft-no-mc"), "training on single-class pixels only (the paper's Table III) against all soft labels",
     ("Single-class pixels alone train better", "**Multi-class pixels carry information**",
      "Dropping multi-class pixels differs only before correction", "Dropping multi-class pixels makes no measurable difference")),
)


def _headline(c: dict, texts: tuple[str, str, str, str]) -> str:
    gain, loss, uncorrected, neither = texts
    if _real(c):
        return gain if c["t"]["mean"] > 0 else loss
    return uncorrected if _excludes_zero(c) else neither


def _claim_figures(c: dict) -> str:
    """``+3.24 mIoU (95% CI [+2.26, +4.22]; Holm-adjusted p 0.006: real)``."""
    if _real(c):
        status = "real"
    elif _excludes_zero(c):
        status = "the CI excludes 0, but not after the correction"
    else:
        status = "not distinguishable from 0"
    return (f"{points(c['t']['mean'])} mIoU (95% CI {ci_text(c['t']['low'], c['t']['high'])}; Holm-adjusted p "
            f"{c['holm']['adjusted_p']:.3f}: {status})")


def front_page(reports: dict[str, dict], links: dict[str, str]) -> str:
    """The README's headline in plain words, from one report per evaluation split (``{"val": ..., "test": ...}``)
    at the first scale of the first report's protocol; every figure from the reports."""
    first = next(iter(reports.values()))
    s = first["settings"]
    scale = _scales(first)[0]
    described = []
    for split, report in reports.items():
        families = len(report["primary"])
        described.append(f"`{split}` ({report['runs_recorded']} runs, Holm's correction over its {families} comparisons)")
    lines = [f"**What the {s['dataset']} experiment shows** at {scale} (`{s['model']}` trained from scratch, arms paired by "
             f"seed, scored at full resolution on " + " and ".join(described) + "; a comparison is *real* when it "
             "survives the correction):", ""]
    for (a, b), what, texts in CLAIMS:
        by_split = {split: _by_pair(r).get((a, b, scale)) for split, r in reports.items()}
        lead = by_split[next(iter(reports))]
        if lead is None:
            continue
        figures = "; ".join(f"{split} {_claim_figures(c)}" for split, c in by_split.items() if c is not None)
        lines.append(f"- {_headline(lead, texts)}. {what[0].upper() + what[1:]}: {figures}.")
    lines.append("- Area soft labels keep every class prior exactly (`softprep priors`: D = 0); "
                 "`softprep audit` measures how far your own pipeline's labels drift from its images "
                 "([docs/audit.md](docs/audit.md)).")
    if not any(_real(c) and c["t"]["mean"] > 0 for r in reports.values()
               for (a, b, _), c in _by_pair(r).items() if (a, b) in SOFT_VS_HARD):
        lines.append(f"- The paper's {PAPER_GAIN} mIoU gains of soft labels (its Tables I and III) are not reproduced here.")
    lines.append("")
    lines.append("Reports: " + ", ".join(f"[{split}]({links[split]})" for split in reports) + ".")
    return "\n".join(lines)


def replace_block(text: str, block: str, path: str = "file") -> str:
    """``text`` with the part between :data:`BEGIN` and :data:`END` replaced by ``block``."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no {BEGIN} ... {END} block; add one where the finding goes")
    return pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text, count=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the experiment's report.json (its evaluation split leads the front page)")
    parser.add_argument("--block", nargs=2, action="append", default=[], metavar=("FILE", "LINK"),
                        help="a markdown file with a finding block, and the report's link from that file")
    parser.add_argument("--front", nargs=2, metavar=("FILE", "LINK"),
                        help="a file whose finding block gets the plain-words front page, and the report's link from it")
    parser.add_argument("--also", nargs=3, action="append", default=[], metavar=("SPLIT", "REPORT", "LINK"),
                        help="with --front: another evaluation split's report of the same protocol (e.g. test)")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    for path, link in args.block:
        file = Path(path)
        file.write_text(replace_block(file.read_text(), finding(report, link), path))
        print(f"{path}: finding updated")
    if args.front:
        path, link = args.front
        reports = {report["settings"]["eval_split"]: report}
        links = {report["settings"]["eval_split"]: link}
        for split, other, other_link in args.also:
            reports[split], links[split] = json.loads(Path(other).read_text()), other_link
        Path(path).write_text(replace_block(Path(path).read_text(), front_page(reports, links), path))
        print(f"{path}: front page updated")


if __name__ == "__main__":
    main()
