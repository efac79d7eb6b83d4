"""The rabbitmq role's preflight for the Erlang distribution over TLS: the TLS files must be
named, and the node's certificate must name the node's short host name (a peer's TLS client
checks it against the HOST of rabbit@HOST), or the role stops before it changes anything.

The preflight runs on the controller (tests/unit/preflight.py): the host's name there is the
inventory's `localhost`, and the certificate a file written here.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from preflight import output, run_preflight
from test_secrets_input import ROLES

# The certificate is read by a module (community.crypto's): on the controller, with the
# interpreter that has its library.
BASE = {
    **ROLES["rabbitmq"],
    "rabbitmq_dist_tls_enabled": True,
    "ansible_python_interpreter": sys.executable,
}


def certificate(directory: Path, names: list[str]) -> Path:
    """A self-signed certificate for the DNS names given (the preflight reads only its names)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    path = directory / "host.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize(
    "variable",
    ["rabbitmq_tls_certificate", "rabbitmq_tls_private_key", "rabbitmq_tls_ca_certificate"],
)
def test_a_tls_file_left_empty_is_refused_naming_it(tmp_path, variable):
    result = run_preflight(tmp_path, "rabbitmq", {**BASE, variable: ""})
    text = output(result)
    assert result.returncode != 0, text
    assert "preflight.yml" in text and variable in text


def test_a_certificate_without_the_nodes_host_name_is_refused(tmp_path):
    path = certificate(tmp_path, ["broker1.example.org"])
    result = run_preflight(tmp_path, "rabbitmq", {**BASE, "rabbitmq_tls_certificate": str(path)})
    text = output(result)
    assert result.returncode != 0, text
    assert "DNS:localhost" in text and "rabbit@localhost" in text and "broker1.example.org" in text


def test_a_certificate_naming_the_nodes_host_passes(tmp_path):
    path = certificate(tmp_path, ["broker1.example.org", "localhost"])
    result = run_preflight(tmp_path, "rabbitmq", {**BASE, "rabbitmq_tls_certificate": str(path)})
    assert result.returncode == 0, output(result)


def test_with_the_distribution_in_plaintext_no_certificate_is_needed(tmp_path):
    variables = {**BASE, "rabbitmq_dist_tls_enabled": False, "rabbitmq_tls_certificate": ""}
    result = run_preflight(tmp_path, "rabbitmq", variables)
    assert result.returncode == 0, output(result)


def test_in_check_mode_a_new_host_without_a_certificate_yet_passes(tmp_path):
    """--check on a new host: the pki role has not issued the certificate yet."""
    missing = str(tmp_path / "not-issued-yet.crt")
    result = run_preflight(tmp_path, "rabbitmq", {**BASE, "rabbitmq_tls_certificate": missing})
    assert result.returncode == 0, output(result)
