"""Signed envelopes: nothing read from Redis is unpickled before its MAC checks."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from procqueue.errors import InvalidArgumentError
from procqueue.redis._signing import SignatureError, Signer, secrets_from_env

A = b"a" * 32
B = b"b" * 32


def test_a_sealed_blob_opens_only_for_its_task_kind_and_queue() -> None:
    s = Signer([A])
    env = s.seal(b"task", "q", "7", b"payload")
    assert s.open(b"task", "q", "7", env) == b"payload"
    for kind, queue, tid in ((b"result", "q", "7"), (b"task", "other", "7"), (b"task", "q", "8")):
        with pytest.raises(SignatureError, match="bad signature"):
            s.open(kind, queue, tid, env)


def test_tampered_unsigned_and_foreign_blobs_are_refused() -> None:
    s = Signer([A])
    env = bytearray(s.seal(b"task", "q", "1", b"payload"))
    env[-1] ^= 1
    with pytest.raises(SignatureError, match="bad signature"):
        s.open(b"task", "q", "1", bytes(env))
    with pytest.raises(SignatureError, match="unsigned or truncated"):
        s.open(b"task", "q", "1", b"\x80\x05N.")  # a bare pickle
    with pytest.raises(SignatureError, match="not a signed"):
        s.open(b"task", "q", "1", b"X" * 60)
    with pytest.raises(SignatureError, match="does not hold"):
        s.open(b"task", "q", "1", Signer([B]).seal(b"task", "q", "1", b"payload"))


def test_rotation_signs_with_the_first_and_verifies_with_all() -> None:
    old, new = Signer([A]), Signer([B, A])
    assert new.open(b"result", "q", "1", old.seal(b"result", "q", "1", b"v")) == b"v"
    with pytest.raises(SignatureError):
        old.open(b"result", "q", "1", new.seal(b"result", "q", "1", b"v"))


def test_short_or_missing_secrets_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgumentError, match="at least 32"):
        Signer([b"short"])
    with pytest.raises(InvalidArgumentError, match="no secret"):
        Signer([])
    monkeypatch.setenv("PROCQUEUE_SECRET", f"{B.decode()}, {A.decode()}")
    assert secrets_from_env() == [B, A]
    monkeypatch.delenv("PROCQUEUE_SECRET")
    assert secrets_from_env() == []
    assert secrets_from_env(secret="x" * 40) == [b"x" * 40]


def test_the_envelope_is_the_documented_layout_byte_for_byte() -> None:
    # Nodes of different versions share a queue: the MAC input must not
    # drift. Length-prefixed version, key id, kind, queue and task id, then
    # the data (the module docstring's layout), computed here independently.
    secret = b"k" * 32
    sealed = Signer([secret]).seal(b"task", "default", "42", b"payload")
    kid = hashlib.sha256(b"procqueue key id\0" + secret).digest()[:8]
    h = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (b"\x01", kid, b"task", b"default", b"42"):
        h.update(len(part).to_bytes(4, "big") + part)
    h.update(b"payload")
    assert sealed == b"PQ\x01" + kid + h.digest() + b"payload"
    assert sealed.hex().startswith("505101f21dc8368d08a6ee72")
