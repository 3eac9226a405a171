"""Scaling: the curation job on a LocalCluster of 2 worker processes vs 1 (one thread each).

Measured twice: with each worker pinned to a core of its own (1 worker: 1 core, 2 workers: 2
cores), which is how the work scales with workers and cores and what the goal is about; and as
imgcurate's own local cluster runs it, workers free to use any core (a worker's decoding threads
can then spill onto the other core, and both workers' threads compete for both cores).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from bench_models import curate_ours, curation_models
from common import Config, Dataset, Measure, compare, interleave, timed

NAME = "scaling"
WORKERS = (1, 2)


def pin_process(cores: set[int]) -> None:
    """Pin every thread of this process to ``cores`` (threads started later inherit it)."""
    for thread in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(thread), cores)


def run(config: Config, dataset: Dataset) -> tuple[list[Measure], dict]:
    from distributed import Client, LocalCluster

    from imgcurate.models import TINY_MODEL

    embedder, aesthetic, nsfw, _, _ = curation_models(TINY_MODEL)
    shards = dataset.shards if config.quick else dataset.shards[: max(2, len(dataset.shards) // 2)]
    urls = [str(p) for p in shards]
    samples = dataset.samples * len(urls) // len(dataset.urls)
    cores = sorted(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="imgcurate-bench-", dir=config.data))
    clusters, clients = {}, {}
    logging.getLogger("distributed").setLevel(logging.ERROR)
    try:
        for n in WORKERS:
            # as imgcurate's own local cluster: single-threaded worker processes
            clusters[n] = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                       silence_logs=logging.ERROR)
            clients[n] = Client(clusters[n], set_as_default=False)

        def curate(n: int, job_urls: list[str]) -> None:
            with clients[n].as_current():
                curate_ours(job_urls, work / f"out-{n}", embedder, aesthetic, nsfw, config.images_per_tar)

        def throughput(n: int) -> float:
            shutil.rmtree(work / f"out-{n}", ignore_errors=True)
            return samples / timed(lambda: curate(n, urls))

        for n in WORKERS:  # every worker loads its models once: not part of the throughput
            curate(n, urls[:n])
        free = interleave(config.repeats, lambda: throughput(2), lambda: throughput(1))
        for n in WORKERS:
            for core, address in zip(cores, sorted(clients[n].scheduler_info()["workers"])):
                clients[n].run(pin_process, {core}, workers=[address])
        pinned = interleave(config.repeats, lambda: throughput(2), lambda: throughput(1))
    finally:
        for client in clients.values():
            client.close()
        for cluster in clusters.values():
            cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    measures = [
        compare(f"curate, {TINY_MODEL}: 2 workers / 1 worker, one core each", "img/s", *pinned,
                "the same job on 1 worker", ">= 1.7", minimum=1.7,
                note="each worker process pinned to its own core"),
        compare(f"curate, {TINY_MODEL}: 2 workers / 1 worker, unpinned", "img/s", *free,
                "the same job on 1 worker", "report",
                note=f"workers free to use any of the {len(cores)} cores, as imgcurate's own local cluster runs them"),
    ]
    parameters = {"samples": samples, "shards": len(urls), "repeats": config.repeats, "cpus": len(cores),
                  "cluster": "distributed.LocalCluster(processes=True, threads_per_worker=1)",
                  "model": f"{TINY_MODEL} (random weights)"}
    return measures, parameters


if __name__ == "__main__":
    raise SystemExit("run the benchmarks with: python benchmarks/run.py --only scaling")
