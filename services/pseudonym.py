"""Keyed pseudonyms of sender addresses (HMAC-SHA256), so counts and dedup never hold an address."""

from __future__ import annotations

import hashlib
import hmac


def pseudonymize(address: str, key: bytes) -> str:
    normalized = address.strip().lower()
    return hmac.new(key, normalized.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
