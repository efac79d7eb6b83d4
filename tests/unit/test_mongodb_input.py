"""The mongodb role's test server method (secantusdb) is refused before any change, naming the
variable, when the controller's wheelhouse holds no wheel of the pinned release for the
host's Python; a wheelhouse that does passes."""

from __future__ import annotations

import pytest
from preflight import output, run_preflight

PASSWORDS = {
    "mongodb_admin_password": "unit-test-only-admin-password",
    "mongodb_app_password": "unit-test-only-app-password",
}
# preflight.FACTS describe a Debian 13 host: Python 3.13.
WHEELS = {
    "for the host's Python": ("secantusdb-0.7.0b3-cp313-cp313-manylinux_2_28_x86_64.whl", True),
    "for another Python": ("secantusdb-0.7.0b3-cp311-cp311-manylinux_2_28_x86_64.whl", False),
    "of another release": ("secantusdb-0.6.0-cp313-cp313-manylinux_2_28_x86_64.whl", False),
}


@pytest.mark.parametrize("wheel", list(WHEELS), ids=list(WHEELS))
def test_the_wheelhouse_must_hold_the_pinned_release_for_the_hosts_python(tmp_path, wheel):
    name, passes = WHEELS[wheel]
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    (wheelhouse / name).touch()
    variables = {
        **PASSWORDS,
        "mongodb_install_method": "secantusdb",
        "mongodb_secantusdb_wheelhouse": str(wheelhouse),
    }
    result = run_preflight(tmp_path, "mongodb", variables)
    text = output(result)
    if passes:
        assert result.returncode == 0, text
    else:
        assert result.returncode != 0, text
        assert "mongodb_secantusdb_wheelhouse" in text
        assert "Python 3.13" in text


def test_an_unknown_install_method_is_refused(tmp_path):
    variables = {**PASSWORDS, "mongodb_install_method": "binary"}
    result = run_preflight(tmp_path, "mongodb", variables)
    assert result.returncode != 0
    assert "mongodb_install_method" in output(result)
