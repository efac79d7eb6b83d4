"""The read-only checks compare each host's clock with the controller's before its first check
(stackkit/clock.py) and warn, naming the host, beyond pki_clock_skew_warn_seconds."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from stackkit.clock import clock_skew, clock_warning


class HostClock:
    """A host whose clock reads `offset` seconds from the controller's (or cannot be read)."""

    def __init__(self, offset: float, rc: int = 0):
        self.offset, self.rc = offset, rc

    def run(self, command: str):
        assert command == "date -u +%s.%N"
        return SimpleNamespace(rc=self.rc, stdout=f"{time.time() + self.offset:.9f}\n")


@pytest.mark.parametrize("offset", [-3600.0, 0.0, 90.0])
def test_the_skew_is_the_host_clock_minus_the_controllers(offset):
    assert clock_skew(HostClock(offset)) == pytest.approx(offset, abs=1)


def test_a_host_that_cannot_be_asked_has_no_skew():
    assert clock_skew(HostClock(0, rc=255)) is None


def test_a_host_an_hour_behind_is_named_and_one_within_the_threshold_is_not():
    warning = clock_warning("db1", clock_skew(HostClock(-3600)), 60)
    assert warning is not None
    assert "db1" in warning
    assert "3600 s behind" in warning
    assert "ahead of" in clock_warning("web1", 61, 60)
    assert clock_warning("web1", 60, 60) is None
    assert clock_warning("web1", -59.5, 60) is None
    assert clock_warning("web1", None, 60) is None
