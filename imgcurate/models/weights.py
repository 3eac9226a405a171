"""Where model weights come from, and what to tell the user when they are missing.

Head weights (LAION's aesthetic and NSFW predictors) resolve in this order:

1. an explicit path given by the user;
2. ``$IMGCURATE_HOME/<file name>`` (default ``~/.cache/imgcurate``);
3. a download from the file's public URL into that directory, when the machine is online.

Offline with no file, :class:`~imgcurate.errors.WeightsNotFoundError` names the file, where to put
it and where it comes from. ``IMGCURATE_OFFLINE=1`` forbids downloads (as tests and air-gapped
clusters want) without waiting for a network time-out.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..common.errors import WeightsNotFoundError

log = logging.getLogger("imgcurate")
HOME_ENV = "IMGCURATE_HOME"
OFFLINE_ENV = "IMGCURATE_OFFLINE"
PROBE_TIMEOUT_S = 3.0
# Worker threads share a process's models: the first one to ask builds a model while the others
# wait for it (functools.lru_cache alone would let each of them build its own copy).
MODEL_LOAD_LOCK = threading.Lock()
_RANDOM_ANNOUNCED: set[str] = set()


def announce_random_weights(message: str) -> None:
    """Warn that a model has random weights, once per process and model: a notebook or the demo builds
    the same model more than once, and a repeated line reads as a second problem. Each pipeline run
    still says it in its own line, and its manifest records ``random_weights``."""
    if message not in _RANDOM_ANNOUNCED:
        _RANDOM_ANNOUNCED.add(message)
        log.warning(message)


@dataclass(frozen=True)
class WeightFile:
    """A published weight file: its name, where it comes from, and (for zips) the member holding it."""

    filename: str
    url: str
    description: str
    archive_member: str | None = None


def weights_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "imgcurate").expanduser()


def downloads_allowed() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() not in ("1", "true", "yes")


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the host of ``url`` accepts a connection: a quick probe before a download."""
    parsed = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    return _sha256(os.fspath(path), stat.st_size, stat.st_mtime_ns)


def missing_message(weights: WeightFile, home: Path, reason: str) -> str:
    return (
        f"{weights.description} weights are missing: {reason}. "
        f"Download {weights.url} on a machine with internet access"
        + (f", unzip {weights.archive_member} from it," if weights.archive_member else "")
        + f" and put {weights.filename} in {home} (set ${HOME_ENV} to use another directory), "
        f"or pass the file's path explicitly."
    )


def _download(weights: WeightFile, target: Path) -> None:
    log.info("downloading %s from %s", weights.filename, weights.url)
    with urllib.request.urlopen(weights.url, timeout=60) as response:
        payload = response.read()
    if weights.archive_member:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            member = next((n for n in archive.namelist() if n.endswith(weights.archive_member)), None)
            if member is None:
                raise WeightsNotFoundError(f"{weights.url} holds no {weights.archive_member}")
            payload = archive.read(member)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(payload)
    os.replace(tmp.name, target)


def resolve_weights(weights: WeightFile, explicit: str | os.PathLike | None = None) -> Path:
    """The local path of ``weights``: explicit path, then ``$IMGCURATE_HOME``, then a download."""
    home = weights_home()
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(missing_message(weights, home, f"{path} does not exist"))
        return path
    cached = home / weights.filename
    if cached.is_file():
        return cached
    if not downloads_allowed():
        raise WeightsNotFoundError(missing_message(weights, home, f"{cached} does not exist and ${OFFLINE_ENV} forbids downloads"))
    if not reachable(weights.url):
        raise WeightsNotFoundError(missing_message(weights, home, f"{cached} does not exist and this machine cannot reach "
                                                                 f"{urllib.parse.urlparse(weights.url).hostname}"))
    try:
        _download(weights, cached)
    except OSError as exc:
        raise WeightsNotFoundError(missing_message(weights, home, f"the download failed ({exc})")) from exc
    return cached
