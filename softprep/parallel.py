"""One way to fan work out: joblib's loky processes on this machine, or a Dask cluster; results as
they finish.

``build``, ``priors --compare-kernels``, ``stats`` and ``verify`` all call :func:`run_tasks`, so
worker-count defaults, progress reporting and the "a worker died" message live in one place.
A ``scheduler`` (``tcp://host:8786``, or ``local`` for a ``LocalCluster`` of ``jobs`` processes)
sends each task to Dask ``distributed`` (the ``dask`` extra); a task lost with its worker is
rerun on another one (Dask's ``distributed.scheduler.allowed-failures``, 3 by default).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from typing import Any, Callable, Iterable, Iterator, Sequence

from joblib import Parallel, delayed
from joblib.externals.loky.process_executor import TerminatedWorkerError

from softprep.errors import SoftprepError, install_hint


def default_jobs(jobs: int | None) -> int:
    """``jobs``, or every core when ``None``."""
    return jobs or os.cpu_count() or 1


def run_tasks(
    function: Callable[..., Any],
    tasks: Sequence[tuple],
    jobs: int | None = None,
    on_worker_death: str = "rerun the same command",
    scheduler: str | None = None,
) -> Iterator[Any]:
    """Yield ``function(*task)`` for every task, in completion order.

    ``jobs=1`` runs in this process (no pickling; easy to debug). A worker killed by the OS
    (out of memory, SIGKILL) becomes a one-line :class:`SoftprepError` ending in ``on_worker_death``.
    ``scheduler``: run on Dask instead (see the module docstring).
    """
    if scheduler:
        yield from _run_on_dask(function, tasks, jobs, on_worker_death, scheduler)
        return
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


def die_with_parent(parent_pid: int | None) -> None:
    """In a worker process (Linux): ask the kernel to SIGKILL this process the moment its parent
    dies, so an orphaned worker never writes, whatever it is doing then. No-op in the parent itself."""
    global _DIES_WITH_PARENT
    if parent_pid is None or os.getpid() == parent_pid or not sys.platform.startswith("linux"):
        return
    if not _DIES_WITH_PARENT:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _DIES_WITH_PARENT = True
    stop_if_orphaned(parent_pid)  # the parent may have died before the request


def stop_if_orphaned(parent_pid: int | None) -> None:
    """Exit at once (writing nothing) when ``parent_pid`` is no longer this worker's parent."""
    if parent_pid is not None and os.getpid() != parent_pid and os.getppid() != parent_pid:
        os._exit(1)


PR_SET_PDEATHSIG = 1
_DIES_WITH_PARENT = False


def batches(count: int, size: int) -> list[range]:
    """``range(count)`` cut into consecutive ranges of at most ``size``."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def _run_on_dask(function: Callable[..., Any], tasks: Sequence[tuple], jobs: int | None, on_worker_death: str,
                 scheduler: str) -> Iterator[Any]:
    try:
        from distributed import Client, LocalCluster, as_completed
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker
    except ImportError:
        raise SoftprepError(f"--scheduler needs the dask extra: {install_hint('dask')}") from None
    with contextlib.ExitStack() as stack:
        if scheduler == "local":
            cluster = stack.enter_context(LocalCluster(n_workers=default_jobs(jobs), threads_per_worker=1,
                                                       processes=True, dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(scheduler, timeout=30))
            except (OSError, TimeoutError) as error:
                raise SoftprepError(f"{scheduler}: cannot reach the Dask scheduler ({error}); check the address") from None
        futures = [client.submit(function, *task, pure=False) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        except (KilledWorker, FutureCancelledError):
            raise SoftprepError("Dask workers died running one task again and again (out of memory? give workers "
                                f"more memory); {on_worker_death}") from None
        finally:
            client.cancel(futures)
