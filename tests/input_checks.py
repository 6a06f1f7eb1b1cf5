"""Shared helpers of the input-mechanism tests: bounded time and memory around a refusal."""

from __future__ import annotations

import contextlib
import threading
import tracemalloc


def within(seconds: float, fn, *args, **kwargs):
    """fn(*args) in a daemon thread; fails the test (instead of hanging it) past ``seconds``.
    Returns ("ok", value) or ("raised", exception)."""
    box = {}

    def run():
        try:
            box["ok"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["raised"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s (a hang)"
    return ("raised", box["raised"]) if "raised" in box else ("ok", box["ok"])


@contextlib.contextmanager
def small_peak(limit_bytes: int = 64 << 20):
    """Asserts that the Python/numpy allocations inside stay below ``limit_bytes`` at their peak."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit_bytes, f"peak allocation {peak / 2**20:.1f} MiB (>= {limit_bytes / 2**20:.0f} MiB)"


def one_line(err) -> str:
    """The UserError's text as the CLI prints it (one line, no newline inside)."""
    text = str(err)
    assert "\n" not in text and text.strip() == text and text, repr(text)
    return text
