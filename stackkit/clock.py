"""How far a host's clock is from the controller's, for the warning the checks give before any
TLS link is tried (the pki role gives the same one when it converges).

Certificates start pki_backdate_hours before they are issued; a host whose clock lags the
controller's by more rejects them as not yet valid, and every TLS check fails with "certificate
is not yet valid" rather than naming the clock.
"""

from __future__ import annotations

import time


def clock_skew(host) -> float | None:
    """Seconds the host's clock is ahead of the controller's (negative: behind), against the
    controller's time halfway through the round trip; None when the host cannot be asked."""
    # Two wall clocks compared, not a duration timed: the one place time.time() belongs.
    before = time.time()
    answer = host.run("date -u +%s.%N")
    after = time.time()
    if answer.rc != 0:
        return None
    return float(answer.stdout.strip()) - (before + after) / 2


def clock_warning(name: str, skew: float | None, threshold: float) -> str | None:
    """The warning for host `name`, or None while its clock is within `threshold` seconds."""
    if skew is None or abs(skew) <= threshold:
        return None
    direction = "behind" if skew < 0 else "ahead of"
    return (
        f"the clock of {name} is {abs(skew):.0f} s {direction} the controller's, more than "
        f"pki_clock_skew_warn_seconds ({threshold:g}): TLS checks may fail with certificates "
        "not yet valid or expired; synchronise the clocks (NTP)"
    )
