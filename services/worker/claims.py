"""The reply and delivery claims this worker process holds while it sends, so it renews those and no others."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from services.store.records import SendRecord


class HeldClaims:
    """Claims being worked on here, by (table, message id); each with the attempt number the claim took.

    A job that merely looks at a message (a duplicate process job, a send job finding the send claimed) holds
    nothing: renewing what it does not hold would keep a stopped worker's claim alive.
    """

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], SendRecord] = {}

    @contextmanager
    def holding(self, record: SendRecord) -> Iterator[None]:
        key = (record.model.__name__, record.message_id)
        self._held[key] = record
        try:
            yield
        finally:
            if self._held.get(key) is record:
                del self._held[key]

    def records(self) -> list[SendRecord]:
        return list(self._held.values())
