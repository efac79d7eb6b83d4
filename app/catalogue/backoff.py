"""Retry delays: exponential backoff with full jitter, capped."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    The ceiling grows base * 2**attempt up to `cap`; the delay is drawn uniformly below it
    ("full jitter"), so many failing tasks do not retry in step.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = min(cap, base * (2**attempt))
    return ceiling * rand()


def backoff_ceilings(attempts: int, base: float, cap: float) -> list[float]:
    """The upper bound of each delay, for documentation and tests."""
    return [min(cap, base * (2**attempt)) for attempt in range(attempts)]
