"""Peak memory of a piece of code, in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its parent's peak.
_PRINT_PEAK = "\nprint(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))"


def peak_rss_mib(code: str, *args: str) -> float:
    """The peak resident memory (MiB) of a fresh Python process running ``code`` (``sys.argv[1:]`` =
    ``args``; this folder importable)."""
    done = subprocess.run([sys.executable, "-c", code + _PRINT_PEAK, *args], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parent)
    return int(done.stdout.split()[-1]) / 1024
