"""The stage protocol: what a stage is, and what earlier stages tell later ones.

Stage names and parameters follow NeMo Curator's image curation stages, so pipelines written
for it run here with only the import line changed. Parameters that only make sense for that
engine's scheduler (``num_gpus_per_worker``, ``task_batch_size``, ``num_threads``) are
accepted and have no effect: Dask schedules the work here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger("imgcurate")
ENGINE_ONLY = ("num_gpus_per_worker", "task_batch_size", "num_threads", "num_workers_per_node")


@dataclass
class Context:
    """What earlier stages tell later ones while a pipeline is built."""

    shards: list[str] = field(default_factory=list)
    files_per_partition: int = 1
    storage_options: dict | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    random_weights: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)  # entries stages add to _manifest.json


class Stage:
    """A step of a :class:`~imgcurate.stages.Pipeline`."""

    name: ClassVar[str] = "stage"
    # columns a stage needs from an earlier stage, and columns it adds (the pipeline checks the order)
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    # the sample failure reasons this stage can cause (its row of the per-stage counts)
    failure_reasons: ClassVar[tuple[str, ...]] = ()

    def validate(self, context: Context) -> None:
        """Check parameters and inputs; raise :class:`PipelineError`. Runs before any work."""

    def apply(self, df, context: Context):
        """Return the transformed Dask DataFrame (``df`` is None for the first stages)."""
        return df

    def parameters(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def describe(self) -> dict[str, Any]:
        return {"stage": type(self).__name__, "name": self.name, "parameters": self.parameters()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.parameters().items())
        return f"{type(self).__name__}({args})"


def ignore_engine_options(stage: Stage, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(ENGINE_ONLY))
    if unknown:
        raise TypeError(f"{type(stage).__name__} got unexpected parameters: {', '.join(unknown)}")
    if options:
        log.debug("%s: %s have no effect here (Dask schedules the work)", type(stage).__name__, ", ".join(sorted(options)))
