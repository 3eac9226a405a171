"""Where Dask work runs.

``scheduler`` (argument, ``--scheduler``, or the ``IMGCURATE_SCHEDULER`` environment variable):

* an address such as ``tcp://10.0.0.5:8786``: connect to that running ``dask scheduler``;
* ``"threads"`` or ``"sync"``: no cluster, Dask's in-process schedulers;
* ``"local"``: start a cluster on this machine for the job and stop it afterwards: a
  ``LocalCUDACluster`` (one worker per GPU) when GPUs and dask-cuda are present, else a
  ``LocalCluster`` of one single-threaded worker *process* per core;
* nothing: the active ``distributed.Client`` when the caller made one; otherwise chosen from the
  work (:func:`default_scheduler`): jobs that copy bytes run in-process on threads; jobs that run
  models start a local cluster when their input is large enough to pay for one, and run on
  threads otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Literal, Sequence


SCHEDULER_ENV = "IMGCURATE_SCHEDULER"
IN_PROCESS = ("threads", "sync", "synchronous", "processes")
LOCAL = "local"
# A local cluster costs ~3-6 s to start and stop (processes, imports, models built once per worker:
# benchmarks/README.md, "Fixed costs"); below this much input a model job is over sooner on threads.
LOCAL_CLUSTER_MIN_BYTES = 512 * 2**20
Work = Literal["copy", "compute", "read"]
log = logging.getLogger("imgcurate")


def scheduler_from(scheduler: str | None = None) -> str | None:
    return scheduler or os.environ.get(SCHEDULER_ENV) or None


def input_bytes(shards: Sequence[str], storage_options: dict | None = None, enough: int = LOCAL_CLUSTER_MIN_BYTES) -> int:
    """The size of ``shards``, added up only until it reaches ``enough`` (each remote size is a request)."""
    from ..io.paths import filesystem

    total = 0
    for url in shards:
        fs, path = filesystem(url, storage_options)
        try:
            total += int(fs.size(path) or 0)
        except OSError:
            continue  # the reader reports it
        if total >= enough:
            break
    return total


def default_scheduler(work: Work, shards: Sequence[str] | None = None, storage_options: dict | None = None) -> str:
    """The scheduler a job gets when none is given.

    * ``copy`` (reshard, export, subset, search results): ``threads``. The bytes are copied by
      ``preadv`` and ``write`` calls without the GIL, so threads use the cores; worker processes
      would add their start and nothing else.
    * ``read`` (inspect, query, report, show): ``threads``; they read metadata.
    * ``compute`` (curate, dedup, index: decoding and models): ``local`` when the input holds at
      least :data:`LOCAL_CLUSTER_MIN_BYTES` and the machine has more than one core or a GPU,
      else ``threads``.
    """
    if work != "compute":
        return "threads"
    from dask.system import CPU_COUNT

    from .backend import cuda_cluster_wanted

    if CPU_COUNT < 2 and not cuda_cluster_wanted():
        return "threads"
    big = shards is not None and input_bytes(shards, storage_options) >= LOCAL_CLUSTER_MIN_BYTES
    return LOCAL if big else "threads"


def local_cluster(n_workers: int | None = None, memory_limit: str = "auto"):
    """A cluster on this machine: one worker per GPU with dask-cuda, else one process per core."""
    from .backend import cuda_cluster_wanted

    if cuda_cluster_wanted():
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            log.warning("GPUs are present but dask-cuda is not installed (pip install 'imgcurate[gpu]'); "
                        "starting a CPU LocalCluster instead")
        else:
            with _ctrl_c_ignored_by_children():
                return LocalCUDACluster(n_workers=n_workers, memory_limit=memory_limit, dashboard_address=":0")
    from dask.system import CPU_COUNT  # the cores this process may use (affinity and cgroup limits applied)
    from distributed import LocalCluster

    with _ctrl_c_ignored_by_children():
        return LocalCluster(
            n_workers=n_workers or CPU_COUNT, threads_per_worker=1, processes=True, memory_limit=memory_limit,
            dashboard_address=":0",
        )


@contextmanager
def _ctrl_c_ignored_by_children() -> Iterator[None]:
    """Worker processes started in the body ignore SIGINT: a terminal's Ctrl-C reaches the whole
    process group, and this process, not each worker, stops the job (workers that died of it
    printed their tracebacks and raced the cleanup). Python keeps an inherited SIG_IGN for SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def dashboard_link(client) -> str | None:
    """The scheduler's dashboard URL, or None when it runs without one (``--no-dashboard``)."""
    if "dashboard" not in client.scheduler_info(n_workers=0).get("services", {}):
        return None
    return client.dashboard_link


def _describe(client, what: str) -> str:
    workers = client.scheduler_info()["workers"].values()
    threads = sum(w.get("nthreads", 0) for w in workers)
    message = f"{what}: {len(workers)} workers, {threads} threads"
    link = dashboard_link(client)
    return message + (f"; dashboard: {link}" if link else "")


@contextmanager
def dask_client(scheduler: str | None = None, *, work: Work = "compute", shards: Sequence[str] | None = None,
                storage_options: dict | None = None, n_workers: int | None = None,
                memory_limit: str = "auto") -> Iterator[object]:
    """Run the body against the chosen scheduler; yields the ``distributed.Client`` or None.

    ``work`` and ``shards`` (the job's inputs) choose the scheduler when none is given
    (:func:`default_scheduler`).
    """
    address = scheduler_from(scheduler)
    if address is None:
        from .progress import active_client

        client = active_client()
        if client is not None:  # a client the caller made (RayClient, Client(...)): the job runs there
            yield client
            return
        address = default_scheduler(work, shards, storage_options)
    if address in IN_PROCESS:
        import dask

        with dask.config.set(scheduler=address):
            yield None
        return
    from distributed import Client

    if address != LOCAL:
        with Client(address) as client:
            log.info("%s", _describe(client, f"Dask scheduler {address}"))
            if not client.scheduler_info()["workers"]:
                log.warning("the scheduler at %s has no workers yet: the job waits until some join", address)
            yield client
        return
    with local_cluster(n_workers, memory_limit) as cluster, Client(cluster) as client:
        log.info("%s", _describe(client, f"started a {type(cluster).__name__}"))
        yield client
