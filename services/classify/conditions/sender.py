"""`sender:`: the From address or the envelope sender matches."""

from __future__ import annotations

from services.classify.conditions.addresses import AddressMatch, address_kind
from services.classify.conditions.base import ConditionKind

KIND: ConditionKind[AddressMatch] = address_kind("sender", lambda facts: facts.senders)
