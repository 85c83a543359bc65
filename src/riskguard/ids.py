"""Time-ordered ids: a prefix, then 26 Crockford base32 characters (48-bit milliseconds since
the epoch, then 80 random bits).

Ids sort by creation time, which keeps primary-key B-tree indexes append-mostly and list orders
stable; 80 random bits per millisecond never collide in practice. They need to be unique, not
secret (they are tenant-scoped and behind authentication): the Mersenne Twister, seeded from
the OS once per process, is an order of magnitude cheaper than ``os.urandom`` here. Decisions
(``dec_``), outbox messages (``evt_``), alerts, notes and labels all take theirs from
:func:`time_ordered_id`; it runs once or more per decision, so it encodes ten bits at a time
from a table (13 look-ups) rather than through ``base64`` (pure Python on CPython 3.11).
"""

from __future__ import annotations

import random
import time

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [hi + lo for hi in CROCKFORD for lo in CROCKFORD]  # every 10-bit value, two digits
_SHIFTS = range(120, -1, -10)
_MS_MASK = (1 << 48) - 1
_random_bits = random.Random().getrandbits  # seeded from os.urandom when created


def time_ordered_id(prefix: str, now: float | None = None) -> str:
    """``prefix`` + 26 Crockford base32 characters for the time ``now`` (seconds since the
    epoch; default: the current time)."""
    ms = int((time.time() if now is None else now) * 1000) & _MS_MASK
    value = (ms << 80) | _random_bits(80)
    pairs = _PAIRS
    return prefix + "".join([pairs[(value >> shift) & 1023] for shift in _SHIFTS])
