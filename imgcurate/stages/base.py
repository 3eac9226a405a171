"""The stage protocol: what a stage is, and what earlier stages tell later ones.

Stage names and parameters follow NeMo Curator's image curation stages, so pipelines written
for it run here with only the import lines changed. Its parameters that only steer that engine's
scheduler (:data:`ENGINE_OPTIONS`) are accepted, have no effect on what is computed, and are
recorded in the manifest with what they mean under Dask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger("imgcurate")
# NeMo Curator's scheduling options, and what each means here
ENGINE_OPTIONS = {
    "num_gpus_per_worker": "GPU share per worker in NeMo's scheduler; under Dask a local cluster runs one worker per "
                           "GPU (LocalCUDACluster) and each worker loads each model once",
    "num_threads": "DALI's CPU threads; imgcurate decodes in a thread pool sized to the machine",
    "dali_batch_size": "images per DALI batch (and per NeMo output tar group); imgcurate reads whole shards, decodes "
                       "in model batches, and reshards output across batches",
    "num_workers_per_node": "workers per node in NeMo's scheduler; the Dask cluster decides",
    "task_batch_size": "tasks per batch in NeMo's scheduler; Dask runs one task per partition",
    "resources": "NeMo's per-stage resource request; the Dask cluster's workers decide",
}


@dataclass
class Context:
    """What earlier stages tell later ones while a pipeline is built."""

    shards: list[str] = field(default_factory=list)
    files_per_partition: int = 1
    storage_options: dict | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    random_weights: bool = False
    clip: Any = None  # the CLIP model whose vectors the frame holds (text and image embeddings must share it)
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

    def after_write(self, result, context: Context) -> None:
        """Called with the writer's result once the output is complete (e.g. to save what was written)."""

    def parameters(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def describe(self) -> dict[str, Any]:
        description = {"stage": type(self).__name__, "name": self.name, "parameters": self.parameters()}
        engine = getattr(self, "_engine_options", None)
        if engine:
            description["engine_options"] = {name: {"value": value, "under_dask": ENGINE_OPTIONS[name]}
                                             for name, value in engine.items()}
        return description

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.parameters().items())
        return f"{type(self).__name__}({args})"


def accept_engine_options(stage: Stage, options: dict[str, Any], name: str | None = None) -> None:
    """Keep NeMo's scheduling ``options`` for the manifest (a name not in :data:`ENGINE_OPTIONS` is a
    TypeError, as a misspelt parameter should be) and the stage's ``name`` label, when given."""
    unknown = sorted(set(options) - set(ENGINE_OPTIONS))
    if unknown:
        raise TypeError(f"{type(stage).__name__} got unexpected parameters: {', '.join(unknown)}")
    stage._engine_options = dict(options)
    if name is not None:
        stage.name = name
    if options:
        log.debug("%s: %s only steer NeMo's scheduler (recorded)", type(stage).__name__, ", ".join(sorted(options)))
