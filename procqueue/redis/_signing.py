"""Signed envelopes for everything that crosses Redis.

Payloads and results are pickles, and unpickling is code execution: whoever
can write to the Redis keys could otherwise run code on every node. Every
blob is therefore sealed with HMAC-SHA256 and checked with
``hmac.compare_digest`` *before* anything unpickles it. Signing gives
integrity, not secrecy: use ``rediss://`` and Redis ACLs as well.

Envelope (bytes)::

    b"PQ" | version (1 byte) | key id (8 bytes) | MAC (32 bytes) | data

The MAC covers the version, the key id, the kind (``task`` or ``result``), the
queue, the task id and the data, so a valid blob cannot be replayed as another
task's payload, as a result, or on another queue. Key ids (the first 8 bytes of
SHA-256 of the secret) allow rotation: the first secret signs, every configured
secret verifies.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Iterable

from ..errors import InvalidArgumentError, SignatureError

__all__ = ["SignatureError", "Signer", "secrets_from_env"]

_MAGIC = b"PQ"
_VERSION = 1
_HEADER = len(_MAGIC) + 1 + 8 + 32
#: Shortest secret accepted (bytes): HMAC-SHA256 wants at least 32 of entropy.
MIN_SECRET = 32
#: What a sealed blob is: a task's call, or a task's outcome.
TASK, RESULT = b"task", b"result"
KINDS = (TASK, RESULT)


class Signer:
    """Seals and opens envelopes with one or more secrets (the first signs)."""

    def __init__(self, secrets: Iterable[bytes]) -> None:
        keys: dict[bytes, bytes] = {}
        for secret in secrets:
            if not isinstance(secret, bytes):
                raise InvalidArgumentError("secrets are bytes")
            if len(secret) < MIN_SECRET:
                raise InvalidArgumentError(
                    f"a secret must be at least {MIN_SECRET} bytes "
                    '(generate one: python -c "import secrets; print(secrets.token_hex(32))")'
                )
            keys.setdefault(key_id(secret), secret)
        if not keys:
            raise InvalidArgumentError("no secret given")
        self._keys = keys
        self._signing_id = next(iter(keys))

    @property
    def key_ids(self) -> list[str]:
        return [k.hex() for k in self._keys]

    def seal(self, kind: bytes, queue: str, task_id: str, data: bytes) -> bytes:
        kid = self._signing_id
        mac = _mac(self._keys[kid], kid, kind, queue, task_id, data)
        return b"".join((_MAGIC, bytes((_VERSION,)), kid, mac, data))

    def open(self, kind: bytes, queue: str, task_id: str, envelope: bytes) -> bytes:
        """The data inside ``envelope``, once its MAC checks out; else
        :class:`SignatureError` (nothing is unpickled)."""
        if not isinstance(envelope, (bytes, bytearray)) or len(envelope) < _HEADER:
            raise SignatureError(f"{kind.decode()} {task_id}: unsigned or truncated blob")
        env = bytes(envelope)
        if env[:2] != _MAGIC or env[2] != _VERSION:
            raise SignatureError(f"{kind.decode()} {task_id}: not a signed procqueue envelope")
        kid, mac, data = env[3:11], env[11:43], env[43:]
        secret = self._keys.get(kid)
        if secret is None:
            raise SignatureError(
                f"{kind.decode()} {task_id}: signed with key {kid.hex()}, which this process "
                f"does not hold (it holds {', '.join(self.key_ids)})"
            )
        if not hmac.compare_digest(mac, _mac(secret, kid, kind, queue, task_id, data)):
            raise SignatureError(f"{kind.decode()} {task_id}: bad signature (tampered?)")
        return data


def key_id(secret: bytes) -> bytes:
    return hashlib.sha256(b"procqueue key id\0" + secret).digest()[:8]


def _mac(secret: bytes, kid: bytes, kind: bytes, queue: str, task_id: str, data: bytes) -> bytes:
    t = task_id.encode()
    # One C call over the joined message (the same bytes an update() per
    # field would feed, a fifth of the Python): every submit and every
    # result pays this.
    msg = b"".join((_head(kid, kind, queue), len(t).to_bytes(4, "big"), t, data))
    return hmac.digest(secret, msg, "sha256")


@functools.lru_cache(maxsize=64)
def _head(kid: bytes, kind: bytes, queue: str) -> bytes:
    """The MAC's fixed fields, length-prefixed: no two different tuples hash
    the same bytes (the task id and the data follow)."""
    if kind not in KINDS:  # pragma: no cover - a bug
        raise ValueError(kind)
    parts: list[bytes] = []
    for part in (bytes((_VERSION,)), kid, kind, queue.encode()):
        parts += (len(part).to_bytes(4, "big"), part)
    return b"".join(parts)


def secrets_from_env(
    secret: str | bytes | None = None, secret_file: str | None = None
) -> list[bytes]:
    """The configured secrets, first the signing one: ``secret`` (str or
    bytes), else the file ``secret_file``, else ``$PROCQUEUE_SECRET``. Several
    secrets (rotation) are separated by commas or newlines. Empty when none."""
    raw: str | bytes | None = secret
    if raw is None and secret_file is not None:
        with open(secret_file, "rb") as f:
            raw = f.read()
    if raw is None:
        raw = os.environ.get("PROCQUEUE_SECRET")
    if raw is None:
        return []
    text = raw if isinstance(raw, bytes) else raw.encode()
    parts = [p.strip() for p in text.replace(b"\n", b",").split(b",")]
    return [p for p in parts if p]
