"""`softprep-train experiment --quick` on the real CamVid (skipped when absent): the report's
structure, each run's recorded checkpoint, command and result, and resumption; not the outcome
(the statistics themselves are checked on synthetic inputs in test_comparison.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"
ARMS = {"nn", "nn-centred", "soft", "soft-no-mc", "soft-bilinear"}


def _quick(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprep_train.cli", "experiment", "--root", str(CAMVID),
                           "--out", str(out), "--quick"], capture_output=True, text=True)


def test_quick_experiment_writes_a_complete_report_and_resumes(tmp_path):
    if not CAMVID.is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (it lives in ../shared/datasets beside the repo)")
    out = tmp_path / "exp"
    result = _quick(out)
    assert result.returncode == 0, result.stderr
    assert "runs: 10 planned, 0 already recorded, 10 to train" in result.stderr
    assert "report: statistics and pictures" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert len(report["classes"]) == 11 and report["classes"][0] == "sky"
    assert report["thin_classes"] == ["pole", "sign symbol", "fence", "pedestrian", "bicyclist"]
    assert {(r["arm"], r["seed"]) for r in report["runs"]} == {(a, s) for a in ARMS for s in (0, 1)}
    for run in report["runs"]:
        folder = out / "runs" / f"{run['arm']}-0.125-s{run['seed']}"
        assert 0 <= run["miou"] <= 1 and math.isfinite(run["final_loss"])
        recorded = json.loads((folder / "result.json").read_text())
        assert len(recorded["per_image_confusion"]) == 101  # every val image's own confusion matrix
        assert (folder / "last.pt").is_file()
        command = (folder / "command.txt").read_text()
        assert command.startswith("softprep-train fit --store ") and f"--seed {run['seed']}" in command
        # the nn arm is torch `nearest` (what pipelines do), named in full since centres are the default
        assert ("--nn-sampling floor" in command) == (run["arm"] == "nn")
        assert ("--loss ce-nn" in command) == (run["arm"] in ("nn", "nn-centred"))
    names = [c["name"] for c in report["primary"]]
    assert names == ["soft - nn @ 1/8", "soft - nn-centred @ 1/8", "nn-centred - nn @ 1/8", "soft-no-mc - soft @ 1/8",
                     "soft-bilinear - soft @ 1/8"]
    for comparison in report["primary"] + report["secondary"]:
        assert comparison["seeds"] == 2
        assert comparison["t"]["low"] <= comparison["t"]["mean"] <= comparison["t"]["high"]
        assert comparison["t_corrected"]["level"] >= 0.95 and 0 <= comparison["holm"]["adjusted_p"] <= 1
        assert comparison["verdict"]
    assert len(report["secondary"]) == 2 * 5  # soft against both hard arms, per thin class
    markdown = (out / "report.md").read_text()
    for heading in ("## Primary endpoint", "## Convergence of the NN baseline", "## Per-class IoU",
                    "## Secondary endpoints", "## Predictions", "## Prior discrepancy"):
        assert heading in markdown
    assert (out / "predictions.png").stat().st_size > 10_000 and (out / "learning-curves.png").stat().st_size > 5_000

    again = _quick(out)  # resumes: every run is recorded, nothing trains again
    assert again.returncode == 0, again.stderr
    assert "runs: 10 planned, 10 already recorded, 0 to train" in again.stderr
    assert json.loads((out / "report.json").read_text())["primary"] == report["primary"]


def test_any_dataset_and_any_labelled_split(demo_root, tmp_path):
    """The same protocol on another adapter's root (the demo Cityscapes folder), scored on train."""
    out = tmp_path / "exp"
    result = subprocess.run([sys.executable, "-m", "softprep_train.cli", "experiment", "--dataset", "cityscapes",
                             "--root", str(demo_root), "--out", str(out), "--quick", "--eval-split", "train",
                             "--arms", "nn,soft", "--seeds", "0,1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["eval_split"] == "train" and len(report["runs"]) == 4
    assert all(len(json.loads((out / "runs" / f"{r['arm']}-0.125-s{r['seed']}" / "result.json").read_text())
                   ["per_image_confusion"]) == 6 for r in report["runs"])  # the 6 demo train images
    assert [c["name"] for c in report["primary"]] == ["soft - nn @ 1/8"]
    assert len(report["thin_classes"]) == 5  # no named thin classes: the 5 rarest in train

    missing = subprocess.run([sys.executable, "-m", "softprep_train.cli", "experiment", "--dataset", "cityscapes",
                              "--root", str(demo_root), "--out", str(out), "--quick", "--eval-split", "test"],
                             capture_output=True, text=True)
    assert missing.returncode != 0
    assert "no split 'test'" in missing.stderr and "choose --eval-split from those" in missing.stderr


def test_arms_stores_must_share_every_colour_image(demo_root, tmp_path):
    """The experiment refuses stores whose colour differs anywhere, naming the image (one read per bucket)."""
    import numpy as np
    import zarr

    from softprep.build import build
    from softprep.datasets import get_dataset
    from softprep.errors import SoftprepError
    from softprep.store import open_store
    from softprep_train.experiment import _check_same_colour
    from softprep_train.protocol import Settings

    dataset = get_dataset("cityscapes", str(demo_root))
    stores = {kernel: tmp_path / f"{kernel}.zarr" for kernel in ("area", "bilinear")}
    for kernel, path in stores.items():
        build(dataset, path, ["0.125", "0.25"], kernel=kernel, image_kernel="area", splits=["train"], jobs=1)
    settings = Settings(str(demo_root), str(tmp_path), dataset="cityscapes")
    _check_same_colour(stores, settings)  # same colour kernel: identical images

    view = open_store(stores["bilinear"]).samples("train", "0.25")
    victim = 4
    bucket = view.buckets[victim]
    image = zarr.open_array(stores["bilinear"] / "train" / "0.25" / bucket / "image", mode="r+")
    pixels = image[view.positions[victim]]
    image[view.positions[victim]] = 255 - pixels  # one image's colour changed, nothing else
    assert not np.array_equal(open_store(stores["bilinear"]).samples("train", "0.25")[victim].image,
                              open_store(stores["area"]).samples("train", "0.25")[victim].image)
    with pytest.raises(SoftprepError, match=f"colour image {view.ids[victim]} at 0.25 differs from the area store's"):
        _check_same_colour(stores, settings)


def test_epochs_option_sets_every_scale_and_an_empty_report_is_interim(demo_root, tmp_path):
    out = tmp_path / "exp"
    result = subprocess.run([sys.executable, "-m", "softprep_train.cli", "experiment", "--dataset", "cityscapes",
                             "--root", str(demo_root), "--out", str(out), "--epochs", "7", "--arms", "nn,soft",
                             "--seeds", "0,1", "--report-only"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "runs: 8 planned, 0 already recorded, 0 to train" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["epochs"] == {"0.125": 7, "0.25": 7} and report["runs_planned"] == 8
    assert "**Interim report: 0 of 8 runs recorded.**" in (out / "report.md").read_text()


def test_help_states_the_default_protocol_from_the_settings():
    from click.testing import CliRunner

    from softprep_train.cli import main
    from softprep_train.protocol import Settings, per_scale_text

    assert per_scale_text({"0.125": 90, "0.25": 30}) == "90 at 1/8; 30 at 1/4"
    defaults = Settings("root", "out")
    assert defaults.epochs == {"0.125": 90, "0.25": 30} and defaults.seeds == {"0.125": (0, 1, 2, 3, 4), "0.25": (0, 1, 2)}
    text = " ".join(CliRunner().invoke(main, ["experiment", "--help"]).output.split())
    assert "(default: 90 at 1/8; 30 at 1/4)" in text and "(default: 0,1,2,3,4 at 1/8; 0,1,2 at 1/4)" in text
