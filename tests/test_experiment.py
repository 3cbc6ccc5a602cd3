"""`softprep-train experiment --quick` on the real CamVid (skipped when absent): the report's
structure and finite numbers, not the outcome."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"


def test_quick_experiment_writes_a_complete_report(tmp_path):
    if not CAMVID.is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (it lives in ../shared/datasets beside the repo)")
    out = tmp_path / "exp"
    result = subprocess.run([sys.executable, "-m", "softprep_train.cli", "experiment", "--root", str(CAMVID),
                             "--out", str(out), "--quick"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert len(report["classes"]) == 11 and report["classes"][0] == "sky"
    assert {r["arm"] for r in report["results"]} == {"nn", "soft", "soft-no-mc", "soft-area"}
    for run in report["results"]:
        assert 0 <= run["miou"] <= 1 and math.isfinite(run["final_loss"])
        assert (out / "runs" / f"{run['arm']}-0.125-s{run['seed']}" / "eval-val.json").is_file()
    assert set(report["summary"]) == {"nn@0.125", "soft@0.125", "soft-no-mc@0.125", "soft-area@0.125"}
    assert report["kernel_evidence"]["sum_abs_d_x1e4"]["area@1/8"] == 0
    assert report["kernel_evidence"]["sum_abs_d_x1e4"]["nearest@1/8"] > 0
    assert len(report["table5"]["nearest@1/8"]) == 11
    markdown = (out / "report.md").read_text()
    for heading in ("## Table I and III", "## Verdicts", "## Kernels", "## Fig. 8", "## Table V"):
        assert heading in markdown
    assert (out / "fig8.png").stat().st_size > 1000 and (out / "table5.png").stat().st_size > 1000
