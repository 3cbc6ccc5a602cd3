"""The committed Fig. 8 (docs/experiments/camvid-drift) is the committed CamVid report's: per class,
the IoU gains are the report's per-seed IoUs averaged by hand, and |D| is what `softprep priors
--compare-kernels` computes on the training labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from softprep_train.drift import drift_table

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"
REPORT = ROOT / "docs" / "experiments" / "camvid" / "report.json"
COMMITTED = ROOT / "docs" / "experiments" / "camvid-drift" / "fig8.json"


def test_the_committed_figure_is_the_committed_reports():
    if not CAMVID.is_dir():
        pytest.skip(f"CamVid not found at {CAMVID}")
    report = json.loads(REPORT.read_text())
    result = drift_table(report, CAMVID, "0.125", jobs=1)
    committed = json.loads(COMMITTED.read_text())
    for arm in ("nn", "nn-centred"):
        np.testing.assert_allclose(result["arms"][arm]["abs_d_x1e4"], committed["arms"][arm]["abs_d_x1e4"], rtol=1e-9)
        np.testing.assert_allclose(result["arms"][arm]["iou_gain_points"], committed["arms"][arm]["iou_gain_points"])
        # by hand: mean over the paired seeds of soft's IoU minus the arm's, class by class
        mean = lambda name: np.mean([r["iou"] for r in report["runs"] if r["arm"] == name and r["scale"] == "0.125"], axis=0)
        np.testing.assert_allclose(result["arms"][arm]["iou_gain_points"], 100 * (mean("soft") - mean(arm)), atol=1e-9)
        x, y = np.array(result["arms"][arm]["abs_d_x1e4"]), np.array(result["arms"][arm]["iou_gain_points"])
        assert result["arms"][arm]["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert result["area_sum_abs_d"] == 0
