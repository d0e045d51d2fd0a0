"""Where things live on disk: a per-user cache for wheels/models/data, a runs folder for MLflow."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """Downloaded wheels, converted models and extracted data (`ADAMOLE_BENCH_CACHE` overrides)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "adamole-bench"
    path = Path(os.environ.get("ADAMOLE_BENCH_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
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
