"""Packaging: the dev extra lists every other extra's packages itself (pip 23.2, which Python
3.11's venv ships, cannot resolve a self-referencing extra), and the core install needs no torch."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_dev_extra_holds_every_extra_without_referencing_itself():
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    dev = set(extras["dev"])
    assert not any(req.startswith("softprep") for req in dev)
    for name, requirements in extras.items():
        assert set(requirements) <= dev, (name, set(requirements) - dev)


def test_the_preprocessing_core_needs_no_torch():
    core = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert not any(req.split("=")[0].split(">")[0].strip() in ("torch", "torchvision", "timm") for req in core)
