"""Jobs on a real Dask cluster: a ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1.

Every job run on the cluster (command line with ``--scheduler``, ``IMGCURATE_SCHEDULER``, Python
API with ``client=``) must write the same bytes as the same job run in-process with
``--scheduler threads``; so must a job that loses a worker halfway, and the rerun of a job whose
process was killed while writing. The curate jobs use the tiny random-weight model and random
heads (labelled as random in every manifest): the point is where the work runs, not the scores.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import pytest

from imgcurate.app.cli import main
from imgcurate.common.cluster import SCHEDULER_ENV, dask_client
from imgcurate.io.reader import read_webdataset
from imgcurate.io.outputdir import MANIFEST_FILE, MARKER, TMP_DIR
from imgcurate.io.writer import write_webdataset
from imgcurate.models import TINY_MODEL
from imgcurate.stages import (
    FilePartitioningStage, ImageAestheticFilterStage, ImageEmbeddingStage, ImageNSFWFilterStage, ImageReaderStage,
    ImageWriterStage, Pipeline,
)

from conftest import build_photo_dataset

BIN = Path(sys.executable).parent
SHARDS = 36  # one partition each
COPIES = 6  # the 30 photos, 6 times over: 180 samples, 5 per shard
IMAGES_PER_TAR = 7  # output shards cut across input partitions
# what differs between two runs of one job into two directories
RUN_FIELDS = {"created", "elapsed_seconds", "output_dir", "replaced", "overwrite", "verbose"}
# the thresholds below suit the random heads, not LAION's scale, and the stage says so
pytestmark = pytest.mark.filterwarnings("ignore:ImageAestheticFilterStage.*below LAION:UserWarning")


class Cluster:
    """A scheduler and worker processes, each ``dask worker`` in its own process group."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.scheduler_file = directory / "scheduler.json"
        self.logs: list = []
        # should this process die without its teardown, the scheduler closes once idle for 5 minutes
        # and the workers a minute after losing it
        self.scheduler = self._spawn("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                                     "--scheduler-file", str(self.scheduler_file), "--idle-timeout", "300")
        deadline = time.monotonic() + 60
        while not self.scheduler_file.exists():
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start; see {directory}/scheduler-0.log")
            time.sleep(0.1)
        self.address = json.loads(self.scheduler_file.read_text())["address"]
        self.workers: list[subprocess.Popen] = []
        self.client = None

    def _spawn(self, kind: str, *args: str) -> subprocess.Popen:
        log = open(self.directory / f"{kind}-{len(self.logs)}.log", "wb")
        self.logs.append(log)
        env = {k: v for k, v in os.environ.items() if k != SCHEDULER_ENV}
        return subprocess.Popen([str(BIN / "dask"), kind, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

    def start_worker(self) -> None:
        # --preload: torch and open_clip are imported as the worker starts, not inside the first task
        self.workers.append(self._spawn(
            "worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1", "--nworkers", "1",
            "--nthreads", "1", "--memory-limit", "2GiB", "--no-dashboard", "--local-directory", str(self.directory),
            "--death-timeout", "60", "--preload", "imgcurate.models",
        ))

    def ensure_workers(self, n: int) -> None:
        alive = [w for w in self.workers if w.poll() is None]
        for _ in range(n - len(alive)):
            self.start_worker()
        self.client.wait_for_workers(n, timeout=180)

    def kill_worker(self, address: str) -> None:
        """SIGKILL the worker at ``address`` and its nanny, as when a node is lost."""
        pid = self.client.run(os.getpid, workers=[address])[address]
        [group] = [w for w in self.workers if w.poll() is None and os.getpgid(pid) == w.pid]
        os.killpg(group.pid, signal.SIGKILL)
        group.wait()

    def transitions(self) -> int:
        """Task state changes the scheduler has made so far."""
        return self.client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)

    def runs(self, job, tasks: int):
        """``job()``, checking that the scheduler ran at least ``tasks`` tasks for it (a task makes
        several transitions there; a job run in-process makes none)."""
        before = self.transitions()
        result = job()
        assert self.transitions() - before >= 2 * tasks
        return result

    def wait_until_idle(self, timeout: float = 60) -> None:
        """Wait until the scheduler holds no tasks (those a killed client had started run to their end)."""
        deadline = time.monotonic() + timeout
        while self.client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
            assert time.monotonic() < deadline, "the cluster did not go idle"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        processes = [p for p in (*self.workers, self.scheduler) if p.poll() is None]
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from distributed import Client

    cluster = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        cluster.start_worker()
        cluster.start_worker()
        cluster.client = Client(cluster.address, set_as_default=False)
        cluster.ensure_workers(2)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos) -> Path:
    directory = tmp_path_factory.mktemp("wds") / "in"
    build_photo_dataset(directory, photos * COPIES, shards=SHARDS)
    return directory


@pytest.fixture(scope="module")
def thresholds(dataset) -> tuple[float, float]:
    """Thresholds that split the random model's scores: the aesthetic median and the NSFW 80th percentile
    of a few shards (random heads score every image almost alike, so no fixed number would do)."""
    from imgcurate import embed
    from imgcurate.models import AestheticScorer, CLIPImageEmbedder, NSFWScorer

    df = read_webdataset(sorted(str(p) for p in dataset.glob("*.tar"))[:6], with_images=False)
    scored = embed(df, CLIPImageEmbedder(TINY_MODEL, pretrained=None), aesthetic=AestheticScorer("random"),
                   nsfw=NSFWScorer("random"))
    with dask.config.set(scheduler="threads"):
        scores = scored[["aesthetic_score", "nsfw_score"]].compute()
    return float(scores.aesthetic_score.median()), float(scores.nsfw_score.quantile(0.8))


def curate_args(dataset: Path, out: Path, thresholds: tuple[float, float], *extra: str) -> list[str]:
    aesthetic, nsfw = thresholds
    return ["curate", str(dataset), "-o", str(out), "--model", TINY_MODEL, "--pretrained", "random",
            "--aesthetic-weights", "random", "--nsfw-weights", "random", f"--aesthetic-threshold={aesthetic!r}",
            f"--nsfw-threshold={nsfw!r}", "--images-per-tar", str(IMAGES_PER_TAR), "--keep-dropped", *extra]


def job_args(job: str, dataset: Path, out: Path, thresholds: tuple[float, float]) -> list[str]:
    if job == "curate":
        return curate_args(dataset, out, thresholds)
    images_per_tar = 1 if job == "reshard-1" else IMAGES_PER_TAR
    return ["reshard", str(dataset), "-o", str(out), "--images-per-tar", str(images_per_tar)]


def curate_pipeline(dataset: Path, out: Path, thresholds: tuple[float, float]) -> Pipeline:
    """The job ``curate_args`` describes, written with the stage API."""
    aesthetic, nsfw = thresholds
    return Pipeline(name="curate", stages=[
        FilePartitioningStage(str(dataset)),
        ImageReaderStage(),
        ImageEmbeddingStage(TINY_MODEL, "random"),
        ImageAestheticFilterStage(aesthetic, weights="random"),
        ImageNSFWFilterStage(nsfw, weights="random"),
        ImageWriterStage(str(out), images_per_tar=IMAGES_PER_TAR, keep_dropped=True),
    ])


def _without(value, fields: set[str]):
    if isinstance(value, dict):
        return {k: _without(v, fields) for k, v in value.items() if k not in fields}
    if isinstance(value, list):
        return [_without(v, fields) for v in value]
    return value


def snapshot(directory: Path, manifest_ignores: tuple[str, ...] = ()) -> dict[str, object]:
    """Every file's bytes; the manifest as JSON without the fields that name the run."""
    files: dict[str, object] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            name = path.relative_to(directory).as_posix()
            if name == MANIFEST_FILE:
                files[name] = _without(json.loads(path.read_text()), RUN_FIELDS | set(manifest_ignores))
            else:
                files[name] = path.read_bytes()
    return files


def assert_same_output(directory: Path, reference: Path, manifest_ignores: tuple[str, ...] = ()) -> None:
    got, expected = snapshot(directory, manifest_ignores), snapshot(reference, manifest_ignores)
    assert sorted(got) == sorted(expected)
    assert [name for name in expected if got[name] != expected[name]] == []


def written_keys(directory: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [key for path in sorted(directory.glob("[0-9]*.parquet")) for key in pq.read_table(path, columns=["key"])["key"].to_pylist()]


@pytest.fixture(scope="module")
def references(tmp_path_factory, dataset, thresholds):
    """Outputs of the jobs run in-process (``--scheduler threads``), made on first use."""
    root = tmp_path_factory.mktemp("reference")

    def reference(job: str) -> Path:
        out = root / job
        if not out.exists():
            # Dask's nanny starts workers with OMP_NUM_THREADS=1, and torch's float sums come out
            # differently in the last bit with another thread count; a fresh process is needed, since
            # torch.set_num_threads does not reach threads that already ran torch code
            env = {**{k: v for k, v in os.environ.items() if k != SCHEDULER_ENV}, "OMP_NUM_THREADS": "1"}
            command = [str(BIN / "imgcurate"), *job_args(job, dataset, out, thresholds), "--scheduler", "threads", "--no-progress"]
            subprocess.run(command, env=env, check=True, capture_output=True)
        return out

    return reference


def test_default_cluster_is_one_single_threaded_process_per_core(caplog):
    from dask.system import CPU_COUNT

    from imgcurate.common.backend import cuda_available

    if cuda_available():
        pytest.skip("with a GPU the default is a LocalCUDACluster (tests/test_gpu.py)")
    with caplog.at_level(logging.INFO, logger="imgcurate"), dask_client("local") as client:
        cluster = client.cluster
        workers = client.scheduler_info()["workers"].values()
        pids = client.run(os.getpid)
        assert type(cluster).__name__ == "LocalCluster"
        assert len(workers) == CPU_COUNT and {w["nthreads"] for w in workers} == {1}
        assert len(set(pids.values())) == CPU_COUNT and os.getpid() not in pids.values()
    assert client.status == "closed" and cluster.status.name == "closed"
    assert f"started a LocalCluster: {CPU_COUNT} workers, {CPU_COUNT} threads; dashboard: http://" in caplog.text


@pytest.mark.slow
def test_reshard_on_the_cluster_writes_what_a_local_run_writes(cluster, dataset, references, tmp_path, capsys, caplog,
                                                               monkeypatch):
    reference = references("reshard")
    args = ["reshard", str(dataset), "--images-per-tar", str(IMAGES_PER_TAR)]
    with caplog.at_level(logging.INFO, logger="imgcurate"):
        assert cluster.runs(lambda: main([*args, "-o", str(tmp_path / "cli"), "--scheduler", cluster.address]), SHARDS) == 0
    assert_same_output(tmp_path / "cli", reference)
    assert f"Dask scheduler {cluster.address}: 2 workers, 2 threads; dashboard: http://127.0.0.1:" in caplog.text
    progress = capsys.readouterr().err
    assert "staging: 100%" in progress and f"{SHARDS}/{SHARDS}" in progress

    monkeypatch.setenv(SCHEDULER_ENV, cluster.address)
    assert cluster.runs(lambda: main([*args, "-o", str(tmp_path / "env"), "--no-progress"]), SHARDS) == 0
    monkeypatch.delenv(SCHEDULER_ENV)
    assert_same_output(tmp_path / "env", reference)

    df = read_webdataset(dataset, with_images=False)
    cluster.runs(lambda: write_webdataset(df, tmp_path / "api", images_per_tar=IMAGES_PER_TAR, client=cluster.client), SHARDS)
    assert_same_output(tmp_path / "api", reference)


@pytest.mark.slow
def test_inspect_and_query_run_on_the_given_scheduler(cluster, dataset, capsys):
    inspect = ["inspect", str(dataset), "--json", "--scheduler", cluster.address]
    assert cluster.runs(lambda: main(inspect), SHARDS) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards"] == SHARDS and report["samples"] == 30 * COPIES

    query = ["query", str(dataset), "SELECT count(*) AS n, count(DISTINCT key) AS keys FROM samples", "--format", "json",
             "--scheduler", cluster.address]
    assert cluster.runs(lambda: main(query), SHARDS) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 30 * COPIES, "keys": 30 * COPIES}]


@pytest.mark.slow
def test_curate_on_the_cluster_writes_what_a_local_run_writes_and_loads_models_once_per_worker(
        cluster, dataset, thresholds, references, tmp_path, capsys):
    # the same job through the Python API (Pipeline.run(client=...)) is checked against the same
    # reference in test_curate_finishes_when_a_worker_is_killed_midway
    reference = references("curate")
    manifest = json.loads((reference / MANIFEST_FILE).read_text())
    assert manifest["random_weights"] is True
    counts = manifest["counts"]
    assert counts["written"] > 0 and counts["dropped_by_stage"]["aesthetic"] > 0 and counts["dropped_by_stage"]["nsfw"] > 0

    assert main(curate_args(dataset, tmp_path / "cli", thresholds, "--scheduler", cluster.address)) == 0
    assert_same_output(tmp_path / "cli", reference)
    assert f"{SHARDS}/{SHARDS}" in capsys.readouterr().err

    def model_loads():
        from imgcurate.models.clip import _load_model
        from imgcurate.models.heads import _load_head

        return _load_model.cache_info()._asdict(), _load_head.cache_info()._asdict()

    loads = cluster.client.run(model_loads)
    assert len(loads) == 2
    for visual, heads in loads.values():
        # one model build per worker process, used for every partition it ran
        assert visual["misses"] == 1 and visual["currsize"] == 1 and visual["hits"] >= 1
        assert heads["misses"] == 2 and heads["currsize"] == 2
    assert sum(visual["hits"] + visual["misses"] for visual, _ in loads.values()) >= SHARDS


@pytest.mark.slow
def test_curate_finishes_when_a_worker_is_killed_midway(cluster, dataset, thresholds, references, tmp_path):
    def staging_progress(dask_scheduler):
        """Staging tasks (total, finished), and the workers both holding a finished one and running a task."""
        from dask.utils import key_split

        staging = [ts for ts in dask_scheduler.tasks.values() if key_split(ts.key) == "stage_partition"]
        finished = [ts for ts in staging if ts.state == "memory"]
        holding = {ws.address for ts in finished for ws in ts.who_has}
        running = {ts.processing_on.address for ts in dask_scheduler.tasks.values() if ts.processing_on is not None}
        return len(staging), len(finished), sorted(holding & running)

    cluster.ensure_workers(2)
    out = tmp_path / "out"
    pipeline = curate_pipeline(dataset, out, thresholds)
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(pipeline.run, cluster.client)
        deadline = time.monotonic() + 120
        while True:
            total, finished, victims = cluster.client.run_on_scheduler(staging_progress)
            if finished and victims:
                break
            assert not job.done() and time.monotonic() < deadline, "the job ended before a worker could be killed"
            time.sleep(0.01)
        cluster.kill_worker(victims[0])
        result = job.result(timeout=180)
    assert finished < total == SHARDS  # the worker died with results finished and work under way
    assert len(cluster.client.scheduler_info()["workers"]) == 1

    # every sample exactly once, the same bytes as a clean run (the stage API's description of the
    # job in the manifest spells out defaults the command line leaves out)
    reference = references("curate")
    keys = written_keys(out)
    assert len(keys) == len(set(keys)) == result.write.samples and keys == written_keys(reference)
    assert_same_output(out, reference, manifest_ignores=("pipeline",))


@pytest.mark.slow
@pytest.mark.parametrize("job, phase", [("reshard", "staging"), ("reshard-1", "assembling")])
def test_rerun_after_the_job_was_killed_while_writing(cluster, dataset, thresholds, references, tmp_path, job, phase):
    out = tmp_path / "out"
    args = [*job_args(job, dataset, out, thresholds), "--scheduler", cluster.address, "--no-progress"]
    # files that exist only while that phase is under way (each run stages in its own folder)
    pattern = "*/kept/*.arrow" if phase == "staging" else "*/out-kept/*.tar"
    phase_files = out / TMP_DIR

    process = subprocess.Popen([str(BIN / "imgcurate"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (phase_files.is_dir() and any(phase_files.glob(pattern))):
        assert process.poll() is None, f"the job ended before it could be killed: {process.stderr.read().decode()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert (out / MARKER).exists() and not (out / MANIFEST_FILE).exists()
    cluster.wait_until_idle()  # the killed client's running tasks finish on the workers

    # the marker lets a rerun replace the interrupted output without --overwrite
    assert main(args) == 0
    assert not (out / MARKER).exists() and not (out / TMP_DIR).exists()
    assert_same_output(out, references(job))


def test_the_default_scheduler_follows_the_work_and_the_input(tmp_path, monkeypatch):
    import dask.system

    from imgcurate.common.cluster import LOCAL_CLUSTER_MIN_BYTES, default_scheduler

    small, big = tmp_path / "small.tar", tmp_path / "big.tar"
    small.write_bytes(b"\0" * 1024)
    with open(big, "wb") as f:
        f.truncate(LOCAL_CLUSTER_MIN_BYTES)  # sparse: its size is what counts
    for work in ("copy", "read"):
        assert default_scheduler(work, [str(big)]) == "threads"
    assert default_scheduler("compute", [str(small)]) == "threads"
    assert default_scheduler("compute", [str(small), str(big)]) == "local"
    monkeypatch.setattr(dask.system, "CPU_COUNT", 1)
    monkeypatch.setattr("imgcurate.common.backend.cuda_cluster_wanted", lambda: False)
    assert default_scheduler("compute", [str(big)]) == "threads"  # one core and no GPU: nothing to gain
