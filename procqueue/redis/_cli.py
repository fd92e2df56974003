"""``procqueue worker --broker redis://... --queue default --workers 8``: run a node."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from ..errors import InvalidArgumentError
from ._protocol import Broker, connect
from ._signing import Signer, secrets_from_env

_log = logging.getLogger("procqueue.node")


def log_to_stderr(level: str) -> None:
    """The logging of a long-running command (``procqueue worker``, and
    ``procqueue dashboard --broker``): timestamped lines on stderr."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def signer_for(secret: str | bytes | None, secret_file: str | None, insecure: bool) -> Signer:
    """The configured secrets, or a refusal: a broker without a secret would
    unpickle whatever anyone with write access to Redis put there."""
    secrets = secrets_from_env(secret, secret_file)
    if not secrets:
        if not insecure:
            raise InvalidArgumentError(
                "no secret: set PROCQUEUE_SECRET (or pass --secret-file / secret=); every "
                "payload and result on the broker is signed with it. For a local experiment "
                "only, --insecure / insecure=True uses a fixed, public key."
            )
        _log.warning("insecure: payloads are signed with a public key; anyone who can "
                     "write to this Redis can run code on every node")  # fmt: skip
        secrets = [b"procqueue-insecure-public-key-do-not-use-in-production"]
    return Signer(secrets)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="procqueue worker", description=__doc__)
    p.add_argument("--broker", required=True, help="redis://host:port/db or rediss://...")
    p.add_argument("--queue", default="default")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--lease", type=float, default=30.0, help="lease seconds (renewed every third)")
    p.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="tasks claimed ahead (default: adaptive, ~20 ms of work at the node's pace)",
    )
    p.add_argument("--start-method", default=None, choices=["fork", "forkserver", "spawn"])
    p.add_argument("--secret-file", default=None)
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str]) -> int:
    from ._node import Node

    args = parser().parse_args(argv)
    log_to_stderr(args.log_level)
    try:
        signer = signer_for(None, args.secret_file, args.insecure)
    except InvalidArgumentError as e:
        _log.error("procqueue worker: %s", e)
        return 2
    broker = Broker(connect(args.broker), args.queue, signer)
    node = Node(
        broker,
        args.workers,
        lease=args.lease,
        prefetch=args.prefetch,
        start_method=args.start_method,
    )

    def on_term(signum: int, frame: Any) -> None:
        _log.info("signal %d: no more claims; finishing what this node holds", signum)
        node.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    node.run()
    return 0
