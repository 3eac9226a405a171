"""Run Dask tasks with a progress bar, on a distributed client when one is active."""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, Sequence

import dask
import dask.threaded
from dask.base import named_schedulers
from dask.system import CPU_COUNT
# plain text bars everywhere: tqdm.auto wants ipywidgets in Jupyter and warns without it
from tqdm.std import tqdm

log = logging.getLogger("imgcurate")


def active_client():
    """The distributed client in use (``Client(...)`` or ``with Client(...)``), or None.

    As in ``dask.compute``, an in-process scheduler chosen with ``dask.config.set(scheduler=...)``
    (``--scheduler threads``) wins over a client that merely exists in the process.
    """
    configured = dask.config.get("scheduler", None)
    if isinstance(configured, str) and configured.lower() in named_schedulers:
        return None
    if "distributed" not in sys.modules:  # never imported: no client can exist (and importing it costs ~0.25 s)
        return None
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return Client.current(allow_global=True)
    except ValueError:
        return None


def compute(tasks: Sequence[Any], *, desc: str, progress: bool = False, client=None) -> list[Any]:
    """Compute Dask collections/delayed objects; with ``progress``, show one bar over them.

    Runs on ``client``, else on the active distributed client, else on Dask's local scheduler.
    On a distributed client the bar counts finished tasks of ``tasks`` (local and remote
    clusters alike); on Dask's local schedulers it counts graph tasks.

    When it raises (a failed task, Ctrl-C), none of its tasks is still running: callers clean up
    what the tasks wrote without racing them.
    """
    tasks = list(tasks)
    if not tasks:
        return []
    if client is None:
        client = active_client()
    if client is not None:
        return _compute_on_client(client, tasks, desc, progress)
    if progress:
        from tqdm.dask import TqdmCallback

        context = TqdmCallback(desc=desc, unit="task", tqdm_class=tqdm)
    else:
        context = nullcontext()
    with context:
        if dask.config.get("scheduler", None) not in (None, "threads", "threading"):
            return list(dask.compute(*tasks))  # "sync" runs in this thread; "processes" ends with its pool
        pool = ThreadPoolExecutor(CPU_COUNT, thread_name_prefix="imgcurate-dask")
        try:
            # the threaded scheduler itself, not its name: naming it makes dask import distributed to look for a client
            return list(dask.compute(*tasks, scheduler=dask.threaded.get, pool=pool))
        finally:
            # idle after a success; after an error or Ctrl-C, the tasks already running finish first
            pool.shutdown(wait=True, cancel_futures=True)


def _compute_on_client(client, tasks: list[Any], desc: str, progress: bool) -> list[Any]:
    from distributed import as_completed

    futures = client.compute(tasks)
    try:
        with tqdm(total=len(futures), desc=desc, unit="part", disable=not progress) as bar:
            for _ in as_completed(futures, loop=client.loop):
                bar.update()
        return client.gather(futures)
    except BaseException:
        client.cancel(futures)
        _wait_until_stopped(client, {key for task in tasks for key in task.__dask_graph__()})
        raise
    finally:
        for future in futures:
            future.release()


def _live_keys(dask_worker) -> list:
    """The keys of the tasks a worker runs now or may still start: cancelled ones that run on (a
    thread is not interrupted), and those queued there, which start unless the cancellation reaches
    the worker first (it travels apart from this question)."""
    from distributed.worker_state_machine import PROCESSING

    return [ts.key for ts in dask_worker.state.tasks.values() if ts.state in PROCESSING or ts.state in ("cancelled", "resumed")]


def _wait_until_stopped(client, keys: set, timeout: float = 60.0) -> None:
    """Wait until no worker runs or has queued any of ``keys`` (Dask does not interrupt a cancelled
    task that has started, and the scheduler forgets it at once, so the workers are asked), or the
    cluster is gone, or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = {key for worker_keys in client.run(_live_keys).values() for key in worker_keys}
        except Exception:  # the scheduler or its workers are gone: nothing runs there any more
            return
        if not running & keys:
            return
        time.sleep(0.05)
    log.warning("tasks of the interrupted job were still running after %.0f s", timeout)
