"""Every benchmark runs end to end in its --smoke mode (tiny data, one repeat), so none can rot
unseen the way bench_build.py's import did; the figures themselves come from `make bench` on a
quiet machine (docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: Each benchmark and a line its smoke run must print.
EXPECTED = {
    "bench_build.py": "4. training read path",
    "bench_datasets.py": "2. peak RSS of one build process",
    "bench_loader.py": "worker -> trainer bytes",
    "bench_cluster.py": "S3 -> S3 on the cluster",
    "bench_audit.py": "target: 100 images in at most 60 s",
    "bench_fit.py": "against a bare loop's",
    "bench_volumes.py": "softprep's exact soft labels",
}


def test_every_benchmark_is_listed():
    assert sorted(p.name for p in BENCHMARKS.glob("bench_*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_smoke_run(script):
    if script == "bench_cluster.py":
        pytest.importorskip("distributed")
        pytest.importorskip("moto")
    if script == "bench_volumes.py":
        pytest.importorskip("nilearn", reason="the ICBM152 volume comes with nilearn")
        pytest.importorskip("nibabel")
    if script == "bench_audit.py" and not (BENCHMARKS.parents[1] / "shared" / "datasets" / "camvid").is_dir():
        pytest.skip("needs ../shared/datasets/camvid")
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert EXPECTED[script] in result.stdout, result.stdout[-2000:]
