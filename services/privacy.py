"""Keep personal data out of stored diagnostics and logs: addresses inside relay error texts are masked."""

from __future__ import annotations

import re

# a relay's refusal often quotes the recipient ("5.1.1 <max@example.org>: Recipient address rejected")
_ADDRESS_LIKE = re.compile(r"[^\s<>()\[\],;:\"'@]+@[^\s<>()\[\],;:\"'@]+")


def mask_addresses(text: str) -> str:
    return _ADDRESS_LIKE.sub("<address>", text)
