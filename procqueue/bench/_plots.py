"""PNG charts, when matplotlib is installed (the ``bench`` extra).

* ``throughput_vs_task_size.png``: tasks/s and efficiency against task size
  (the sweep);
* ``speed_vs_ppe.png``: each process pool's median against
  ProcessPoolExecutor's, per throughput workload;
* ``scale.png``: tasks/s against the number of tasks.

matplotlib is imported here, inside :func:`write_plots`, and only when asked;
without it the suite writes no charts and says so.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._config import BenchConfig
from ._measure import WorkloadResult

_log = logging.getLogger("procqueue.bench")

#: Throughput workloads in the ratio chart: (key, metric, higher is better).
SPEED_WORKLOADS = (
    ("tiny:main", "tasks_per_s", True),
    ("tiny:importable", "tasks_per_s", True),
    ("map1:main", "tasks_per_s", True),
    ("map1000:main", "tasks_per_s", True),
    ("payload:args", "mb_per_s", True),
    ("payload:results", "mb_per_s", True),
    ("io", "tasks_per_s", True),
    ("cpu", "wall_s", False),
    ("latency:main", "p50_ms", False),
)
PROCESS_FAMILIES = ("ppe", "mp.Pool", "ProcQueue", "TaskQueue", "loky", "joblib", "pebble", "mpire")


def _pyplot() -> Any | None:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def write_plots(
    results: dict[str, WorkloadResult], cfg: BenchConfig, out: Path, stem: str
) -> list[Path]:
    """Write every chart the results allow; returns the files written."""
    plt = _pyplot()
    if plt is None:
        _log.info("matplotlib is not installed: no charts (pip install 'procqueue[bench]')")
        return []
    written: list[Path] = []
    for name, fn in (
        ("throughput_vs_task_size", _sweep),
        ("speed_vs_ppe", _speed),
        ("scale", _scale),
    ):
        fig = fn(plt, results, cfg)
        if fig is None:
            continue
        path = out / f"{stem}-{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _sweep(plt: Any, results: dict[str, WorkloadResult], cfg: BenchConfig) -> Any | None:
    points = sorted(
        (r for k, r in results.items() if k.startswith("sweep@")),
        key=lambda r: float(r.params["task_ms"]),
    )
    if len(points) < 2:
        return None
    # add_one (0 ms) sits a decade left of the smallest sized task, labelled.
    sized = [float(p.params["task_ms"]) for p in points if p.params["task_ms"]]
    tiny_x = (min(sized) / 10) if sized else 0.01
    xs_all = [float(p.params["task_ms"]) or tiny_x for p in points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys: list[str] = []
    for p in points:
        keys += [k for k in p.cells if k not in keys]
    for index, key in enumerate(keys):
        color = f"C{index}"  # the same colour for a contestant in both panels
        xs, rates, effs, eff_x = [], [], [], []
        label = key
        for x, p in zip(xs_all, points):
            cell = p.cell(key)
            if cell is None or cell.median("tasks_per_s") is None:
                continue
            label = cell.label
            xs.append(x)
            rates.append(cell.median("tasks_per_s"))
            seq = p.cell("sequential")
            seq_wall = seq.median("wall_s") if seq is not None else None
            wall = cell.median("wall_s")
            if p.params["task_ms"] and seq_wall and wall and key != "sequential":
                eff_x.append(x)
                effs.append(seq_wall / (wall * cfg.workers))
        if xs:
            ax1.plot(xs, rates, marker="o", label=label, color=color)
        if effs:
            ax2.plot(eff_x, effs, marker="o", label=label, color=color)
    ax1.set(xscale="log", yscale="log", xlabel="task size (ms of CPU; leftmost: add_one)",
            ylabel="tasks/s (median)", title="Throughput against task size")  # fmt: skip
    ax2.set(xscale="log", xlabel="task size (ms of CPU)", ylabel="parallel efficiency",
            title=f"Efficiency, {cfg.workers} workers")  # fmt: skip
    ax2.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    return fig


def _speed(plt: Any, results: dict[str, WorkloadResult], cfg: BenchConfig) -> Any | None:
    rows: list[tuple[str, dict[str, float]]] = []  # workload -> {label: ratio}
    for key, metric, higher in SPEED_WORKLOADS:
        r = results.get(key)
        if r is None:
            continue
        base = r.cell("ppe")
        b = base.median(metric) if base is not None else None
        if not b:
            continue
        ratios = {}
        for k, cell in r.cells.items():
            m = cell.median(metric)
            if "/" in k or not m or k.split("-")[0] not in PROCESS_FAMILIES:
                continue
            ratios[cell.label] = m / b if higher else b / m
        rows.append((key, ratios))
    if not rows:
        return None
    labels: list[str] = []
    for _, ratios in rows:
        labels += [lb for lb in ratios if lb not in labels]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [ratios.get(label, 0.0) for _, ratios in rows], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels([k for k, _ in rows], rotation=20, ha="right")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set(yscale="log", ylabel="speed vs ProcessPoolExecutor (>1: faster)",
           title=f"Median speed against ProcessPoolExecutor [{cfg.start_method}]")  # fmt: skip
    ax.legend(fontsize=7, ncol=2)
    return fig


def _scale(plt: Any, results: dict[str, WorkloadResult], cfg: BenchConfig) -> Any | None:
    r = results.get("scale")
    if r is None:
        return None
    sizes: Sequence[int] = r.params["sizes"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drew = False
    for cell in r.cells.values():
        pts = [(n, cell.median(f"tasks_per_s@{n}")) for n in sizes]
        pts = [(n, v) for n, v in pts if v is not None]
        if pts:
            ax.plot([n for n, _ in pts], [v for _, v in pts], marker="o", label=cell.label)
            drew = True
    if not drew:
        plt.close(fig)
        return None
    ax.set(xscale="log", yscale="log", xlabel="tasks in one run", ylabel="tasks/s (median)",
           title="Throughput at scale (one by one)")  # fmt: skip
    ax.legend(fontsize=8)
    return fig
