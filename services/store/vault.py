"""Seal message rows on their way into the database and open them on the way out, with keys in message_key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from services.store.models import Message
from services.store.sealing import new_key, seal, seal_text, unseal, unseal_text


def _context(message_id: object, field: str) -> str:
    return f"{message_id}:{field}"


def seal_message_rows(rows: Iterable[Mapping[str, object]]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """(message rows with raw and mail_from sealed, their message_key rows); the input rows are not changed."""
    sealed: list[dict[str, object]] = []
    keys: list[dict[str, object]] = []
    for row in rows:
        key = new_key()
        message_id = row["id"]
        out = dict(row)
        raw = row.get("raw")
        if isinstance(raw, bytes):
            out["raw"] = seal(key, raw, _context(message_id, "raw"))
        out["mail_from"] = seal_text(key, str(row.get("mail_from") or ""), _context(message_id, "mail_from"))
        sealed.append(out)
        keys.append({"message_id": message_id, "data_key": key})
    return sealed, keys


def open_message(values: Mapping[Any, Any]) -> Message:
    """A detached Message with raw and mail_from in clear, from a message row joined with its `data_key`.

    Without a key (purged, shredded) the message has no body and no sender: raw None, mail_from "".
    """
    fields = {name: value for name, value in values.items() if name != "data_key"}
    key = values.get("data_key")
    message_id = fields["id"]
    if key is None:
        fields["raw"] = None
        fields["mail_from"] = ""
    else:
        if fields.get("raw") is not None:
            fields["raw"] = unseal(key, fields["raw"], _context(message_id, "raw"))
        fields["mail_from"] = unseal_text(key, fields["mail_from"], _context(message_id, "mail_from"))
    return Message(**fields)
