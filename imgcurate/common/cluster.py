"""Where Dask work runs.

``scheduler`` (argument, ``--scheduler``, or the ``IMGCURATE_SCHEDULER`` environment variable):

* an address such as ``tcp://10.0.0.5:8786``: connect to that running ``dask scheduler``;
* ``"threads"`` or ``"sync"``: no cluster, Dask's in-process schedulers (quick jobs, debugging);
* nothing: start a cluster for the job and stop it afterwards: a ``LocalCUDACluster`` (one worker
  per GPU) when GPUs and dask-cuda are present, else a ``LocalCluster`` of one single-threaded
  worker *process* per core, since decoding and model inference hold the GIL in places.

Commands that only read a little (``inspect``, ``query``) pass ``start_cluster=False``: without a
scheduler they run in-process rather than paying for a cluster's start.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

import dask

from .backend import cuda_cluster_wanted

SCHEDULER_ENV = "IMGCURATE_SCHEDULER"
IN_PROCESS = ("threads", "sync", "synchronous", "processes")
log = logging.getLogger("imgcurate")


def scheduler_from(scheduler: str | None = None) -> str | None:
    return scheduler or os.environ.get(SCHEDULER_ENV) or None


def local_cluster(n_workers: int | None = None, memory_limit: str = "auto"):
    """A cluster on this machine: one worker per GPU with dask-cuda, else one process per core."""
    if cuda_cluster_wanted():
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            log.warning("GPUs are present but dask-cuda is not installed (pip install 'imgcurate[gpu]'); "
                        "starting a CPU LocalCluster instead")
        else:
            return LocalCUDACluster(n_workers=n_workers, memory_limit=memory_limit, dashboard_address=":0")
    from dask.system import CPU_COUNT  # the cores this process may use (affinity and cgroup limits applied)
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers or CPU_COUNT, threads_per_worker=1, processes=True, memory_limit=memory_limit,
        dashboard_address=":0",
    )


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
def dask_client(scheduler: str | None = None, *, n_workers: int | None = None, memory_limit: str = "auto",
                start_cluster: bool = True) -> Iterator[object]:
    """Run the body against the chosen scheduler; yields the ``distributed.Client`` or None."""
    address = scheduler_from(scheduler)
    if address is None and not start_cluster:
        address = "threads"
    if address in IN_PROCESS:
        with dask.config.set(scheduler=address):
            yield None
        return
    from distributed import Client

    if address:
        with Client(address) as client:
            log.info("%s", _describe(client, f"Dask scheduler {address}"))
            if not client.scheduler_info()["workers"]:
                log.warning("the scheduler at %s has no workers yet: the job waits until some join", address)
            yield client
        return
    with local_cluster(n_workers, memory_limit) as cluster, Client(cluster) as client:
        log.info("%s", _describe(client, f"started a {type(cluster).__name__}"))
        yield client
