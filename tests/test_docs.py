"""The pages are executable documentation: every fenced `bash` command and `python` snippet of
README.md and docs/*.md runs here, as a new user would run it, on tiny demo data, so a page can
no longer drift from the code unseen.

In a sandbox folder the names the pages use exist: `demo-data` (the demo dataset) and
`demo-store.zarr` (its store), `STORE.zarr` and `DATA` are replaced by them, `IMAGE_ID` by a real
id, `OUT` by a fresh folder; `../shared` is the shared folder beside the repository. A block
preceded by `<!-- docs-test: skip: WHY -->` is not run (the few too heavy for a test: a training
run of thousands of iterations, a cluster), and a `python` block whose first line is
`# file: NAME.py` is written to that file for the blocks after it. A `json` block is a
`classes.json`: it must load as the folder adapter's class table. A training command runs at
most 4 iterations (`--iters 40` becomes `--iters 4`): the page's length is for its printed output,
the test checks that the command runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(<!-- docs-test: skip: [^>]*-->\n)?```(bash|python|json)\n(.*?)```", re.S)
PLACEHOLDERS = (("STORE.zarr", "demo-store.zarr"), ("DATA", "demo-data"), ("OUT", "out"))


def blocks():
    for page in PAGES:
        for number, match in enumerate(FENCE.finditer(page.read_text())):
            skip, language, code = match.groups()
            yield pytest.param(page, language, code, id=f"{page.relative_to(ROOT)}#{number}",
                               marks=[pytest.mark.skip(reason=skip.strip()[4:-3].strip())] if skip else [])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """``tmp/project`` holding the demo dataset and its store; ``tmp/shared`` the real shared folder."""
    from softprep.build import build
    from softprep.datasets import get_dataset
    from softprep.demo import make_demo

    base = tmp_path_factory.mktemp("docs")
    project = base / "project"
    data = make_demo(project / "demo-data", train=4, val=2, size=(256, 512), seed=0)
    build(get_dataset("cityscapes", data), project / "demo-store.zarr", [0.125, 0.25, 0.5], jobs=1)
    if SHARED.is_dir():
        (base / "shared").symlink_to(SHARED)
    return project


def substitute(code: str, project: Path) -> str:
    from softprep import open_store

    for name, value in PLACEHOLDERS:
        code = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", value, code)
    code = re.sub(r"--iters (\d+)", lambda m: f"--iters {min(int(m.group(1)), 4)}", code)
    image_id = open_store(project / "demo-store.zarr").spec.splits["train"].ids[0]
    return code.replace("IMAGE_ID", image_id)


@pytest.mark.parametrize("page, language, code", list(blocks()))
def test_every_command_and_snippet_runs(page, language, code, sandbox):
    if "../shared" in code and not SHARED.is_dir():
        pytest.skip("needs ../shared beside the repository")
    code = substitute(code, sandbox)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{sandbox}", "MPLBACKEND": "Agg"}
    if language == "json":
        from softprep.datasets.folder import load_class_table

        (sandbox / "classes.json").write_text(code)
        names, _, _ = load_class_table(sandbox / "classes.json")
        assert names
        return
    first = code.splitlines()[0]
    if language == "python" and first.startswith("# file: "):
        (sandbox / first[len("# file: "):].strip()).write_text(code)
        return
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=sandbox, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{page.name}:\n{code}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
