"""The task page's reprs: large values are cut before their repr is made."""

from __future__ import annotations

import tracemalloc

from procqueue.dashboard._reprs import short_repr


def test_a_large_binary_result_is_cut_before_its_repr_is_made() -> None:
    """``reprlib`` has no handler for bytes: it made the whole repr (four
    times the value's size) and cut it afterwards."""
    value = b"\x01" * 20_000_000
    tracemalloc.start()
    try:
        text = short_repr({"data": value, "view": memoryview(value)}, 200)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak:,} bytes traced for a 200-character repr"
    assert text.startswith("{'data': b'\\x01") and len(text) <= 200
    cut = short_repr(bytearray(b"ab" * 100), 60)
    assert cut == "bytearray(b'" + "ab" * 15 + "')... (200 bytes)"  # maxstring: limit // 2
    assert short_repr(b"ab", 60) == "b'ab'"
