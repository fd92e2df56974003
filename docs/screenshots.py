"""Screenshots of the dashboard for the README: starts the demo
(``python -m procqueue --dashboard``), lets it run for a while, and saves the
overview and a task's detail page from headless Chromium.

    python docs/screenshots.py            # writes docs/overview.png, docs/task-detail.png

Needs Playwright for Python and a Chromium (``/usr/bin/chromium`` by default,
``--chromium`` for another); no browser download.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def pick_task(url: str) -> int:
    """A fetch that failed all its attempts (a dead letter: every attempt's
    traceback, its arguments, the retry button), else any failed task."""
    rows = get(f"{url}api/tasks?state=failed&name=fetch_page&limit=50")["tasks"]
    rows = [r for r in rows if r["attempts"] == 3] or get(f"{url}api/tasks?state=failed")["tasks"]
    return int(rows[0]["id"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--warmup", type=float, default=45.0, help="seconds of demo before shooting")
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args()

    from playwright.sync_api import sync_playwright

    demo = subprocess.Popen(
        [sys.executable, "-m", "procqueue", "--dashboard", "--port", "0", "--seconds", "600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        line = demo.stdout.readline()
        url = line.split("dashboard: ", 1)[1].split()[0]
        print(f"demo at {url}; letting it run {args.warmup:.0f} s", flush=True)
        time.sleep(args.warmup)
        task = pick_task(url)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.goto(url)
            page.wait_for_selector("#ov-workers table")
            page.wait_for_function(
                "document.getElementById('live').dataset.mode === 'live'"
            )
            page.wait_for_timeout(1500)  # a few live frames, for the chart's right edge
            page.screenshot(path=str(args.out / "overview.png"), full_page=True)
            page.goto(f"{url}#/task/{task}")
            page.wait_for_selector("#task-body .attempt")
            page.screenshot(path=str(args.out / "task-detail.png"), full_page=True)
            browser.close()
        print(f"wrote {args.out / 'overview.png'} and {args.out / 'task-detail.png'}")
    finally:
        demo.terminate()
        demo.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
