"""The pki role issues a host certificate that starts pki_backdate_hours before the controller
issued it, records that issue time beside it, keeps it on a second run and issues it anew when
it does not start early enough for the margin asked.

The role's own preflight and configure tasks run on the controller against a temporary pki_dir
(tests/unit/preflight.py), with a CA made the way `make secrets` makes one: the same modules and
arithmetic that sign a real host's certificate.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from preflight import output, run_play

from stackkit import make_vault

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((ROOT / "roles/pki/defaults/main.yml").read_text())


def converge(directory: Path, ca: tuple[str, str], *options: str, **overrides):
    """The role's preflight and configure tasks on localhost, certificates in directory/pki."""
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "tasks": [
                {"name": name, "ansible.builtin.include_role": {"name": "pki", "tasks_from": name}}
                for name in ("preflight", "configure")
            ],
        }
    ]
    variables = {
        "pki_ca_certificate": ca[0],
        "pki_ca_private_key": ca[1],
        "pki_dir": str(directory / "pki"),
        "pki_key_group": "root",
        "ansible_host": "127.0.0.1",
        # The controller's own Python, which has the cryptography library the modules use.
        "ansible_python_interpreter": sys.executable,
        **overrides,
    }
    result = run_play(directory, play, variables, *options)
    assert result.returncode == 0, output(result)
    return result


def issued(directory: Path) -> tuple[x509.Certificate, datetime, dict]:
    """The certificate the role installed, the issue time it recorded, and the record."""
    pem = (directory / "pki/host.crt").read_bytes()
    record = yaml.safe_load((directory / "pki/host.crt.issued").read_text())
    at = datetime.strptime(record["issued"], "%Y-%m-%dT%H:%M:%S%z")
    return x509.load_pem_x509_certificate(pem), at, record


def changed(result) -> int:
    recap = next(line for line in result.stdout.splitlines() if line.startswith("localhost"))
    return int(recap.split("changed=")[1].split()[0])


@pytest.fixture(scope="module")
def ca() -> tuple[str, str]:
    return make_vault.internal_ca("unit test CA")


def test_the_certificate_starts_the_margin_before_its_recorded_issue_and_is_kept(tmp_path, ca):
    before = datetime.now(UTC).replace(microsecond=0)
    converge(tmp_path, ca)
    after = datetime.now(UTC)
    certificate, at, _ = issued(tmp_path)
    margin = timedelta(hours=DEFAULTS["pki_backdate_hours"])
    print(
        f"issued {at:%Y-%m-%d %H:%M:%S}Z, notBefore {certificate.not_valid_before_utc}, "
        f"notAfter {certificate.not_valid_after_utc}"
    )
    assert margin >= timedelta(hours=1)
    assert before <= at <= after
    assert certificate.not_valid_before_utc == at - margin
    assert certificate.not_valid_after_utc == at + timedelta(days=DEFAULTS["pki_certificate_days"])

    files = [tmp_path / "pki/host.crt", tmp_path / "pki/host.crt.issued"]
    first = [path.read_text() for path in files]
    assert changed(converge(tmp_path, ca, "--check", "--diff")) == 0
    assert changed(converge(tmp_path, ca)) == 0
    assert [path.read_text() for path in files] == first


def test_a_certificate_that_does_not_start_early_enough_for_its_record_is_issued_anew(tmp_path, ca):
    """One from before the margin existed has no record, one edited by hand no longer matches
    its record, and a margin raised is not met by the old certificate: each is replaced."""
    record_path = tmp_path / "pki/host.crt.issued"
    converge(tmp_path, ca)

    def reissued(hours: int = DEFAULTS["pki_backdate_hours"], **overrides) -> None:
        old = x509.load_pem_x509_certificate((tmp_path / "pki/host.crt").read_bytes())
        converge(tmp_path, ca, **overrides)
        certificate, at, _ = issued(tmp_path)
        assert certificate.serial_number != old.serial_number
        assert certificate.not_valid_before_utc == at - timedelta(hours=hours)

    record_path.unlink()
    reissued()
    record = yaml.safe_load(record_path.read_text())
    record_path.write_text(yaml.safe_dump({**record, "sha256": "0" * 64}))
    reissued()
    reissued(48, pki_backdate_hours=48)


@pytest.mark.parametrize(
    "variables",
    [
        {"pki_backdate_hours": 0},
        {"pki_backdate_hours": 397 * 24},
        {"pki_clock_skew_warn_seconds": 0},
    ],
    ids=["no margin", "margin past the validity", "no skew threshold"],
)
def test_a_margin_that_makes_no_sense_is_refused_before_any_change(tmp_path, ca, variables):
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False, "roles": ["pki"]}]
    good = {
        "pki_ca_certificate": ca[0],
        "pki_ca_private_key": ca[1],
        "pki_dir": str(tmp_path / "pki"),
        "ansible_python_interpreter": sys.executable,
    }
    result = run_play(tmp_path, play, {**good, **variables}, "--tags", "pki_preflight")
    assert result.returncode != 0
    assert "Assert the validity periods make sense" in output(result)
    assert next(iter(variables)) in output(result)
    assert not (tmp_path / "pki").exists()


def test_the_certificate_names_the_private_address_where_it_differs(tmp_path, ca):
    """The tiers connect to private_address and check it against the certificate: a host that
    Ansible reaches at another address carries both; one whose addresses agree carries it once."""
    for name in ("one", "same"):
        (tmp_path / name).mkdir()
    converge(tmp_path / "one", ca, private_address="10.20.30.40")
    certificate, _, _ = issued(tmp_path / "one")
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    addresses = sorted(str(address) for address in names.get_values_for_type(x509.IPAddress))
    assert addresses == ["10.20.30.40", "127.0.0.1"]
    converge(tmp_path / "same", ca)
    certificate, _, _ = issued(tmp_path / "same")
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
