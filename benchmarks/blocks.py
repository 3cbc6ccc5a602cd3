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


def machine() -> str:
    """This machine in a few words: ``x86_64, 2 cores, Python 3.11.7``."""
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


class Report:
    """A benchmark's printed figures, kept to be written as a block: ``say`` prints a line and keeps it;
    :meth:`write` puts the command, this machine and the lines (as printed) into ``path``'s block ``name``."""

    def __init__(self):
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def write(self, path: Path | None, name: str, command: str, note: str = "") -> None:
        if path is None:
            return
        text = f"`{command}` ({machine()}{'; ' + note if note else ''}):\n\n```\n" + "\n".join(self.lines) + "\n```"
        update_block(path, name, text)
        print(f"updated the {name} block in {path}")
