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

__all__ = ["PACKAGES", "command_line", "context", "footer", "git_commit", "loadavg"]

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


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str | None]:
    return {name: _version(name) for name in PACKAGES}


def git_commit() -> str | None:
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


def command_line() -> list[str]:
    """The command that started this process, as typed, with the interpreter's
    full path: ``sys.orig_argv``, which ``runpy``'s ``alter_sys`` leaves alone
    (``sys.argv[0]`` becomes the module run), so ``python -m procqueue.bench``
    and ``python benchmarks/bench_core.py`` each record themselves."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return [sys.executable, *argv[1:]]


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
        "git": git_commit(),
        "config": cfg.as_dict(),
    }


def footer(started: datetime, packages: Sequence[str] = ()) -> str:
    """The context lines the standalone scripts in ``benchmarks/`` end their
    report with: date, Python, nproc, load, procqueue, commit, the versions of
    procqueue's dependencies and of ``packages``, and the exact command."""
    import procqueue

    load = loadavg()
    loads = " ".join(f"{x:.2f}" for x in load) if load is not None else "n/a"
    commit = git_commit() or "n/a (not a git checkout)"
    names = ["cloudpickle", "psutil", *(p for p in packages if p not in ("cloudpickle", "psutil"))]
    versions = ", ".join(f"{name} {_version(name) or '(not installed)'}" for name in names)
    return (
        f"\nContext: {started.isoformat(timespec='seconds')}; Python {platform.python_version()} "
        f"({platform.python_implementation()}); nproc {os.cpu_count()}; load {loads}; "
        f"procqueue {procqueue.__version__} from {Path(procqueue.__file__).parent}; "
        f"git {commit}; {versions}.\nCommand: {shlex.join(command_line())}"
    )
