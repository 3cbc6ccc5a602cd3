"""`softprep-train` as a researcher leaves it running: SIGTERM checkpoints and resumes bit-identically,
a finished run is never overwritten, wrong inputs are one line, torch missing is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from softprep.build import build
from softprep.datasets import get_dataset

ROOT = Path(__file__).resolve().parents[1]
FIT = ["--scale", "0.25", "--model", "hrnetv2_w18_small", "--batch-size", "2", "--workers", "0", "--seed", "2",
       "--log-every", "1"]


@pytest.fixture(scope="module")
def store(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train-cli") / "store.zarr"
    build(get_dataset("cityscapes", demo_root), out, [0.25], jobs=1)
    return out


def train_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprep_train.cli", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def one_line(result) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("softprep-train: error: "), result.stderr
    return lines[0]


def test_sigterm_checkpoints_and_resume_is_bit_identical(store, tmp_path):
    straight = train_cli("fit", "--store", store, "--out", tmp_path / "straight", "--iters", "8", *FIT)
    assert straight.returncode == 0, straight.stderr
    run = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "-m", "softprep_train.cli", "fit", "--store", str(store), "--out", str(run),
                                "--iters", "8", *FIT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "log.jsonl").exists() or len((run / "log.jsonl").read_text().splitlines()) < 2:
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("softprep-train: error: SIGTERM at iteration ") and "--resume" in message, stderr
    stopped_at = int(message.split("iteration ")[1].split(":")[0])
    assert 2 <= stopped_at < 8
    resumed = train_cli("fit", "--store", store, "--out", run, "--iters", "8", *FIT, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "straight" / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"]


def test_a_finished_run_is_not_overwritten(store, tmp_path):
    run = tmp_path / "run"
    assert train_cli("fit", "--store", store, "--out", run, "--iters", "3", *FIT).returncode == 0
    before = (run / "last.pt").read_bytes()
    line = one_line(train_cli("fit", "--store", store, "--out", run, "--iters", "2", *FIT))
    assert "already holds a run (last.pt); pass --resume to continue it, --overwrite to start again" in line
    assert (run / "last.pt").read_bytes() == before
    again = train_cli("fit", "--store", store, "--out", run, "--iters", "2", *FIT, "--overwrite")
    assert again.returncode == 0 and len((run / "log.jsonl").read_text().splitlines()) == 2


def test_wrong_inputs_are_one_line(store, tmp_path):
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps([1.0] * 5))
    line = one_line(train_cli("fit", "--store", store, "--out", tmp_path / "r", "--iters", "2", *FIT,
                              "--class-weights", weights))
    assert "--class-weights has 5 values; the store has 19 classes" in line
    result = train_cli("fit", "--store", store, "--out", tmp_path / "r", "--model", "unet", "--scale", "0.25")
    assert result.returncode == 2 and "'unet': choose one of hrnetv2_w48, hrnetv2_w18_small" in result.stderr
    assert "or smp:ARCH/ENCODER" in result.stderr


def test_help_explains_every_option():
    result = train_cli("fit", "--help")
    assert result.returncode == 0
    for option, words in (("--split", "Store split"), ("--batch-size", "per process"), ("--lr", "poly"),
                          ("--log-every", "stdout when piped"), ("--checkpoint-every", "SIGINT/SIGTERM"),
                          ("--seed", "augmentation"), ("--model", "hrnetv2_w18_small")):
        block = result.stdout.split(option, 1)[1][:400]
        assert words in " ".join(block.split()), option


def test_without_torch_one_line_says_what_to_install():
    code = "import sys; sys.modules['torch'] = None; from softprep_train.cli import entry; sys.argv = ['softprep-train', '--help']; entry()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    assert result.stderr.strip() == ("softprep-train: error: torch is not installed; install the training extra: "
                                     "pip install -e '.[train]' in the softprep checkout")
    for module in ("softprep_train.lightning",):  # an integration imported without torch: one line naming its extra
        code = f"import sys; sys.modules['torch'] = None; import {module}"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == ("softprep.errors.SoftprepError: softprep_train.lightning needs "
                                                          "the lightning extra: pip install -e '.[lightning]' in the "
                                                          "softprep checkout")
