"""Rule regexes with a time limit: the `regex` engine with a per-search timeout, and a load-time probe.

Python's `re` backtracks without bound: one pattern like `^(\\w+\\s?)+$` and a 31-byte body froze a worker
for 52 s. The `regex` package has the same syntax and semantics for everything `re` accepts (rules are
still validated with `re`) and stops a search after `timeout`.
"""

from __future__ import annotations

import functools
import time

import regex

# per search; the engine checks its clock every few thousand steps, so a search may overrun it a little
SEARCH_TIMEOUT = 0.05
# The engine's clock is the wall clock: on a loaded machine a thread that waits for a core (or for the GIL)
# runs out of it without searching, and a safety rule would count as not matching. A search that timed out
# having used less than half its time on the CPU is run again, this many times at most.
PREEMPTED_RETRIES = 3
PROBE_TIMEOUT = 0.05
# inputs that make catastrophic patterns explode: long runs of one letter, of words, of digits, each
# followed by a character that makes the overall match fail
_PROBES = tuple(
    body + tail
    for body in ("a" * 40, "a" * 4000, "hallo " * 400, "1" * 2000, "a." * 1000, "\n" * 2000)
    for tail in ("", "!", " 1", "\x00")
)


class RegexTimeout(Exception):
    """A rule regex ran past its time limit on one text: the rule is treated as not matching."""


class SafePattern:
    """A case-insensitive pattern whose every search is bounded in time."""

    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._compiled = regex.compile(pattern, regex.IGNORECASE | regex.VERSION0)

    def search(self, text: str) -> regex.Match[str] | None:
        for retries_left in range(PREEMPTED_RETRIES, -1, -1):
            started = time.thread_time()
            try:
                return self._compiled.search(text, timeout=SEARCH_TIMEOUT)
            except TimeoutError as exc:
                if not retries_left or time.thread_time() - started >= SEARCH_TIMEOUT / 2:
                    raise RegexTimeout(self.pattern) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")


@functools.lru_cache(maxsize=4096)
def catastrophic(pattern: str) -> bool:
    """True when the pattern runs out of time on one of the probes: it backtracks exponentially."""
    compiled = regex.compile(pattern, regex.IGNORECASE | regex.VERSION0)
    # runs of the pattern's own letters too: `(x+x+)+y` only explodes on x's
    letters = list(dict.fromkeys(c for c in pattern.lower() if c.isalpha()))[:8]
    for probe in (*_PROBES, *(letter * 60 + tail for letter in letters for tail in ("", "!"))):
        try:
            compiled.search(probe, timeout=PROBE_TIMEOUT)
        except TimeoutError:
            return True
    return False
