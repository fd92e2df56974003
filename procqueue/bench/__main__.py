"""``python -m procqueue.bench``: run :mod:`procqueue.bench._cli` as the script.

The suite's ``__main__`` rows need a real script: a module that, run as
``__main__``, defines the tiny task, and that a forkserver or spawn worker runs
again (as ``__mp_main__``) to find the task by name, as it does for a user's
``python script.py`` or ``python -m package.module``. multiprocessing never runs
a package's ``__main__.py`` again (``spawn._fixup_main_from_name`` skips any name
ending in ``.__main__``), so this file hands over to ``_cli``, run as
``__main__`` with ``sys.modules`` pointing at it (``runpy``'s ``alter_sys``),
which workers do run again. See :mod:`procqueue.bench._task_fns`.
"""

from __future__ import annotations

import runpy
from typing import NoReturn

#: The module that is the suite's script.
SCRIPT = "procqueue.bench._cli"


def cli() -> NoReturn:
    """Run the suite's command line on ``sys.argv``, as ``__main__``; exits."""
    runpy.run_module(SCRIPT, run_name="__main__", alter_sys=True)
    raise SystemExit(0)  # not reached: the script exits with its status


if __name__ == "__main__":
    cli()
