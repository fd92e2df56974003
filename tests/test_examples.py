"""The README's runnable examples run, as a user would start them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("diamond_dag.py", "cleanup saw 2 upstream results, 1 of them errors"),
        ("rate_limited_api.py", "60 API calls done"),
        ("nightly_job.py", "2 heartbeats received"),
    ],
)
def test_example_runs(script: str, expect: str) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert expect in out.stderr
