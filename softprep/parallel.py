"""One way to fan work out over processes: joblib's loky backend, results as they finish.

``build``, ``priors --compare-kernels``, ``stats`` and ``verify`` all call :func:`run_tasks`, so
worker-count defaults, progress reporting and the "a worker died" message live in one place.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Sequence

from joblib import Parallel, delayed
from joblib.externals.loky.process_executor import TerminatedWorkerError

from softprep.errors import SoftprepError


def default_jobs(jobs: int | None) -> int:
    """``jobs``, or every core when ``None``."""
    return jobs or os.cpu_count() or 1


def run_tasks(
    function: Callable[..., Any],
    tasks: Sequence[tuple],
    jobs: int | None = None,
    on_worker_death: str = "rerun the same command",
) -> Iterator[Any]:
    """Yield ``function(*task)`` for every task, in completion order.

    ``jobs=1`` runs in this process (no pickling; easy to debug). A worker killed by the OS
    (out of memory, SIGKILL) becomes a one-line :class:`SoftprepError` ending in ``on_worker_death``.
    """
    n_jobs = min(default_jobs(jobs), max(1, len(tasks)))
    if n_jobs == 1:
        yield from (function(*task) for task in tasks)
        return
    calls: Iterable = (delayed(function)(*task) for task in tasks)
    try:
        yield from Parallel(n_jobs=n_jobs, return_as="generator_unordered")(calls)
    except TerminatedWorkerError:
        raise SoftprepError(
            f"a worker process died (killed, or out of memory: try fewer --jobs); {on_worker_death}"
        ) from None


def batches(count: int, size: int) -> list[range]:
    """``range(count)`` cut into consecutive ranges of at most ``size``."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]
