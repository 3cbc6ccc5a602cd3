"""Generated blocks in markdown files: a benchmark rewrites the text between its own markers
(``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``), and nothing else, with its latest figures."""

from __future__ import annotations

from pathlib import Path


def update_block(path: Path, name: str, text: str) -> None:
    """Replace the block ``name`` of ``path`` with ``text`` (SystemExit naming the markers if it has none)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = path.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"{path}: no {begin} ... {end} block to replace; add the two markers where the figures go")
    head, rest = content.split(begin, 1)
    path.write_text(head + begin + "\n" + text.rstrip("\n") + "\n" + end + rest.split(end, 1)[1])
