"""``Pipeline``: an ordered list of stages, validated as a whole before any work starts."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ..common.errors import MEMBER_REASONS, SHARD_REASONS, PipelineError
from ..io.writer import WriteResult
from .base import Context, Stage
from .captions import ImageTextAlignmentFilterStage, ImageTextBasicFilterStage, UidSubsetStage
from .dedup import ImageDeduplicationStage
from .models import ImageAestheticFilterStage, ImageEmbeddingStage, ImageNSFWFilterStage
from .readwrite import FilePartitioningStage, ImageReaderStage, ImageWriterStage

log = logging.getLogger("imgcurate")

# the stages a configuration file can name, by class name
STAGES = {cls.__name__: cls for cls in (FilePartitioningStage, ImageReaderStage, ImageEmbeddingStage,
                                        ImageAestheticFilterStage, ImageNSFWFilterStage, ImageTextAlignmentFilterStage,
                                        ImageTextBasicFilterStage, UidSubsetStage, ImageDeduplicationStage, ImageWriterStage)}
# stages that make sense once per pipeline
ONCE = (FilePartitioningStage, ImageReaderStage, ImageEmbeddingStage, UidSubsetStage, ImageWriterStage)


@dataclass
class PipelineResult:
    """What a pipeline run wrote: the writer's summary plus counts after each stage."""

    name: str
    write: WriteResult
    stage_counts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def output_dir(self) -> str:
        return self.write.output_dir

    @property
    def manifest(self) -> dict[str, Any]:
        return self.write.manifest

    @property
    def summary(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "shards": self.write.shards, "samples": self.write.samples,
                "bytes": self.write.bytes, **{k: v for k, v in self.write.counts.items() if isinstance(v, int)}}

    def metadata(self, storage_options: dict | None = None):
        """The written samples' metadata as a Dask DataFrame (one partition per shard)."""
        import dask.dataframe as dd

        if not self.write.shards:
            raise ValueError(f"{self.output_dir} holds no shards: every sample was filtered out or failed")
        return dd.read_parquet(self.output_dir, storage_options=storage_options)

    def __str__(self) -> str:
        return stage_table(self.stage_counts) + "\n" + str(self.write)

    def __repr__(self) -> str:
        return f"PipelineResult({self.name!r}, {self.write!r})\n" + stage_table(self.stage_counts)



def stage_counts(stages: list[Stage], counts: dict[str, Any]) -> list[dict[str, Any]]:
    """Samples entering and leaving each stage, from the writer's counts."""
    failed = counts.get("failed_by_reason", {})
    dropped = counts.get("dropped_by_stage", {})
    remaining = counts["read"]
    attributed: set[str] = set()  # a reason two stages can cause is counted once, at the first of them
    table = []
    for stage in stages:
        if isinstance(stage, FilePartitioningStage):
            continue
        row: dict[str, Any] = {"stage": stage.name, "in": remaining}
        if isinstance(stage, ImageWriterStage):
            row.update(out=counts["written"])
        else:
            lost = {r: failed[r] for r in stage.failure_reasons if failed.get(r) and r not in attributed}
            attributed.update(stage.failure_reasons)
            if lost:
                row["failed"] = lost
            # a stage filtering by several rules labels rows "<stage>:<rule>"
            by_rule = {label: n for label, n in dropped.items() if label.startswith(stage.name + ":")}
            filtered = dropped.get(stage.name, 0) + sum(by_rule.values())
            if filtered:
                row["filtered"] = filtered
            if by_rule:
                row["filtered_by_rule"] = {label.split(":", 1)[1]: n for label, n in sorted(by_rule.items())}
            if isinstance(stage, ImageReaderStage):
                row["in"] = None  # samples come into being here
                members = {r: n for r, n in counts.get("rejected_members_by_reason", {}).items() if r in MEMBER_REASONS}
                shards = {r: n for r, n in counts.get("rejected_shards_by_reason", {}).items() if r in SHARD_REASONS}
                if members:
                    row["rejected_members"] = members
                if shards:
                    row["rejected_shards"] = shards
            remaining -= sum(lost.values()) + filtered
            row["out"] = remaining
        table.append(row)
    return table


def stage_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'stage':<10} {'in':>8} {'out':>8}  notes"]
    for row in rows:
        notes = []
        for key in ("failed", "filtered", "filtered_by_rule", "rejected_members", "rejected_shards"):
            if row.get(key):
                value = row[key]
                notes.append(f"{key} " + (", ".join(f"{r} {n}" for r, n in value.items()) if isinstance(value, dict) else str(value)))
        entered = "" if row["in"] is None else row["in"]
        lines.append(f"{row['stage']:<10} {entered:>8} {row['out']:>8}  {'; '.join(notes)}")
    return "\n".join(lines)


class Pipeline:
    """Stages run in order: partition → read → embed → filters → write.

    ``run()`` validates the whole pipeline first (stage order, inputs, output directory, model
    weights, thresholds), so a mistake fails in seconds, not after hours of embedding.
    """

    def __init__(self, name: str = "pipeline", description: str | None = None, stages: list[Stage] | None = None,
                 config: dict[str, Any] | None = None):
        self.name = name
        self.description = description
        self.config = config  # NeMo Curator's per-pipeline settings: recorded in the manifest
        self.stages: list[Stage] = []
        for stage in stages or ():
            self.add_stage(stage)

    def add_stage(self, stage: Stage) -> "Pipeline":
        if not isinstance(stage, Stage):
            raise PipelineError(f"add_stage takes a stage, got {type(stage).__name__}")
        self.stages.append(stage)
        return self

    def __repr__(self) -> str:
        inner = "".join(f"\n  {stage!r}," for stage in self.stages)
        return f"Pipeline(name={self.name!r}, stages=[{inner}\n])"

    # -- validation ---------------------------------------------------------------------

    def _check_order(self) -> None:
        kinds = [type(s) for s in self.stages]
        names = [k.__name__ for k in kinds]
        if not self.stages:
            raise PipelineError("the pipeline has no stages")
        if kinds[0] is not FilePartitioningStage:
            raise PipelineError("the first stage must be FilePartitioningStage (which files to read)")
        if len(kinds) < 2 or kinds[1] is not ImageReaderStage:
            raise PipelineError("ImageReaderStage must come right after FilePartitioningStage")
        if ImageWriterStage not in kinds:
            raise PipelineError("the pipeline has no ImageWriterStage, so nothing would be written; add one at the end")
        if kinds[-1] is not ImageWriterStage:
            raise PipelineError("ImageWriterStage must be the last stage")
        for kind in ONCE:
            if kinds.count(kind) > 1:
                raise PipelineError(f"{kind.__name__} appears {kinds.count(kind)} times; use it once")
        provided: set[str] = set()
        for i, stage in enumerate(self.stages):
            missing = [column for column in stage.requires if column not in provided]
            if missing:
                makers = [n for n, cls in STAGES.items() if set(missing) & set(cls.provides)]
                raise PipelineError(f"{names[i]} needs {', '.join(missing)}: put {' or '.join(makers) or 'a stage that adds it'} "
                                    "before it")
            provided.update(stage.provides)

    def validate(self) -> Context:
        """Check everything that can be checked before reading data; returns the build context."""
        self._check_order()
        context = Context()
        for stage in self.stages:
            stage.validate(context)
        if context.random_weights:
            log.warning("the embedding model has RANDOM weights: embeddings and scores are meaningless "
                        "(a demonstration of the pipeline, not a curation)")
        return context

    def build(self, context: Context | None = None):
        """The lazy Dask DataFrame every stage but the writer describes, and the context."""
        context = context or self.validate()
        df = None
        for stage in self.stages[:-1]:
            df = stage.apply(df, context)
        return df, context

    # -- running ------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        description = {"name": self.name, "description": self.description, "stages": [s.describe() for s in self.stages]}
        if self.config:
            description["config"] = self.config
        return description

    def run(self, executor=None, initial_tasks=None, checkpoint_path=None, *, client=None,
            scheduler: str | None = None) -> PipelineResult:
        """Run on ``client`` (a ``distributed.Client``), else on ``scheduler`` / ``$IMGCURATE_SCHEDULER``,
        else on the active Dask client, else on the scheduler chosen for the input (a local cluster
        for large inputs). ``executor`` may be a ``distributed.Client`` or one of NeMo Curator's
        executors (:mod:`~imgcurate.stages.executors`), which run on Dask the same way.
        NeMo's ``initial_tasks`` and ``checkpoint_path`` have no counterpart here (the first stage
        lists the inputs; a rerun replaces an interrupted output): they are recorded, with a warning.
        """
        from ..common.cluster import dask_client
        from .executors import DaskExecutor

        engine = self._engine_record(executor, initial_tasks, checkpoint_path)
        if isinstance(executor, DaskExecutor):
            client, scheduler = client or executor.client, scheduler or executor.scheduler
        elif executor is not None:
            client = executor  # a distributed.Client, as run(client) always took
        context = self.validate()
        writer: ImageWriterStage = self.stages[-1]  # type: ignore[assignment]
        verbose = writer.verbose or any(getattr(s, "verbose", False) for s in self.stages)
        local = dask_client(scheduler, work="compute", shards=context.shards, storage_options=context.storage_options)
        with (client.as_current() if client is not None else local):
            df, context = self.build(context)

            def manifest_extra(counts: dict[str, Any]) -> dict[str, Any]:
                return {"pipeline": {**self.describe(), **engine}, "models": context.models,
                        "random_weights": context.random_weights, "stage_counts": stage_counts(self.stages, counts),
                        **context.manifest}

            written = writer.write(df, context, manifest_extra)
            for stage in self.stages:
                stage.after_write(written, context)
        result = PipelineResult(self.name, written, written.manifest["stage_counts"])
        if verbose:
            print(result)
        return result

    @staticmethod
    def _engine_record(executor, initial_tasks, checkpoint_path) -> dict[str, Any]:
        """What the manifest says of NeMo's run arguments."""
        from .executors import DaskExecutor

        record: dict[str, Any] = {}
        if isinstance(executor, DaskExecutor):
            record["executor"] = executor.describe()
        if initial_tasks:
            log.warning("initial_tasks have no effect here: FilePartitioningStage lists the input shards")
            record["initial_tasks"] = {"value": repr(initial_tasks)[:200], "under_dask": "no effect"}
        if checkpoint_path is not None:
            log.warning("checkpoint_path has no effect here: a rerun into the same output directory replaces an "
                        "interrupted run")
            record["checkpoint_path"] = {"value": str(checkpoint_path), "under_dask": "no effect"}
        return record

    # -- configuration files ------------------------------------------------------------

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Pipeline":
        """A pipeline from ``{"name": …, "stages": [{"StageName": {params}}, …]}``."""
        if not isinstance(config, dict) or not isinstance(config.get("stages"), list):
            raise PipelineError("a pipeline config needs a 'stages' list")
        pipeline = cls(name=config.get("name", "pipeline"), description=config.get("description"))
        for entry in config["stages"]:
            if isinstance(entry, str):
                entry = {entry: {}}
            if not isinstance(entry, dict) or len(entry) != 1:
                raise PipelineError(f"each stage entry is {{StageName: {{parameters}}}}, got {entry!r}")
            [(stage_name, params)] = entry.items()
            if stage_name not in STAGES:
                raise PipelineError(f"unknown stage {stage_name!r}; known: {', '.join(STAGES)}")
            try:
                pipeline.add_stage(STAGES[stage_name](**(params or {})))
            except TypeError as exc:
                raise PipelineError(f"{stage_name}: {exc}") from exc
        return pipeline

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "Pipeline":
        import yaml

        with open(path, encoding="utf-8") as f:
            return cls.from_config(yaml.safe_load(f))

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "stages": [{type(s).__name__: s.parameters()} for s in self.stages]}
