"""`recipient:`: an envelope recipient, To or Cc address matches."""

from __future__ import annotations

from services.classify.conditions.addresses import AddressMatch, address_kind
from services.classify.conditions.base import ConditionKind

KIND: ConditionKind[AddressMatch] = address_kind("recipient", lambda facts: facts.recipients)
