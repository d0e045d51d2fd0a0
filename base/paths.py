"""Where things live on disk (a per-user cache for wheels/models/data, a runs folder for MLflow), and
writing cache files atomically so a killed process never leaves a truncated one behind."""

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def cache_dir() -> Path:
    """Downloaded wheels, converted models and extracted data (`ADAMOLE_BENCH_CACHE` overrides)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "adamole-bench"
    path = Path(os.environ.get("ADAMOLE_BENCH_CACHE", default))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cache folder {path} cannot be created ({err.strerror}); set ADAMOLE_BENCH_CACHE to a writable folder") from None
    return path


def runs_dir() -> Path:
    """The local results folder holding the MLflow store (`ADAMOLE_BENCH_RUNS` overrides)."""
    return Path(os.environ.get("ADAMOLE_BENCH_RUNS", "runs")).resolve()


def package_root() -> Path:
    """The installed `adamole_bench` package (the repository root in a checkout)."""
    return Path(__file__).resolve().parent.parent


def offline_defaults() -> None:
    """Fail fast on accidental hub access unless the user explicitly asks for the hub."""
    if os.environ.get("ADAMOLE_BENCH_ONLINE") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # MLflow's usage telemetry stays off unless the user sets MLFLOW_DISABLE_TELEMETRY=false: its client
    # once raced inside MLflow while sending its first heartbeat and killed a sweep before any trial.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write a file whole or not at all: a temp file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)  # noqa: SIM115 - closed by `with handle` below; its name is needed after
    try:
        with handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Build a cache folder in a temp sibling and rename it to `target` once the block succeeds.

    A build killed half-way leaves only a `.name.*.tmp` sibling, never a half-filled `target`; such
    leftovers older than an hour are removed by the next build. If another process finished the same
    folder first (it holds `.complete`), ours is dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        if time.time() - leftover.stat().st_mtime > 3600:
            shutil.rmtree(leftover, ignore_errors=True)
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield building
        if (target / ".complete").exists():
            shutil.rmtree(building)
            return
        if target.exists():  # an incomplete copy from an older version of this code
            shutil.rmtree(target)
        os.replace(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
