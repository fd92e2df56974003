"""The run's context, recorded with the numbers (``BENCHMARKS.md``): date, exact
command, Python, nproc, load, start methods, package versions and the commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ._config import BenchConfig

__all__ = ["PACKAGES", "context", "loadavg"]

PACKAGES = (
    "procqueue",
    "cloudpickle",
    "psutil",
    "loky",
    "joblib",
    "pebble",
    "mpire",
    "matplotlib",
)


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_commit() -> str | None:
    """The commit of the procqueue checkout being measured (``-dirty`` if changed)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def context(cfg: BenchConfig, started: datetime, command: Sequence[str]) -> dict[str, Any]:
    """Date, exact command, Python, nproc, load, start methods, versions, commit."""
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join(command),
        "cwd": os.getcwd(),
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "cpus_usable": usable,
        "loadavg_at_start": loadavg(),
        "workers": cfg.workers,
        "start_method": cfg.start_method,
        "extra_start_methods": list(cfg.extra_start_methods),
        "packages": _versions(),
        "git": _git_commit(),
        "config": cfg.as_dict(),
    }
