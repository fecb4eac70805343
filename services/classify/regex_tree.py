"""The one place that reads `re`'s private parser (`re._parser`, `re._constants`, `re._casefix`) for the prefilter.

At import it checks that the parse tree has the shape the prefilter walks (Python 3.11–3.13); on any other
shape `AVAILABLE` is False, the prefilter takes no requirement from any pattern and every regex runs.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

Node = tuple[Any, Any]

_parser: Any = None
LITERAL: Any = None
SUBPATTERN: Any = None
ATOMIC_GROUP: Any = None
BRANCH: Any = None
REPEATS: tuple[Any, ...] = ()
# characters `re` treats as one letter under IGNORECASE beyond plain lowercasing (s and long s, the sigmas)
EXTRA_CASES: dict[int, tuple[int, ...]] = {}


def _load() -> bool:
    global _parser, LITERAL, SUBPATTERN, ATOMIC_GROUP, BRANCH, REPEATS, EXTRA_CASES
    try:
        parser = importlib.import_module("re._parser")
        constants = importlib.import_module("re._constants")
        extra = dict(importlib.import_module("re._casefix")._EXTRA_CASES)
        names = ("LITERAL", "SUBPATTERN", "ATOMIC_GROUP", "BRANCH", "MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
        literal, subpattern, atomic, branch, *repeats = (getattr(constants, name) for name in names)
        # the shapes the prefilter reads: literal code points, (group, add, del, body), (None, [bodies]),
        # (low, high, body), an atomic group's body
        probe = list(parser.parse("a(b|cd){1,2}(?>e)", re.IGNORECASE))
        (op_a, a), (op_rep, (low, high, body)), (op_atomic, atomic_body) = probe
        ((op_sub, sub),) = list(body)
        ((op_branch, (_, branches)),) = list(sub[-1])
        shapes_match = (
            (op_a, a, op_rep, low, high, op_sub, op_branch, op_atomic)
            == (literal, 97, repeats[0], 1, 2, subpattern, branch, atomic)
            and [[argument for _, argument in alternative] for alternative in branches] == [[98], [99, 100]]
            and list(atomic_body) == [(literal, 101)]
            and extra.get(ord("s")) == (0x17F,)
        )
    except Exception:  # moved, renamed or reshaped internals: no prefilter
        return False
    if not shapes_match:
        return False
    _parser, LITERAL, SUBPATTERN, ATOMIC_GROUP, BRANCH = parser, literal, subpattern, atomic, branch
    REPEATS, EXTRA_CASES = tuple(repeats), extra
    return True


AVAILABLE = _load()


def parse(pattern: str, flags: int) -> list[Node]:
    """The top-level sequence of the tree `re.compile` builds for the pattern; only call when AVAILABLE."""
    return list(_parser.parse(pattern, flags))
