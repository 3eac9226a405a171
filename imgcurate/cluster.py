"""Where Dask work runs.

``scheduler`` (argument, ``--scheduler``, or the ``IMGCURATE_SCHEDULER`` environment variable):

* an address such as ``tcp://10.0.0.5:8786``: connect to that running ``dask scheduler``;
* ``"threads"`` or ``"sync"``: no cluster, Dask's in-process schedulers (quick jobs, debugging);
* nothing: start a cluster for the job and stop it afterwards: a ``LocalCUDACluster`` (one worker
  per GPU) when GPUs and dask-cuda are present, else a ``LocalCluster`` of one single-threaded
  worker *process* per core, since decoding and model inference hold the GIL in places.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

import dask

from .backend import cuda_available

SCHEDULER_ENV = "IMGCURATE_SCHEDULER"
IN_PROCESS = ("threads", "sync", "synchronous", "processes")
log = logging.getLogger("imgcurate")


def scheduler_from(scheduler: str | None = None) -> str | None:
    return scheduler or os.environ.get(SCHEDULER_ENV) or None


def _local_cluster(n_workers: int | None, memory_limit: str):
    if cuda_available():
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            log.warning("GPUs are present but dask-cuda is not installed (pip install 'imgcurate[gpu]'); "
                        "starting a CPU LocalCluster instead")
        else:
            return LocalCUDACluster(n_workers=n_workers, memory_limit=memory_limit, dashboard_address=":0")
    from distributed import LocalCluster

    workers = n_workers or os.cpu_count() or 1
    return LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_limit, dashboard_address=":0",
    )


@contextmanager
def dask_client(scheduler: str | None = None, *, n_workers: int | None = None, memory_limit: str = "auto") -> Iterator[object]:
    """Run the body against the chosen scheduler; yields the ``distributed.Client`` or None."""
    address = scheduler_from(scheduler)
    if address in IN_PROCESS:
        with dask.config.set(scheduler=address):
            yield None
        return
    from distributed import Client

    if address:
        client = Client(address)
        log.info("connected to Dask scheduler %s (%d workers)", address, len(client.scheduler_info()["workers"]))
        try:
            yield client
        finally:
            client.close()
        return
    cluster = _local_cluster(n_workers, memory_limit)
    client = Client(cluster)
    log.info("started %s with %d workers; dashboard: %s", type(cluster).__name__, len(cluster.workers), client.dashboard_link)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
