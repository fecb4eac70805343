"""Plain read-only values of a claimed send that a worker passes from step to step."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.store.models import Delivery, Reply

# Building a table-model object costs 25-45 microseconds (validation and change tracking the worker never
# uses) and a decision took four of them per mail; these dataclasses (and the Verdict) cost about 1.


@dataclass(frozen=True, slots=True)
class SendRecord:
    """A reply or a delivery claimed by this worker: which one, its attempt, and a reply's threading headers."""

    model: type[Reply] | type[Delivery]
    message_id: str
    attempts: int
    reply_message_id: str | None = None
    in_reply_to: str | None = None
    references: str | None = None

    @classmethod
    def of(cls, model: type[Reply] | type[Delivery], values: Mapping[Any, Any]) -> SendRecord:
        """From a `reply` or `delivery` row's values (a delivery has no threading headers)."""
        return cls(
            model=model,
            message_id=values["message_id"],
            attempts=values["attempts"],
            reply_message_id=values.get("reply_message_id"),
            in_reply_to=values.get("in_reply_to"),
            references=values.get("references"),
        )
