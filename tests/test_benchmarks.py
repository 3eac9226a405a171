"""The benchmark suite runs end to end on a tiny dataset and writes well-formed result files.

Not a timing test: the figures of a run this small mean nothing, so no ratio is asserted; what is
checked is that every benchmark ran both sides, and that each result file says what it measured,
against what, with which goal, and on which machine.
"""

from __future__ import annotations

import io
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"
MEASURE_KEYS = {"name", "unit", "ours", "peer", "peer_name", "goal", "ratio", "met", "repeats", "ours_runs",
                "peer_runs", "note"}
READ_ROUNDS = 3  # benchmarks/bench_io.py: READ_ROUNDS_PER_REPEAT rounds of the read per repeat
EXPECTED = {
    "io": ["reshard throughput", "reshard samples/s", "read tar -> partitions", "reshard peak RSS, 10x data / 1x"],
    "models": ["decode + preprocess to 224 px", "curate end to end"],
    "scaling": ["2 workers / 1 worker, one core each", "2 workers / 1 worker, unpinned"],
    "captions": ["text encoding", "clip_score on a frame with embeddings", "filter_clip_score(top_fraction"],
    "dedup": ["hash_images (pHash) / imagehash.phash", "near-duplicate search", "semantic dedup",
              "clusters cut into chunks"],
    "search": ["recall@10 vs exact", "recall@10, ours / autofaiss", "single-query latency p50", "single-query latency p99",
               "queries/s in batches", "index build time", "index build peak RSS", "recall@10 vs exact", "export embeddings, float16", "export embeddings, float32"],
}


@pytest.fixture(scope="module")
def photo_env(tmp_path_factory, photos) -> dict[str, str]:
    """The environment of a benchmark run: its images are drawn from the photos, the real ones or the
    fixture's stand-ins."""
    base = tmp_path_factory.mktemp("bench-photos")
    (base / "photos").mkdir()
    for photo in photos:
        (base / "photos" / photo.name).symlink_to(photo)
    return {**os.environ, "IMGCURATE_TEST_DATA": str(base)}


@pytest.fixture(scope="module")
def results(tmp_path_factory, photo_env):
    base = tmp_path_factory.mktemp("bench")
    out = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--samples", "24", "--repeats", "1", "--data", str(base / "data"),
         "--results", str(base / "results")],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False, env=photo_env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return base, out.stdout


def load(base: Path, name: str) -> dict:
    return json.loads((base / "results" / f"{name}.json").read_text())


def test_the_dataset_is_realistic_jpegs_of_several_sizes(results):
    base, _ = results
    shards = sorted((base / "data").glob("*/*.tar"))
    assert len(shards) == 4
    sizes = set()
    for shard in shards:
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            for member in tar:
                if member.name.endswith(".jpg"):
                    image = Image.open(io.BytesIO(tar.extractfile(member).read()))
                    image.load()
                    assert image.format == "JPEG" and image.mode == "RGB"
                    sizes.add(max(image.size))
        assert {n.rsplit(".", 1)[1] for n in names} == {"jpg", "txt", "json"}
    assert len(sizes) >= 5 and min(sizes) < 400 and max(sizes) > 1000


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_result_files_hold_both_sides_of_every_measure(results, name):
    base, _ = results
    document = load(base, name)
    assert document["benchmark"] == name and document["status"] == "ok" and document["quick"] is True
    assert document["machine"]["cpus"] >= 1 and document["machine"]["python"]
    assert document["parameters"]["repeats"] == 1
    measures = document["measures"]
    assert len(measures) == len(EXPECTED[name])
    for measure, expected in zip(measures, EXPECTED[name]):
        assert set(measure) == MEASURE_KEYS
        assert expected in measure["name"]
        runs = READ_ROUNDS if measure["name"].startswith("read") else 1
        assert measure["repeats"] == runs and len(measure["ours_runs"]) == runs and len(measure["peer_runs"]) == runs
        for value in measure["ours_runs"] + measure["peer_runs"]:
            assert math.isfinite(value) and value > 0
        assert measure["ours"] == statistics.median(measure["ours_runs"])
        assert measure["peer"] == statistics.median(measure["peer_runs"])
        assert measure["peer_name"] and measure["unit"]
        assert measure["ratio"] == pytest.approx(measure["ours"] / measure["peer"])
        if measure["goal"] == "report":
            assert measure["met"] is None
        else:
            threshold = float(measure["goal"].split()[1])
            holds = measure["ratio"] >= threshold if measure["goal"].startswith(">=") else measure["ratio"] <= threshold
            assert measure["met"] is holds


def test_gpu_benchmark_says_when_it_did_not_run(results):
    import torch

    base, _ = results
    document = load(base, "gpu")
    if torch.cuda.is_available():
        assert document["status"] == "ok" and len(document["measures"]) == 2
    else:
        assert document["status"] == "not run: no CUDA device" and document["measures"] == []


def test_the_run_prints_the_table_of_every_result(results):
    _, stdout = results
    table = stdout[stdout.index("| benchmark | measure |"):]
    for names in EXPECTED.values():
        for name in names:
            assert name in table
    assert "not run: no CUDA device" in table or "gpu |" in table


def test_only_runs_the_named_benchmarks_and_rejects_unknown_ones(tmp_path, photo_env):
    out = subprocess.run([sys.executable, str(RUN), "--only", "nonsense"], capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 2 and "unknown benchmark nonsense" in out.stderr
    out = subprocess.run([sys.executable, str(RUN), "--quick", "--samples", "8", "--repeats", "1", "--only", "gpu",
                          "--data", str(tmp_path / "data"), "--results", str(tmp_path / "results")],
                         capture_output=True, text=True, cwd=REPO, timeout=120, check=False, env=photo_env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["gpu.json"]
