"""What a hostile or broken server sends (`Faults.garbage_after_handshake`): well-framed messages that no client
can use. Unknown message ids, ids that are not numbers, known ids with the wrong number of fields, and a
MANAGED_ACCTS of "-1" in place of the account list.

Pure and seeded: the same seed gives the same junk, so a test that sees it fail can see it again. Every frame is
valid framing (a length prefix and NUL-terminated fields): only what the fields say is wrong.
"""

from __future__ import annotations

import random

from .framing import Field
from .messages import Out

JUNK_ACCOUNTS = "-1"


def junk_frames(seed: int, count: int, greeting: bool = False) -> list[list[Field]]:
    """`count` junk messages drawn with `seed`. `greeting`: only junk that a client still waiting for its
    nextValidId and managedAccounts reads past (ib_async parses every message id as an integer then, and those two
    messages' fields as exact tuples, outside its decoder's error handling: junk there breaks its connect)."""
    rng = random.Random(seed)
    return [_junk(rng, greeting) for _ in range(count)]


def greeting(seed: int) -> list[list[Field]]:
    """In place of startApi's MANAGED_ACCTS: junk, MANAGED_ACCTS "-1", more junk (NEXT_VALID_ID follows as usual,
    so that a client completes its connect believing "-1" is the account)."""
    junk = junk_frames(seed, 6, greeting=True)
    return [*junk[:3], [Out.MANAGED_ACCTS, 1, JUNK_ACCOUNTS], *junk[3:]]


def _junk(rng: random.Random, greeting: bool) -> list[Field]:
    kind = rng.choice([0, 2, 3, 4] if greeting else range(5))
    if kind == 0:  # an id no decoder has
        return [rng.choice([0, 13, 77, 250, 999, 31337]), 1, rng.randrange(10**6)]
    if kind == 1:  # an id that is no number
        return [rng.choice(["x7", "", "-", "NaN", "15.5"]), 1, "junk"]
    if kind == 2:  # POSITION_DATA / PORTFOLIO_VALUE cut short (their decoders unpack exact tuples)
        return [rng.choice([Out.POSITION_DATA, Out.PORTFOLIO_VALUE]), 3, "DU?", "notaconid"]
    if kind == 3:  # ERR_MSG without its code and text
        return [Out.ERR_MSG, 2]
    # a known id with fields too many and of the wrong types
    ids = [Out.ACCT_VALUE, Out.PNL_SINGLE] if greeting else [Out.ACCT_VALUE, Out.PNL_SINGLE, Out.NEXT_VALID_ID]
    return [rng.choice(ids), *("?" * rng.randrange(1, 12))]
