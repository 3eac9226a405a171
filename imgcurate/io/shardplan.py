"""Phase "plan" of a write: which rows of which staged partition go into which output shard.

With every partition's kept-row count known, output shard ``s`` holds rows ``[s·N, (s+1)·N)`` of
the partitions' concatenation, in input order, whichever partitions they come from: every shard
but the last holds exactly ``N = images_per_tar`` samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from .outputdir import shard_name


@dataclass(frozen=True)
class ShardPlan:
    """One output shard: its stream (kept or dropped), number, and the pieces of partitions it holds."""

    stream: str
    number: int
    pieces: tuple[tuple[int, int, int], ...]  # (partition, first row, end row)

    @property
    def name(self) -> str:
        return shard_name(self.number)


def plan_shards(counts: list[int], images_per_tar: int, stream: str) -> list[ShardPlan]:
    """Cut the concatenation of partitions (``counts`` rows each) into shards of exactly ``images_per_tar`` rows."""
    plans: list[ShardPlan] = []
    pieces: list[tuple[int, int, int]] = []
    room = images_per_tar
    for partition, count in enumerate(counts):
        start = 0
        while start < count:
            take = min(room, count - start)
            pieces.append((partition, start, start + take))
            start += take
            room -= take
            if room == 0:
                plans.append(ShardPlan(stream, len(plans), tuple(pieces)))
                pieces, room = [], images_per_tar
    if pieces:
        plans.append(ShardPlan(stream, len(plans), tuple(pieces)))
    return plans


def group_plans(plans: list[ShardPlan], rows_per_task: int, images_per_tar: int) -> list[list[ShardPlan]]:
    """Runs of consecutive shards of about ``rows_per_task`` rows: one assembly task each."""
    per_task = max(1, rows_per_task // max(1, images_per_tar))
    return [plans[i : i + per_task] for i in range(0, len(plans), per_task)]
