"""`always: true`: every mail (the catch-all, like a rule without `when`)."""

from __future__ import annotations

from typing import Literal

from services.classify.conditions.base import Check, ConditionKind, Context, leaf


def _compile(_spec: Literal[True], path: str, _context: Context) -> Check:
    return leaf(path + ".always", lambda _facts: True, lambda _facts: (True, ""))


KIND: ConditionKind[Literal[True]] = ConditionKind(key="always", schema=Literal[True], compile=_compile)
