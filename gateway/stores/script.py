"""The token-bucket Lua script: its text, its SHA1, its arguments and its reply."""

from __future__ import annotations

from hashlib import sha1
from importlib import resources
from struct import Struct

from gateway.buckets import BucketOutcome, BucketState, Decision, Limit
from gateway.stores.base import StoreError
from gateway.stores.resp import encode_command

SCRIPT = resources.files("gateway.stores").joinpath("token_bucket.lua").read_bytes()
SHA = sha1(SCRIPT, usedforsecurity=False).hexdigest()
LOAD = encode_command("SCRIPT", "LOAD", SCRIPT)
"""Sent on every new connection, so that EVALSHA rarely meets NOSCRIPT."""


_LIMIT = Struct("<dddd")
_STATE = Struct("<ddd")


def limit_arg(limit: Limit) -> bytes:
    """A limit as the script's ARGV entry: unit, rate, full, fill_us as doubles.

    Doubles hold these integers exactly (``limit_error`` keeps them below 2**53).
    """
    return _LIMIT.pack(limit.unit, limit.rate, limit.full, limit.fill_us)


def state_from_value(value: bytes) -> BucketState:
    """A bucket key's value, as the script packed it (for inspection and tests)."""
    level, stamp, unit = _STATE.unpack(value)
    return BucketState(int(level), int(stamp), int(unit))


def decision_from_reply(reply: object, count: int) -> Decision:
    """The script's ``{allowed, now_us, (remaining, reset_us, wait_us) * count}``."""
    if not isinstance(reply, list) or len(reply) != 2 + 3 * count:
        raise StoreError(f"unexpected reply from the token-bucket script: {reply!r:.200}")
    outcomes = tuple(
        BucketOutcome(reply[i], reply[i + 1], reply[i + 2]) for i in range(2, len(reply), 3)
    )
    return Decision(reply[0] == 1, reply[1], outcomes)


def is_noscript(reply: BaseException) -> bool:
    """Whether an error reply says the server lost the script (restart, SCRIPT FLUSH)."""
    return str(reply).startswith("NOSCRIPT")
