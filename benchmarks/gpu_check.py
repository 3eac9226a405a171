"""Check imgcurate's GPU path on a GPU machine with one command, in under five minutes.

    python benchmarks/gpu_check.py                     # install what is missing, run every check
    python benchmarks/gpu_check.py --wheels DIR        # install from pre-downloaded wheels only (no index)
    python benchmarks/gpu_check.py --dry-run           # any machine: list the steps, run the CPU ones

Steps, always in this order, each one row of the table (``check | status | value | note``, status
``ok``, ``failed`` or ``skipped``), which is printed and written to ``results/gpu_check.json``:

  environment            python, torch, its CUDA version, the GPU
  install                pip installs what is missing: imgcurate's requirements, pytest, and the GPU
                         extra for torch's CUDA major (``gpu`` for CUDA 12, ``gpu-cuda13`` for 13), torch pinned
  extension              imgcurate's C reader loops, built in place when missing
  cpu tests              the CPU tests of the GPU path (tests/test_cudf_layout.py, tests/test_device_decode.py)
  cpu reference          the sample data curated on the CPU (pandas, fp32): the reference for the next check
  gpu tests              ``pytest -m gpu`` on the test files that have GPU tests
  cudf end to end        the same job on the cuDF backend and the GPU (read, embed, score, filter, write):
                         the same samples kept, dropped and failed, the same image bytes, scores within 1e-2
  embeddings gpu vs cpu  ViT-L/14 on the real photos, GPU (nvJPEG; bf16 and fp32) against CPU: cosine >= 0.99
  vit-l-14 model only    ViT-L/14 bf16 images/s on pixels already on the GPU (benchmarks/bench_gpu.py)
  vit-l-14 end to end    ViT-L/14 bf16 images/s for the whole curate job (read, nvJPEG, embed, score, write)

Nothing is downloaded at run time except packages (from the package index, or ``--wheels``): model
weights are random (``--weights FILE`` for a local checkpoint), the data is generated or the real
photos of the test suite (``--test-data``, default ``$IMGCURATE_TEST_DATA`` or ``../shared/data``).
This file runs each step in a fresh interpreter (packages pip installs or replaces are then the ones
imported) and uses only the standard library itself.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FORMAT = "imgcurate-gpu-check-v1"
RESULT_MARK = "GPU_CHECK_RESULT "
# (name, needs a GPU, seconds allowed)
CHECKS = [
    ("environment", False, 60),
    ("install", False, 420),
    ("extension", False, 120),
    ("cpu tests", False, 240),
    ("cpu reference", False, 240),
    ("gpu tests", True, 300),
    ("cudf end to end", True, 240),
    ("embeddings gpu vs cpu", True, 300),
    ("vit-l-14 model only", True, 240),
    ("vit-l-14 end to end", True, 300),
]
EXTRAS = {12: "gpu", 13: "gpu-cuda13"}  # setup.cfg extras by CUDA major version
# what each check imports (pip name -> module), so a missing package skips the check with its name
MODULES = {
    "dask": "dask.dataframe", "distributed": "distributed", "open_clip_torch": "open_clip", "torchvision": "torchvision",
    "webdataset": "webdataset", "duckdb": "duckdb", "msgspec": "msgspec", "pytest": "pytest", "hypothesis": "hypothesis",
    "cudf": "cudf", "dask-cudf": "dask_cudf", "dask-cuda": "dask_cuda", "cupy": "cupy",
}
NEEDS = {
    "cpu tests": ["dask", "open_clip_torch", "torchvision", "pytest", "hypothesis"],
    "cpu reference": ["dask", "distributed", "open_clip_torch", "torchvision"],
    "gpu tests": ["dask", "distributed", "open_clip_torch", "torchvision", "pytest"],
    "cudf end to end": ["dask", "distributed", "open_clip_torch", "torchvision", "cudf", "dask-cudf"],
    "embeddings gpu vs cpu": ["dask", "open_clip_torch", "torchvision"],
    "vit-l-14 model only": ["dask", "open_clip_torch", "torchvision", "webdataset"],
    "vit-l-14 end to end": ["dask", "distributed", "open_clip_torch", "torchvision", "webdataset"],
}
CPU_TEST_FILES = ["tests/test_cudf_layout.py", "tests/test_device_decode.py"]
MIN_COSINE = 0.99
SCORE_TOLERANCE = 1e-2


def row(check: str, status: str, value: str = "", note: str = "", seconds: float = 0.0) -> dict:
    return {"check": check, "status": status, "value": value, "note": note, "seconds": round(seconds, 1)}


# ---------------------------------------------------------------------------------------
# The orchestrator (standard library only)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="list every step, run the CPU ones, skip the GPU ones")
    parser.add_argument("--wheels", type=Path, help="install from this directory of wheels only (pip --no-index --find-links)")
    parser.add_argument("--no-install", action="store_true", help="install nothing; checks whose packages are missing skip")
    parser.add_argument("--skip", default="", help="comma-separated checks to skip (reported as skipped)")
    parser.add_argument("--test-data", type=Path, help="directory holding photos/ (default $IMGCURATE_TEST_DATA or ../shared/data)")
    parser.add_argument("--weights", help="a local ViT-L-14 checkpoint for the embedding comparison (default: random weights)")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where gpu_check.json is written")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # runs one step in this interpreter (used by the orchestrator)
    args = parser.parse_args(argv)
    args.skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    unknown = args.skip - {name for name, _, _ in CHECKS}
    if unknown:
        parser.error(f"unknown check {', '.join(sorted(unknown))}; checks: {', '.join(name for name, _, _ in CHECKS)}")
    return args


def test_data(args: argparse.Namespace) -> Path:
    return (args.test_data or Path(os.environ.get("IMGCURATE_TEST_DATA") or REPO.parent / "shared" / "data")).resolve()


def child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(HERE), env.get("PYTHONPATH")]))
    env["IMGCURATE_TEST_DATA"] = str(test_data(args))
    env.pop("IMGCURATE_SCHEDULER", None)
    return env


def probe(args: argparse.Namespace) -> dict:
    """What this interpreter has: torch and its CUDA, the GPU, and which packages import."""
    code = f"""
import importlib, json, platform
info = {{"python": platform.python_version(), "modules": {{}}}}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda=torch.cuda.is_available(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0)
except Exception as exc:
    info.update(torch=None, torch_error=repr(exc))
for pip_name, module in {MODULES!r}.items():
    try:
        importlib.import_module(module)
        info["modules"][pip_name] = True
    except Exception:
        info["modules"][pip_name] = False
versions = {{}}
for name in ("pandas", "pyarrow", "numpy", "dask", "cudf", "cupy", "torchvision", "open_clip_torch"):
    try:
        versions[name] = importlib.metadata.version(name if name != "cudf" else next(
            d.metadata["Name"] for d in importlib.metadata.distributions() if d.metadata["Name"] in ("cudf-cu12", "cudf-cu13")))
    except Exception:
        versions[name] = None
info["versions"] = versions
print(json.dumps(info))
"""
    out = subprocess.run([sys.executable, "-c", "import importlib.metadata\n" + code], capture_output=True, text=True,
                         env=child_env(args), cwd=REPO, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-2000:]}


def cuda_major(info: dict) -> int | None:
    version = info.get("torch_cuda")
    return int(version.split(".")[0]) if version else None


def requirements(info: dict) -> list[str]:
    """imgcurate's requirements (torch excluded: the machine's own build is kept), pytest and hypothesis,
    and the GPU extra for torch's CUDA major version, as setup.cfg lists them."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = [line.split("#")[0].strip() for line in config["options"]["install_requires"].splitlines()]
    wanted = [line for line in lines if line and not re.match(r"torch\b(?!vision)", line)]
    tests = [line.split("#")[0].strip() for line in config["options.extras_require"]["test"].splitlines()]
    wanted += [line for line in tests if line.startswith(("pytest", "hypothesis"))]
    extra = EXTRAS.get(cuda_major(info) or 0)
    if extra:
        wanted += [line.strip() for line in config["options.extras_require"][extra].splitlines() if line.strip()]
    return wanted


def pip_command(args: argparse.Namespace, packages: list[str], constraints: Path) -> list[str]:
    index = ["--no-index", "--find-links", str(args.wheels)] if args.wheels else []
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
            *index, "-c", str(constraints), *packages]


def step_environment(args: argparse.Namespace, info: dict) -> dict:
    if "error" in info:
        return row("environment", "failed", note=info["error"].strip().splitlines()[-1])
    value = f"python {info['python']}, torch {info.get('torch')}"
    if info.get("torch_cuda"):
        value += f" (CUDA {info['torch_cuda']})"
    note = f"{info['gpus']} x {info['gpu']}" if info.get("cuda") else "no CUDA device: the GPU checks skip"
    photos = sorted((test_data(args) / "photos").glob("*.jpg"))
    note += f"; {len(photos)} real photos" if photos else "; no real photos (--test-data): the checks on them skip"
    return row("environment", "ok" if info.get("torch") else "failed", value, note)


def step_install(args: argparse.Namespace, info: dict, work: Path) -> tuple[dict, dict]:
    missing = [name for name, present in info.get("modules", {}).items() if not present]
    major = cuda_major(info)
    wanted = requirements(info)
    constraints = work / "constraints.txt"
    constraints.write_text(f"torch=={info['torch'].split('+')[0]}\n" if info.get("torch") else "")
    command = pip_command(args, wanted, constraints)
    extra = EXTRAS.get(major or 0)
    plan = f"extra {extra!r} for CUDA {major}" if extra else f"no GPU extra (torch's CUDA: {info.get('torch_cuda')})"
    if args.dry_run or args.no_install:
        why = "dry run" if args.dry_run else "--no-install"
        shown = " ".join(command[1:]).replace(str(constraints), f"constraints.txt ({constraints.read_text().strip() or 'empty'})")
        return row("install", "skipped", f"{len(missing)} missing", f"{why}: would run python {shown} ({plan}); "
                   f"missing now: {', '.join(missing) or 'none'}"), info
    started = time.perf_counter()
    before = dict(info.get("versions", {}))
    deadline = time.perf_counter() + CHECKS[1][2] - 30
    returncode, error = pip(command, deadline)
    if returncode:  # one package that cannot be had must not keep the others out: one at a time
        for requirement in wanted:
            pip(pip_command(args, [requirement], constraints), deadline)
    after = probe(args)
    still = [name for name, present in after.get("modules", {}).items() if not present]
    changed = [f"{name} {before.get(name)}->{version}" for name, version in after.get("versions", {}).items()
               if before.get(name) != version]
    installed = [name for name in missing if name not in still]
    note = f"{plan}; installed: {', '.join(installed) or 'nothing'}; versions changed: {', '.join(changed) or 'none'}"
    if still:
        note += f"; still missing (their checks skip): {', '.join(still)}"
    if returncode:
        note += f"; pip failed: {error[:300]}"
    status = "ok" if returncode == 0 and not still else "failed"
    return row("install", status, f"{len(installed)} installed, {len(still)} missing", note,
               time.perf_counter() - started), after


def pip(command: list[str], deadline: float) -> tuple[int, str]:
    """Run pip until ``deadline`` (perf_counter time): its exit status and last error line."""
    if time.perf_counter() >= deadline:
        return 1, "out of time"
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=deadline - time.perf_counter())
    except subprocess.TimeoutExpired:
        return 1, "out of time"
    return out.returncode, (out.stderr.strip().splitlines() or [""])[-1]


def run_child(args: argparse.Namespace, name: str, work: Path, timeout: int) -> dict:
    """One step in a fresh interpreter: its last RESULT_MARK line is its row."""
    command = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--work", str(work)]
    if args.weights:
        command += ["--weights", args.weights]
    try:
        out = subprocess.run(command, capture_output=True, text=True, env=child_env(args), cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return row(name, "failed", note=f"did not finish within {timeout} s")
    for line in reversed(out.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (out.stderr.strip().splitlines() or out.stdout.strip().splitlines() or ["no output"])[-1]
    return row(name, "failed", note=f"exit {out.returncode}: {tail[:300]}")


def pytest_row(name: str, args: argparse.Namespace, files: list[str], marker: str, timeout: int) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", marker, *files]
    try:
        out = subprocess.run(command, capture_output=True, text=True, env=child_env(args), cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return row(name, "failed", note=f"did not finish within {timeout} s")
    lines = out.stdout.strip().splitlines()
    summary = next((line.strip("= ") for line in reversed(lines) if re.search(r"\d+ (passed|failed|error|skipped|deselected)", line)),
                   lines[-1] if lines else "no output")
    skipped = sorted({re.sub(r"^SKIPPED \[\d+\] [^:]+:\d+: ", "", line) for line in lines if line.startswith("SKIPPED")})
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    note = "; ".join(failed[:3]) or ("skipped: " + "; ".join(skipped[:4]) if skipped else "")
    counts = dict((kind, int(n)) for n, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary))
    ok = out.returncode == 0 and counts.get("passed", 0) > 0
    return row(name, "ok" if ok else "failed", re.sub(r" in [\d.]+s.*", "", summary), note[:600])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.step:
        return run_step(args)
    work = (args.work or Path(tempfile.mkdtemp(prefix="imgcurate-gpu-check-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    info = probe(args)
    on_gpu = bool(info.get("cuda")) and not args.dry_run
    print(f"imgcurate GPU check{' (dry run)' if args.dry_run else ''}: work in {work}", flush=True)
    for name, needs_gpu, timeout in CHECKS:
        print(f"  {'GPU' if needs_gpu else 'CPU'}  {name}", flush=True)
    rows: list[dict] = []
    for name, needs_gpu, timeout in CHECKS:
        began = time.perf_counter()
        if name in args.skip:
            result = row(name, "skipped", note="--skip")
        elif name == "environment":
            result = step_environment(args, info)
        elif name == "install":
            result, info = step_install(args, info, work)
        elif needs_gpu and not on_gpu:
            result = row(name, "skipped", note="dry run: needs a CUDA GPU" if args.dry_run else "no CUDA device")
        elif missing := [p for p in NEEDS.get(name, []) if not info.get("modules", {}).get(p)]:
            result = row(name, "skipped", note=f"not installed: {', '.join(missing)}")
        elif name == "extension":
            result = run_child(args, name, work, timeout) if not args.dry_run else _extension_dry(args)
        elif name == "cpu tests":
            result = pytest_row(name, args, CPU_TEST_FILES, "not gpu", timeout)
        elif name == "gpu tests":
            files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "pytest.mark.gpu" in p.read_text())
            result = pytest_row(name, args, files, "gpu", timeout)
        else:
            result = run_child(args, name, work, timeout)
        if not result.get("seconds"):
            result["seconds"] = round(time.perf_counter() - began, 1)
        rows.append(result)
        print(f"  -> {name}: {result['status']} {result['value']}", flush=True)
    document = {
        "format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "dry_run": args.dry_run,
        "commit": _commit(), "seconds": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), **{k: info.get(k) for k in
                    ("python", "torch", "torch_cuda", "gpu", "gpus")}, "versions": info.get("versions")},
        "checks": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "gpu_check.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    print("\n" + table(rows) + f"\n\n{document['seconds']:.0f} s; written to {path}", flush=True)
    return 0 if all(r["status"] != "failed" for r in rows) else 1


def table(rows: list[dict]) -> str:
    """The checks as one Markdown table: ``check | status | value | note``, one row per check, in CHECKS order."""
    lines = ["| check | status | value | note |", "|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k]).replace("|", "/").replace("\n", " ") for k in ("check", "status", "value", "note")) + " |")
    return "\n".join(lines)


def _commit() -> str | None:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


def _extension_dry(args: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, "-c", "import imgcurate.io._fastio"], capture_output=True, env=child_env(args), cwd=REPO)
    if out.returncode == 0:
        return row("extension", "ok", "built", "imgcurate.io._fastio imports")
    return row("extension", "skipped", "not built", f"dry run: would run {Path(sys.executable).name} setup.py -q build_ext --inplace")


# ---------------------------------------------------------------------------------------
# The steps that run in their own interpreter (``--step NAME``)


def run_step(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        result = STEPS[args.step](args, args.work)
    except Exception as exc:  # noqa: BLE001 - any failure is the step's result
        import traceback

        traceback.print_exc()
        result = row(args.step, "failed", note=f"{type(exc).__name__}: {exc}"[:400])
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def extension(args, work: Path) -> dict:
    try:
        import imgcurate.io._fastio  # noqa: F401

        return row("extension", "ok", "built", "imgcurate.io._fastio imports")
    except ImportError:
        pass
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        return row("extension", "skipped", "not built", "no C compiler or Python headers: the Python reader runs (slower)")
    return row("extension", "ok", "built", "setup.py build_ext --inplace")


def sample_data(work: Path) -> Path:
    from imgcurate.app.sample_data import make_sample_dataset

    directory = work / "sample-data"
    if not (directory / "00002.tar").exists():
        make_sample_dataset(str(directory), shards=3, samples_per_shard=16)
    return directory


def curate_sample(work: Path, out: Path, backend: str, device: str, threshold: float | None, client=None):
    """The sample data read, embedded with the tiny model, scored by both heads (random weights), the
    aesthetic filter marked at ``threshold`` (none: no filter), and written; returns the aesthetic scores."""
    import dask

    import imgcurate
    from imgcurate.dataframe import mark_below_threshold
    from imgcurate.models import TINY_MODEL, AestheticScorer, CLIPImageEmbedder, NSFWScorer

    embedder = CLIPImageEmbedder(TINY_MODEL, pretrained=None, device=device, precision="fp32")
    df = imgcurate.read_webdataset(str(sample_data(work)), with_images=False, backend=backend)
    df = imgcurate.embed(df, embedder, aesthetic=AestheticScorer("random", device=device), nsfw=NSFWScorer("random", device=device))
    if threshold is None:
        with dask.config.set(scheduler="sync"):
            return df.aesthetic_score.compute()
    df = mark_below_threshold(df, "aesthetic_score", "aesthetic", threshold, "aesthetic")
    if client is None:
        with dask.config.set(scheduler="sync"):
            return imgcurate.write_webdataset(df, str(out), images_per_tar=10, keep_dropped=True, overwrite=True)
    return imgcurate.write_webdataset(df, str(out), images_per_tar=10, keep_dropped=True, overwrite=True, client=client)


def cpu_reference(args, work: Path) -> dict:
    import numpy as np

    scores = curate_sample(work, work / "cpu-out", "pandas", "cpu", None)
    values = np.sort(scores.dropna().to_numpy(dtype=np.float64))
    middle = values[len(values) // 4 : 3 * len(values) // 4 + 1]
    widest = int(np.argmax(np.diff(middle)))  # a threshold in the widest gap: no score sits near it
    threshold = float((middle[widest] + middle[widest + 1]) / 2)
    (work / "threshold.json").write_text(json.dumps({"threshold": threshold, "gap": float(np.diff(middle).max())}))
    result = curate_sample(work, work / "cpu-out", "pandas", "cpu", threshold)
    counts = result.counts
    return row("cpu reference", "ok", f"{counts['written']} kept of {counts['read']}",
               f"pandas, CPU, fp32; aesthetic threshold {threshold:.4f} in a gap of {float(np.diff(middle).max()):.4f}")


def output_rows(directory: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in sorted(directory.glob("[0-9]*.parquet"))]
    return pa.concat_tables(tables).to_pandas() if tables else None


def tar_members(directory: Path) -> dict[str, bytes]:
    import tarfile

    members = {}
    for path in sorted(directory.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if not member.name.endswith((".json", ".txt")):
                    members[member.name] = tar.extractfile(member).read()
    return members


def cudf_end_to_end(args, work: Path) -> dict:
    import numpy as np
    import pandas as pd

    from imgcurate.common.cluster import dask_client

    reference = work / "cpu-out"
    if not (work / "threshold.json").exists() or not reference.is_dir():
        return row("cudf end to end", "skipped", note="the cpu reference did not run")
    threshold = json.loads((work / "threshold.json").read_text())["threshold"]
    with dask_client() as client:  # the default cluster: one worker per GPU with dask-cuda
        cluster = type(client.cluster).__name__ if client is not None and client.cluster is not None else "in-process"
        result = curate_sample(work, work / "cudf-out", "cudf", "cuda", threshold, client=client)
    problems = []
    cpu, gpu = ({stream: output_rows(d / stream) for stream in ("", "_dropped")} for d in (reference, work / "cudf-out"))
    scores = {side: pd.concat([f for f in frames.values() if f is not None]).set_index("key")
              for side, frames in (("cpu", cpu), ("gpu", gpu))}
    if sorted(scores["cpu"].index) != sorted(scores["gpu"].index):
        problems.append("different samples scored")
    else:
        both = scores["cpu"].join(scores["gpu"], lsuffix="_cpu", rsuffix="_gpu")
        worst = max(float(np.max(np.abs(both[f"{c}_cpu"] - both[f"{c}_gpu"]))) for c in ("aesthetic_score", "nsfw_score"))
        if worst > SCORE_TOLERANCE:
            problems.append(f"scores differ by up to {worst:.4f}")
        # a row may be kept on one side only when its score lies within the difference of the threshold
        borderline = set(both.index[np.abs(both["aesthetic_score_cpu"] - threshold) <= worst])
        for stream in ("", "_dropped"):
            keys = [[k for k in (frames[stream].key if frames[stream] is not None else []) if k not in borderline]
                    for frames in (cpu, gpu)]
            if keys[0] != keys[1]:
                problems.append(f"{stream or 'kept'}: different samples or order")
        if cpu[""] is not None and gpu[""] is not None and list(cpu[""].columns) != list(gpu[""].columns):
            problems.append(f"columns {list(gpu[''].columns)} vs {list(cpu[''].columns)}")
    images = [tar_members(d) for d in (reference, work / "cudf-out")]
    if any(images[0][name] != data for name, data in images[1].items() if name in images[0]):
        problems.append("image members differ")
    failures = [pd.read_parquet(d / "_failures.parquet").key.tolist() for d in (reference, work / "cudf-out")]
    if failures[0] != failures[1]:
        problems.append(f"failures {failures[1]} vs {failures[0]}")
    counts = result.counts
    value = f"{counts['written']} kept of {counts['read']}, {len(failures[1])} failed"
    return row("cudf end to end", "failed" if problems else "ok", value,
               "; ".join(problems) or f"the CPU run's samples, image bytes and failures; scores within {worst:.1e}; "
               f"{len(borderline)} rows that close to the threshold; {cluster}")


def photo_shards(args, work: Path) -> Path | None:
    """The real photos as one WebDataset shard (JPEGs as they are)."""
    import io
    import tarfile

    photos = sorted((Path(os.environ["IMGCURATE_TEST_DATA"]) / "photos").glob("*.jpg"))
    if not photos:
        return None
    directory = work / "photo-shards"
    directory.mkdir(exist_ok=True)
    with tarfile.open(directory / "00000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, photo in enumerate(photos):
            data = photo.read_bytes()
            info = tarfile.TarInfo(f"{i:06d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return directory


def embeddings_gpu_vs_cpu(args, work: Path) -> dict:
    import dask
    import numpy as np

    import imgcurate
    from imgcurate.models import CLIPImageEmbedder

    shards = photo_shards(args, work)
    source = "the real photos" if shards is not None else "the sample data"
    df = imgcurate.read_webdataset(str(shards or sample_data(work)), with_images=False)
    pretrained = args.weights or None

    def vectors(device: str, precision: str):
        model = CLIPImageEmbedder("ViT-L-14", pretrained=pretrained, device=device, precision=precision)
        with dask.config.set(scheduler="sync"):
            frame = imgcurate.embed(df, model).compute()
        kept = frame[frame.error.isna()]
        return list(kept.key), np.stack([np.asarray(v, dtype=np.float32) for v in kept.embedding])

    keys, cpu = vectors("cpu", "fp32")
    found, notes = {}, []
    for precision in ("bf16", "fp32"):
        gpu_keys, gpu = vectors("cuda", precision)
        if gpu_keys != keys:
            notes.append(f"{precision}: different rows embedded")
            continue
        found[precision] = float(((cpu * gpu).sum(axis=1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)).min())
    ok = len(found) == 2 and min(found.values()) >= MIN_COSINE
    value = ", ".join(f"{p} {c:.4f}" for p, c in found.items())
    return row("embeddings gpu vs cpu", "ok" if ok else "failed", f"min cosine {value}",
               "; ".join(notes) or f"ViT-L-14 ({'weights ' + args.weights if args.weights else 'random weights'}) on "
               f"{len(keys)} images of {source}; GPU decodes with nvJPEG; needs >= {MIN_COSINE}")


def _bench(args, work: Path, which: str) -> dict:
    import bench_gpu
    from common import Config, make_dataset

    photos = Path(os.environ["IMGCURATE_TEST_DATA"]) / "photos"
    if not any(photos.glob("*.jpg")):
        return row(which, "skipped", note=f"the benchmark's images are made from the real photos: none at {photos}")
    config = Config(quick=True, samples=2048, shards=4, repeats=2, data=work / "bench-data", results=work / "bench-results")
    dataset = make_dataset(config.data / "jpegs-2048x4", config.samples, config.shards)
    if which == "vit-l-14 model only":
        measure = bench_gpu.model_only(config, dataset, "cuda")
    else:
        out = work / "bench-e2e"
        out.mkdir(exist_ok=True)
        measure = bench_gpu.end_to_end(config, dataset, "cuda", out)
    return row(which, "ok", f"{measure.ours:,.0f} img/s", f"{measure.ratio:.2f}x {measure.peer_name} ({measure.peer:,.0f} img/s); "
               f"bf16, batch {bench_gpu.BATCH}, random weights; {measure.note}")


STEPS = {
    "extension": extension,
    "cpu reference": cpu_reference,
    "cudf end to end": cudf_end_to_end,
    "embeddings gpu vs cpu": embeddings_gpu_vs_cpu,
    "vit-l-14 model only": lambda args, work: _bench(args, work, "vit-l-14 model only"),
    "vit-l-14 end to end": lambda args, work: _bench(args, work, "vit-l-14 end to end"),
}


if __name__ == "__main__":
    sys.exit(main())
