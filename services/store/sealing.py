"""Encryption at rest for what a citizen sent: AES-256-GCM with a fresh data key per message (crypto-shredding).

Each message's raw bytes, envelope sender and threading headers are sealed with its own key, kept in the
`message_key` table. Purge deletes the key: whatever a database leaves behind (dead tuples that survive
VACUUM, WAL segments, backups) holds ciphertext nobody can open any more.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_NONCE_BYTES = 12


class SealBroken(Exception):
    """A sealed value does not open with its key: tampered with, truncated or sealed for another field."""


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def seal(key: bytes, plaintext: bytes, context: str) -> bytes:
    """nonce || ciphertext || tag. `context` (message id and field) is authenticated, so a sealed value
    copied to another row or column does not open there."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context.encode())


def unseal(key: bytes, sealed: bytes, context: str) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], context.encode())
    except (InvalidTag, ValueError) as exc:
        raise SealBroken(context.partition(":")[2] or "value") from exc


def seal_text(key: bytes, plaintext: str, context: str) -> str:
    """For text columns: the sealed bytes as URL-safe base64 (4/3 of plaintext + 28 bytes)."""
    return base64.urlsafe_b64encode(seal(key, plaintext.encode("utf-8", "surrogateescape"), context)).decode()


def unseal_text(key: bytes, sealed: str, context: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(sealed.encode())
    except ValueError as exc:
        raise SealBroken(context.partition(":")[2] or "value") from exc
    return unseal(key, raw, context).decode("utf-8", "surrogateescape")
