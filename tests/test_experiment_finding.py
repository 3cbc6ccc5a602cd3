"""The experiment's finding: its verdict rules on hand-made reports, and the README / camvid.md
text equal to what the committed report says (figures to the digit)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from softprep_train.experiment_finding import BEGIN, END, finding, front_page, replace_block, verdict

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "experiments" / "camvid" / "report.json"
TEST_REPORT = ROOT / "docs" / "experiments" / "camvid-test" / "report.json"


def _comparison(a: str, b: str, mean: float, real: bool, scale: str = "1/8") -> dict:
    return {"name": f"{b} - {a} @ {scale}", "a": a, "b": b, "scale": scale, "seeds": 5,
            "t": {"mean": mean, "low": mean - 0.01, "high": mean + 0.01}, "bootstrap": [mean - 0.005, mean + 0.005],
            "holm": {"adjusted_p": 0.01 if real else 0.5},
            "verdict": f"real: {b} {'better' if mean > 0 else 'worse'} than {a}" if real else "not distinguishable from 0"}


def _report(*comparisons: dict) -> dict:
    return {"settings": {"arms": {"0.125": ["nn", "nn-centred", "soft"]}, "epochs": {"0.125": 60}, "dataset": "camvid",
                         "model": "unet_small", "eval_split": "val"},
            "runs_recorded": 15, "runs_planned": 15, "cpu_minutes_of_runs": 123.4,
            "machine": "x86_64, 2 CPU cores, no GPU used", "convergence": {}, "summary": {}, "primary": list(comparisons)}


def test_a_gain_over_nn_that_aligned_nn_also_has_is_called_alignment():
    report = _report(_comparison("nn", "soft", 0.03, True), _comparison("nn-centred", "soft", 0.004, False))
    assert verdict(report) == ("At 1/8 soft labels beat NN, and are not distinguishable from NN aligned at pixel centres: "
                               "the gain is alignment, not softness.")


def test_a_gain_over_both_hard_arms_is_reported_as_such():
    report = _report(_comparison("nn", "soft", 0.05, True), _comparison("nn-centred", "soft", 0.03, True))
    assert verdict(report) == "At 1/8 soft labels beat both NN and NN aligned at pixel centres."
    assert ("Holm-corrected over the 2 mIoU comparisons: real: soft - nn @ 1/8 (soft better than nn), "
            "soft - nn-centred @ 1/8 (soft better than nn-centred).") in finding(report)


def test_no_detectable_difference_says_the_paper_is_not_reproduced():
    report = _report(_comparison("nn", "soft", 0.008, False), _comparison("nn-centred", "soft", -0.001, False))
    assert verdict(report) == ("At 1/8 soft labels are not distinguishable from NN, nor from NN aligned at pixel centres: "
                               "the paper's 10-30 mIoU gains (its Tables I and III) are not reproduced here.")
    text = finding(report, "camvid/report.md")
    assert "soft - NN = +0.80 mIoU (95% CI [-0.20, +1.80]; two-level bootstrap [+0.30, +1.30]; 5 paired seeds)" in text
    assert "Compute: 123 CPU-minutes in 15 runs (x86_64, 2 CPU cores, no GPU used)." in text
    assert "none is real (smallest adjusted p 0.5)" in text and text.count("Report: [camvid/report.md]") == 1


def test_a_real_loss_is_reported_as_worse():
    report = _report(_comparison("nn", "soft", -0.02, True), _comparison("nn-centred", "soft", -0.04, True))
    assert verdict(report).startswith("At 1/8 soft labels are worse than both NN and NN aligned at pixel centres")


def test_an_interval_that_excludes_zero_is_never_called_no_difference():
    """Issue 26.4: a gain whose 95% CI excludes 0 but which Holm's correction does not call real is said
    to hold only before the correction, with its interval and adjusted p, in the verdict and the front page."""
    report = _report(_comparison("nn", "soft", 0.03, False), _comparison("nn-centred", "soft", -0.004, False),
                     _comparison("nn", "nn-centred", 0.032, True))
    assert verdict(report).startswith("At 1/8 soft labels beat NN only before correction (+3.00 mIoU, 95% CI [+2.00, "
                                      "+4.00] excludes 0; Holm-adjusted p 0.500), and are not distinguishable from NN "
                                      "aligned at pixel centres: the gain is alignment, not softness")
    page = front_page({"val": report, "test": report}, {"val": "v.md", "test": "t.md"})
    assert ("- Soft labels beat torch `nearest` labels only before correction. Area soft labels against torch `nearest` "
            "hard labels, what most pipelines use: val +3.00 mIoU (95% CI [+2.00, +4.00]; Holm-adjusted p 0.500: the CI "
            "excludes 0, but not after the correction); test +3.00") in page
    assert "- **Align your hard labels**. Hard labels sampled at pixel centres" in page
    assert "- **Soft labels add nothing measurable beyond aligned hard labels**. " in page
    assert "Reports: [val](v.md), [test](t.md)." in page


def test_replace_block_keeps_the_rest_and_refuses_a_file_without_markers():
    text = f"head\n{BEGIN}\nold\n{END}\ntail\n"
    assert replace_block(text, "new") == f"head\n{BEGIN}\nnew\n{END}\ntail\n"
    with pytest.raises(SystemExit, match="README.md: no"):
        replace_block("no markers", "new", "README.md")


def _block(doc: str) -> str:
    return re.search(re.escape(BEGIN) + r"\n(.*)\n" + re.escape(END), (ROOT / doc).read_text(), re.S).group(1)


def test_the_published_finding_is_the_committed_reports():
    """camvid.md's status is the val report's finding; the README's front page is generated from the
    val report and, once it is committed, the test split's report of the same protocol: not typed."""
    report = json.loads(REPORT.read_text())
    assert _block("docs/experiments/camvid.md") == finding(report, "camvid/report.md")
    reports, links = {"val": report}, {"val": "docs/experiments/camvid/report.md"}
    if TEST_REPORT.is_file():
        reports["test"], links["test"] = json.loads(TEST_REPORT.read_text()), "docs/experiments/camvid-test/report.md"
    assert _block("README.md") == front_page(reports, links)
    assert all((ROOT / link).is_file() for link in links.values())


def test_scales_with_the_same_outcome_share_one_clause():
    report = _report(_comparison("nn", "soft", 0.01, False), _comparison("nn-centred", "soft", 0.0, False),
                     _comparison("nn", "soft", 0.03, True, "1/4"), _comparison("nn-centred", "soft", 0.0, False, "1/4"),
                     _comparison("nn", "soft", 0.01, False, "1/2"), _comparison("nn-centred", "soft", 0.0, False, "1/2"))
    report["settings"]["arms"] = {"0.125": ["nn", "nn-centred", "soft"], "0.25": ["nn", "nn-centred", "soft"],
                                  "0.5": ["nn", "nn-centred", "soft"]}
    assert verdict(report) == ("At 1/8 and 1/2 soft labels are not distinguishable from NN, nor from NN aligned at pixel "
                               "centres; at 1/4 soft labels beat NN, and are not distinguishable from NN aligned at pixel "
                               "centres: the gain is alignment, not softness.")
