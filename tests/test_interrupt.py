"""Ctrl-C from a terminal (SIGINT to the whole process group) leaves the output directory as it was
found, whatever the job was doing, and prints one line: tried again and again, at every phase."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import build_photo_dataset

BIN = Path(sys.executable).parent
SHARDS = 150


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory, photos):
    """150 input shards (links to three shards of the real photos): a job long enough to interrupt."""
    base = tmp_path_factory.mktemp("interrupt")
    build_photo_dataset(base / "real", photos, shards=3, sidecar=False)
    inputs = base / "in"
    inputs.mkdir()
    for i in range(SHARDS):
        (inputs / f"{i:05d}.tar").symlink_to(base / "real" / f"{i % 3:05d}.tar")
    return inputs


def interrupt(command: list[str], out: Path, phase: str) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group and send SIGINT to the group while ``phase`` is under way."""
    pattern = "*/kept/*.arrow" if phase == "staging" else "*/out-kept/*.tar"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not any((out / "_imgcurate_tmp").glob(pattern)):
        if process.poll() is not None:
            pytest.fail(f"the job ended before it could be interrupted: {process.stderr.read().decode()}")
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, stdout.decode(), stderr.decode())


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["default", "local"])
def test_ctrl_c_leaves_the_directory_as_it_was_found(many_shards, tmp_path, scheduler):
    tries = 6 if scheduler == "default" else 4
    extra = [] if scheduler == "default" else ["--scheduler", "local"]
    for attempt in range(tries):
        phase = ("staging", "assembling")[attempt % 2]
        out = tmp_path / f"out-{attempt}"
        command = [str(BIN / "imgcurate"), "reshard", str(many_shards), "-o", str(out), "--images-per-tar", "7",
                   "--no-progress", *extra]
        done = interrupt(command, out, phase)
        assert done.returncode == 130, (phase, done.stderr[-2000:])
        assert done.stderr.strip().splitlines()[-1] == "imgcurate reshard: interrupted"
        assert "Traceback" not in done.stderr
        assert not out.exists(), (phase, sorted(p.name for p in out.rglob("*")))  # nothing left, not even the marker
