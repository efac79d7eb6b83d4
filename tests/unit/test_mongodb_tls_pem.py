"""The mongodb role puts mongod's certificate-and-key file together on the host
(roles/mongodb/tasks/tls_pem.yml): the key is never read back to the controller, the file is
the certificate followed by the key, root:mongodb 0640, and a second run changes nothing.

The task file runs on the controller as on a host (local connection), with the service left
alone (mongodb_service_state: stopped keeps the restart handler from running)."""

from __future__ import annotations

import grp
import os
import re
import sys
from pathlib import Path

import pytest
from preflight import run_play, tasks_play

CERT = "-----BEGIN CERTIFICATE-----\nMIIBcertificate0123\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEkeymaterial4567\n-----END PRIVATE KEY-----\n"
GROUP = grp.getgrgid(os.getgid()).gr_name

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown root:GROUP needs root")


def converge(tmp_path: Path) -> tuple[int, str]:
    variables = {
        "ansible_python_interpreter": sys.executable,
        "mongodb_tls_certificate": str(tmp_path / "host.crt"),
        "mongodb_tls_private_key": str(tmp_path / "host.key"),
        "mongodb_config_path": str(tmp_path / "etc" / "mongod.conf"),
        "mongodb_group": GROUP,
        "mongodb_service_state": "stopped",
    }
    # -vvv: every module's arguments and results, as far as Ansible would ever show them.
    result = run_play(tmp_path, tasks_play("mongodb", "tls_pem"), variables, "-vvv")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    recap = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", out)
    assert recap, out
    return int(recap.group(1)), out


def test_the_pem_is_made_on_the_host_and_the_key_never_reaches_the_controller(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "host.crt").write_text(CERT)
    (tmp_path / "host.key").write_text(KEY)
    (tmp_path / "host.key").chmod(0o640)
    pem = tmp_path / "etc" / "mongod-tls.pem"

    changed, out = converge(tmp_path)
    assert changed == 1
    assert pem.read_text() == CERT + KEY
    assert (pem.stat().st_mode & 0o777, pem.stat().st_uid) == (0o640, 0)
    assert grp.getgrgid(pem.stat().st_gid).gr_name == GROUP
    assert "MIIEkeymaterial4567" not in out
    assert list((tmp_path / "etc").iterdir()) == [pem], "a temporary file was left"

    assert converge(tmp_path)[0] == 0

    # A loosened mode is repaired; a renewed certificate rewrites the file.
    pem.chmod(0o644)
    assert converge(tmp_path)[0] == 1
    assert pem.stat().st_mode & 0o777 == 0o640
    renewed = CERT.replace("certificate0123", "certificate8901")
    (tmp_path / "host.crt").write_text(renewed)
    assert converge(tmp_path)[0] == 1
    assert pem.read_text() == renewed + KEY
