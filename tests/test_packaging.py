"""Packaging: the dev extra lists every other extra's packages itself (pip 23.2, which Python
3.11's venv ships, cannot resolve a self-referencing extra), every extra whose example trains holds
the training packages, every documented install line names an extra that exists and a command
that works from a clone, and the core install needs no torch."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
#: Extras whose documented examples train a model (docs/integration.md, docs/training.md).
TRAINING_EXTRAS = ("lightning", "smp", "hf", "segformer", "monai")


def test_dev_extra_holds_every_extra_without_referencing_itself():
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    dev = set(extras["dev"])
    assert not any(req.startswith("softprep") for req in dev)
    for name, requirements in extras.items():
        assert set(requirements) <= dev, (name, set(requirements) - dev)


def test_the_preprocessing_core_needs_no_torch():
    core = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert not any(req.split("=")[0].split(">")[0].strip() in ("torch", "torchvision", "timm") for req in core)


def test_extras_whose_examples_train_hold_the_training_packages():
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for name in TRAINING_EXTRAS:
        assert set(extras["train"]) <= set(extras[name]), (name, set(extras["train"]) - set(extras[name]))
    assert any(r.startswith("segmentation-models-pytorch") for r in extras["lightning"])  # its example trains smp:...


def test_every_documented_install_line_names_an_extra_and_works_from_a_clone():
    """softprep is not on a package registry: `pip install 'softprep[X]'` cannot work. Every page and
    every message (install_hint) says `pip install -e '.[X]'` with an X that exists."""
    extras = set(tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"])
    texts = {p: p.read_text() for p in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("softprep*/**/*.py")]}
    named = set()
    for path, text in texts.items():
        assert "pip install 'softprep[" not in text and 'pip install "softprep[' not in text, path
        named |= set(re.findall(r"pip install -e '\.\[([a-z0-9,-]+)\]'", text))
        named |= set(re.findall(r"install_hint\('([a-z0-9-]+)'\)", text))
    assert named, "no install line found"
    unknown = {extra for group in named for extra in group.split(",")} - extras
    assert not unknown, unknown
