"""Content digests: one definition, three uses.

- `sha256_hex(bytes)`: the full SHA-256 of a file's bytes (frames, shards), for provenance and checks.
- `digest(text, length)`: a short identity hash (configs, catalogs, plans, presets, banks: 16 hex
  characters; sample ids: 32), long enough that collisions never happen at our scale.
- `json_digest(value)`: `digest` of a value's canonical JSON (sorted keys), so equal content gives
  an equal digest whatever the key order.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(text: str | bytes, length: int = 16) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:length]


def json_digest(value: Any, length: int = 16) -> str:
    return digest(json.dumps(value, sort_keys=True), length)


def seed_from(text: str) -> int:
    """A non-negative int64 seed from a text: neighbouring texts give unrelated streams."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
