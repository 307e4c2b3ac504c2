"""Identifiers and timestamps."""

from __future__ import annotations

import secrets
import time

from google.protobuf import timestamp_pb2


def new_id(prefix: str, separator: str = "-") -> str:
    """`{prefix}-{24 hex}`: 96 random bits, so ids can't be guessed across orgs. (Uploads
    and their parts take OpenAI's `_`: `upload_{24 hex}`.)"""
    return f"{prefix}{separator}{secrets.token_hex(12)}"


def now() -> float:
    return time.time()


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts
