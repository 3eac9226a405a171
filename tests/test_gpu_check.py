"""benchmarks/gpu_check.py: its dry run on this machine (every step listed, the CPU ones run, the GPU
ones skipped) and its table; and the GPU install set-up it relies on (extras per CUDA major, the
Makefile's torch pin and docs/gpu.md saying the same)."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402

GPU_CHECKS = [name for name, needs_gpu, _ in gpu_check.CHECKS if needs_gpu]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, photos):
    results = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMGCURATE_TEST_DATA": str(photos[0].parent.parent)}
    # "cpu tests" runs two of this suite's files again; skipped here to keep the suite quick
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--skip", "cpu tests",
                          "--results", str(results), "--work", str(results / "work")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout, json.loads((results / "gpu_check.json").read_text())


def test_the_dry_run_lists_every_step_runs_the_cpu_ones_and_skips_the_gpu_ones(dry_run):
    stdout, document = dry_run
    names = [name for name, _, _ in gpu_check.CHECKS]
    assert document["format"] == "imgcurate-gpu-check-v1" and document["dry_run"] is True
    assert [r["check"] for r in document["checks"]] == names
    rows = {r["check"]: r for r in document["checks"]}
    assert rows["environment"]["status"] == "ok" and rows["environment"]["value"].startswith("python ")
    assert rows["install"]["status"] == "skipped" and "would run python -m pip install" in rows["install"]["note"]
    assert rows["cpu tests"]["status"] == "skipped" and rows["cpu tests"]["note"] == "--skip"
    assert rows["cpu reference"]["status"] == "ok" and re.fullmatch(r"\d+ kept of 48", rows["cpu reference"]["value"])
    assert rows["extension"]["status"] in ("ok", "skipped")
    for name in GPU_CHECKS:
        assert (rows[name]["status"], rows[name]["note"]) == ("skipped", "dry run: needs a CUDA GPU"), name
    # every step is announced before any runs, with where it runs
    for name, needs_gpu, _ in gpu_check.CHECKS:
        assert re.search(rf"^  {'GPU' if needs_gpu else 'CPU'}  {re.escape(name)}$", stdout, re.M), name


def test_the_printed_table_is_the_json(dry_run):
    stdout, document = dry_run
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert lines[:2] == ["| check | status | value | note |", "|---|---|---|---|"]
    assert lines[2:] == gpu_check.table(document["checks"]).splitlines()[2:]
    assert [line.split(" | ")[0].strip("| ") for line in lines[2:]] == [name for name, _, _ in gpu_check.CHECKS]


def test_the_install_asks_for_the_extra_of_torchs_cuda_major():
    for major, suffixes in ((12, ("cu12", "cuda12x")), (13, ("cu13", "cuda13x"))):
        wanted = gpu_check.requirements({"torch_cuda": f"{major}.0"})
        rapids = [w for w in wanted if w.startswith(("cudf", "dask-cudf", "cupy"))]
        assert len(rapids) == 3 and all(w.endswith(suffixes) for w in rapids), rapids
        assert "dask-cuda" in wanted and not any(re.match(r"torch\b(?!vision)", w) for w in wanted)
    assert not any(w.startswith("cudf") for w in gpu_check.requirements({"torch_cuda": None}))


def test_extras_makefile_and_docs_name_one_combination_per_cuda_major():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    extras = config["options.extras_require"]
    for extra, major in (("gpu", 12), ("gpu-cuda13", 13)):
        packages = {line.strip() for line in extras[extra].splitlines() if line.strip()}
        assert packages == {"dask-cuda", f"cudf-cu{major}", f"dask-cudf-cu{major}", f"cupy-cuda{major}x"}
        assert gpu_check.EXTRAS[major] == extra
    torch_pin = re.search(r"^TORCH := (.+)$", (REPO / "Makefile").read_text(), re.M).group(1).strip()
    gpu_doc = (REPO / "docs" / "gpu.md").read_text()
    assert torch_pin == "torch==2.14.1 torchvision==0.29.1" and torch_pin in gpu_doc
    assert "gpu-cuda13" in gpu_doc and "benchmarks/gpu_check.py" in gpu_doc
