"""Constants of the domain that every layer shares: the safety categories and their minimum priorities."""

from __future__ import annotations

# Non-negotiable 5: these always reach a human with a priority flag, whatever a rule file says. Order matters:
# an emergency outranks an objection when both are likely.
SAFETY_PRIORITY: dict[str, str] = {"emergency": "urgent", "objection": "high"}
SAFETY_CATEGORIES: tuple[str, ...] = tuple(SAFETY_PRIORITY)
