"""NeMo Curator's executors and cluster client, mapped to Dask, so that its scripts run unchanged.

``pipeline.run(executor)`` takes any of these (or a ``distributed.Client``): the work runs on
Dask, on the scheduler :mod:`~imgcurate.common.cluster` chooses (an explicit ``scheduler=``,
``$IMGCURATE_SCHEDULER``, or the default for the input). The executors' configuration steers
NeMo's engines (Xenna streaming, Ray actors); it is accepted and recorded in the manifest.
:class:`RayClient` starts a local Dask cluster where NeMo starts a local Ray cluster.
"""

from __future__ import annotations

from typing import Any


class DaskExecutor:
    """Run a pipeline on Dask: on ``client`` (a ``distributed.Client``) or ``scheduler`` (an address,
    ``"threads"`` or ``"local"``); with neither, on the scheduler chosen for the input."""

    def __init__(self, client=None, scheduler: str | None = None, config: dict[str, Any] | None = None, **options):
        self.client, self.scheduler = client, scheduler
        self.config = dict(config or {})
        self.options = options

    def describe(self) -> dict[str, Any]:
        return {"executor": type(self).__name__, "config": self.config, **self.options,
                "under_dask": "the pipeline runs on Dask: "
                              + ("the given client" if self.client is not None else self.scheduler or "the default scheduler")}


class XennaExecutor(DaskExecutor):
    """NeMo Curator's streaming executor; here the pipeline runs on Dask (see :class:`DaskExecutor`)."""

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False):
        super().__init__(config=config, ignore_head_node=ignore_head_node)


class RayDataExecutor(DaskExecutor):
    """NeMo Curator's Ray Data executor; here the pipeline runs on Dask (see :class:`DaskExecutor`)."""

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False):
        super().__init__(config=config, ignore_head_node=ignore_head_node)


class RayActorPoolExecutor(DaskExecutor):
    """NeMo Curator's Ray actor-pool executor; here the pipeline runs on Dask (see :class:`DaskExecutor`)."""

    def __init__(self, config: dict | None = None, ignore_head_node: bool = False, show_progress: bool = True,
                 progress_interval: float = 10.0):
        super().__init__(config=config, ignore_head_node=ignore_head_node, show_progress=show_progress,
                         progress_interval=progress_interval)


class RayClient:
    """Where NeMo Curator's scripts start a local Ray cluster: :meth:`start` starts a local Dask cluster
    (:func:`~imgcurate.common.cluster.local_cluster`) and makes it the default for pipelines run
    meanwhile; :meth:`stop` stops it. Ray's own options (ports, directories, …) are accepted and
    have no effect; ``num_cpus`` and ``num_gpus`` bound the workers when given."""

    def __init__(self, num_cpus: int | None = None, num_gpus: int | None = None, **ray_options: Any):
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.ray_options = ray_options
        self.cluster = self.client = None

    def start(self) -> "RayClient":
        from distributed import Client

        from ..common.cluster import local_cluster

        workers = self.num_gpus or self.num_cpus
        self.cluster = local_cluster(workers or None)
        self.client = Client(self.cluster, set_as_default=True)
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def __enter__(self) -> "RayClient":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
