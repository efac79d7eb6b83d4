"""Every data service binds the private address the inventory names, and its preflight refuses
a globally routable one, naming the variable, unless the operator opts out explicitly.

The roles' preflights run on the controller (tests/unit/preflight.py), in check mode and
limited to the preflight tag: a refusal there comes before any task that could change a host.
"""

from __future__ import annotations

import pytest
from preflight import output, run_preflight
from test_secrets_input import ROLES

PUBLIC = "9.9.9.9"
# The bind variable of each data role, and the variables that role's preflight needs to pass.
BINDS = {
    "postgresql": ("postgresql_listen_addresses", ["localhost", PUBLIC]),
    "redis": ("redis_bind_addresses", [PUBLIC, "127.0.0.1"]),
    "rabbitmq": ("rabbitmq_bind_address", PUBLIC),
    "mongodb": ("mongodb_bind_addresses", [PUBLIC, "127.0.0.1"]),
    "elasticsearch": ("elasticsearch_http_host", PUBLIC),
}
# Good input without the bind variable, so the role's default (the private address) applies.
BASE = {
    role: {name: value for name, value in ROLES.get(role, {}).items() if name != BINDS[role][0]}
    for role in BINDS
}


@pytest.mark.parametrize("role", sorted(BINDS))
def test_the_private_address_from_the_inventory_passes(tmp_path, role):
    result = run_preflight(tmp_path, role, BASE[role])
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("role", sorted(BINDS))
def test_a_public_bind_address_is_refused_naming_the_variable(tmp_path, role):
    variable, value = BINDS[role]
    result = run_preflight(tmp_path, role, {**BASE[role], variable: value})
    text = output(result)
    assert result.returncode != 0, text
    assert "preflight.yml" in text, "the refusal must come from the preflight"
    assert variable in text and PUBLIC in text
    assert f"{role}_allow_public_bind" in text, "the refusal names the way out"


@pytest.mark.parametrize("role", sorted(BINDS))
def test_a_public_private_address_is_refused(tmp_path, role):
    """The defaults follow `private_address`: a public one there is caught the same way."""
    result = run_preflight(tmp_path, role, {**BASE[role], "private_address": PUBLIC})
    assert result.returncode != 0, output(result)
    assert f"{role}_allow_public_bind" in output(result)


@pytest.mark.parametrize("role", sorted(BINDS))
def test_the_operator_can_accept_a_public_address(tmp_path, role):
    variable, value = BINDS[role]
    allowed = {**BASE[role], variable: value, f"{role}_allow_public_bind": True}
    result = run_preflight(tmp_path, role, allowed)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    ("role", "variable", "value"),
    [
        ("postgresql", "postgresql_listen_addresses", ["*"]),
        ("postgresql", "postgresql_listen_addresses", ["0.0.0.0"]),
        ("elasticsearch", "elasticsearch_transport_host", "0.0.0.0"),
    ],
)
def test_a_wildcard_is_refused_even_when_public_binds_are_allowed(tmp_path, role, variable, value):
    allowed = {**BASE[role], variable: value, f"{role}_allow_public_bind": True}
    result = run_preflight(tmp_path, role, allowed)
    assert result.returncode != 0, output(result)
    assert variable in output(result)
