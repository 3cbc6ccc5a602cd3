"""Pictures of prior discrepancies (needs the optional ``matplotlib``: the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from softprep.errors import SoftprepError, install_hint
from softprep.priors import PriorTable, target_label

#: The plot's unit: the priors table's (``softprep priors`` prints D x 10^4).
UNIT = 1e4
#: The symlog axis is linear in [-LINEAR_BELOW, LINEAR_BELOW], in those units (D = 1e-6).
LINEAR_BELOW = 0.01


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SoftprepError(f"--plot needs matplotlib: {install_hint('plot')} (or pip install matplotlib)") from None
    return plt


def plot_priors(table: PriorTable, path: str | Path, dpi: int = 120) -> Path:
    """Write a PNG: per class, one bar of ``D_d,c`` per strategy, on a symmetric log axis.

    One panel per target; exact all-zero rows say "exactly 0" in the legend, so a kernel that
    keeps priors exactly is visible at a glance.
    """
    plt = _pyplot()
    targets = list(dict.fromkeys(row.target for row in table.rows))
    strategies = list(dict.fromkeys(row.strategy for row in table.rows))
    fig, axes = plt.subplots(len(targets), 1, figsize=(12, 2.4 * len(targets) + 1.2), sharex=True, squeeze=False)
    x = np.arange(len(table.classes))
    width = 0.8 / len(strategies)
    for ax, target in zip(axes[:, 0], targets):
        for i, strategy in enumerate(strategies):
            row = next((r for r in table.rows if r.target == target and r.strategy == strategy), None)
            if row is None:
                continue
            zero = row.exact and all(d == 0 for d in row.discrepancy)
            label = f"{strategy}: " + ("exactly 0" if zero else f"sum|D| {UNIT * float(row.sum_abs):.2f}")
            values = [UNIT * float(d) for d in row.discrepancy]
            ax.bar(x - 0.4 + (i + 0.5) * width, values, width, label=label, color=f"C{i}")
        ax.set_yscale("symlog", linthresh=LINEAR_BELOW)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel(f"D x1e4 at {target_label(target)}")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axes[-1, 0].set_xticks(x, table.classes, rotation=45, ha="right")
    fig.suptitle(f"Class-prior discrepancy D = p_original - p_d, x1e4 as in `softprep priors` (symlog, linear below "
                 f"{LINEAR_BELOW:g}), split {table.split}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
