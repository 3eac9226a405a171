"""What a new user runs, as written: the README's first-look code and ``imgcurate reshard`` on 1 GB, each
against ``cp -r`` of the same shards in the same run; and the fixed costs of the command line.

* **README first look**: the Python block under "A first look" in README.md, taken from the file
  at run time and run as it stands (only its input and output paths are replaced), in a process
  that has imported imgcurate, on Dask's default scheduler. As written, its two predicates keep
  few of the benchmark's samples, so it is measured in MB of input per second; the same code with
  predicates that keep every sample is measured in MB moved per second.
* **imgcurate reshard**: the command, a fresh process each run (its start-up included), on its
  default scheduler.
* **Start-up floor**: ``python -c "import dask.dataframe"`` against ``cp -r`` of the same 1 GB, in
  seconds: what every command on the dataframe core spends before it reads a byte; and
  ``import pandas, pyarrow.parquet``, what a path that left Dask out would still spend.
* **Fixed costs**: ``import imgcurate`` and ``imgcurate --help`` in a fresh process (against
  ``python -c pass``), and ``imgcurate reshard`` of the 4 MB sample data on its default scheduler
  and on a local cluster started for the job.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, Config, Dataset, Measure, compare, interleave, make_dataset, report, settle, timed

NAME = "defaults"
GB_DATASET = {"samples": 20_000, "shards": 20}  # about 1 GB of JPEGs
FIXED_RUNS = 7
# (measure, command, note): every command on the dataframe core imports dask.dataframe; a path without
# Dask would still load pandas and pyarrow's Parquet writer to write the shards' metadata
FLOORS = (
    ("Python start and import dask.dataframe alone, against cp -r of the 1 GB",
     [sys.executable, "-c", "import dask.dataframe"], "a whole command at 0.5x cp's MB/s has 2x cp's seconds in all"),
    ("Python start and import pandas + pyarrow.parquet alone (no Dask), against cp -r of the 1 GB",
     [sys.executable, "-c", "import pandas, pyarrow.parquet"], "the floor of a path that left Dask out"),
)
README_INPUT, README_OUTPUT = '"data/{00000..00009}.tar"', '"out/"'


def first_look_code(keep_everything: bool = False) -> str:
    """The README's first-look Python block, as it stands in README.md."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## A first look"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    if README_INPUT not in code or README_OUTPUT not in code:
        raise RuntimeError(f"the README's first look no longer reads {README_INPUT} into {README_OUTPUT}: update this benchmark")
    if keep_everything:  # the same calls, with predicates that keep every sample
        code = code.replace("df.width >= 300", "df.width >= 0").replace("caption ILIKE '%dog%'", "caption IS NOT NULL")
    return code


def run_first_look(code: str, dataset: Dataset, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    source = code.replace(README_INPUT, repr(str(dataset.directory / "*.tar"))).replace(README_OUTPUT, repr(str(out)))
    exec(compile(source, "README.md (A first look)", "exec"), {})


def copy_tree(source: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["cp", "-r", str(source), str(out)], check=True)


def command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "imgcurate"), *args]


def process_seconds(argv: list[str], runs: int = FIXED_RUNS, before=None) -> list[float]:
    times = []
    for _ in range(runs):
        if before:
            before()
        times.append(timed(lambda: subprocess.run(argv, check=True, capture_output=True, cwd=REPO)))
    return times


def run(config: Config, dataset: Dataset) -> tuple[list[Measure], dict]:
    big = dataset if config.quick else make_dataset(config.data / "jpegs-{samples}x{shards}".format(**GB_DATASET),
                                                    **GB_DATASET)
    mb = big.nbytes / 1e6
    work = Path(tempfile.mkdtemp(prefix="imgcurate-bench-", dir=config.data))
    measures: list[Measure] = []
    try:
        import imgcurate  # noqa: F401  (the first look runs in a process that has imported it, as in a notebook)

        as_written, keep_all = first_look_code(), first_look_code(keep_everything=True)
        ours, cp = interleave(config.repeats,
                              lambda: mb / timed(lambda: run_first_look(as_written, big, work / "ours")),
                              lambda: mb / timed(lambda: copy_tree(big.directory, work / "cp")), warm_up=True)
        measures.append(compare("README first look, as written (MB of input/s)", "MB/s", ours, cp, "cp -r", ">= 0.5",
                                minimum=0.5, note="its predicates keep few of these samples: mostly a read"))
        ours, cp = interleave(config.repeats,
                              lambda: mb / timed(lambda: run_first_look(keep_all, big, work / "ours")),
                              lambda: mb / timed(lambda: copy_tree(big.directory, work / "cp")), warm_up=True)
        measures.append(compare("README first look, every sample kept", "MB/s", ours, cp, "cp -r", ">= 0.5", minimum=0.5))

        def reshard() -> None:
            shutil.rmtree(work / "cli", ignore_errors=True)
            subprocess.run(command("reshard", str(big.directory), "-o", str(work / "cli"), "--images-per-tar", "1000",
                                   "--no-progress"), check=True, capture_output=True)

        ours, cp = interleave(config.repeats, lambda: mb / timed(reshard),
                              lambda: mb / timed(lambda: copy_tree(big.directory, work / "cp")), warm_up=True)
        measures.append(compare("imgcurate reshard, default scheduler, whole command", "MB/s", ours, cp, "cp -r", ">= 0.5",
                                minimum=0.5))
        # start-up floors against cp's whole copy: what a command spends before it reads a byte
        for name, floor, note in FLOORS:
            start_up, cp_seconds = interleave(config.repeats,
                                              lambda: timed(lambda: subprocess.run(floor, check=True)),
                                              lambda: timed(lambda: copy_tree(big.directory, work / "cp")))
            measures.append(compare(name, "s", start_up, cp_seconds, "cp -r (s)", "report", note=note))
        measures += fixed_costs(config, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    parameters = {"dataset_mb": round(mb, 1), "samples": big.samples, "shards": len(big.shards), "repeats": config.repeats,
                  "fixed_cost_runs": FIXED_RUNS, "first_look": first_look_code()}
    return measures, parameters


def fixed_costs(config: Config, work: Path) -> list[Measure]:
    settle()
    bare = process_seconds([sys.executable, "-c", "pass"])
    imported = process_seconds([sys.executable, "-c", "import imgcurate"])
    helped = process_seconds(command("--help"))
    cost = [i - b for i, b in zip(imported, bare)]
    measures = [
        Measure("import imgcurate, beyond Python's start", "s", statistics.median(cost), None, None, "<= 0.5",
                met=statistics.median(cost) <= 0.5, repeats=len(cost), ours_runs=cost,
                note=f"python -c pass: {statistics.median(bare):.3f} s"),
        report("imgcurate --help, whole command", "s", helped),
    ]
    sample = work / "sample"
    subprocess.run(command("sample-data", str(sample)), check=True, capture_output=True)
    out = work / "small"

    def clean() -> None:
        shutil.rmtree(out, ignore_errors=True)

    default = process_seconds(command("reshard", str(sample), "-o", str(out), "--no-progress"), before=clean)
    local = process_seconds(command("reshard", str(sample), "-o", str(out), "--no-progress", "--scheduler", "local"),
                            runs=max(3, FIXED_RUNS // 2), before=clean)
    measures.append(compare("imgcurate reshard of the sample data (4 MB): local cluster / default", "s", local, default,
                            "the default scheduler (threads)", "report",
                            note="what a cluster would cost a small job; the default starts none"))
    return measures


if __name__ == "__main__":
    raise SystemExit("run the benchmarks with: python benchmarks/run.py --only defaults")
