"""Every host's TLS key and certificate (pki role): the key stays private to the host's TLS
services, the certificate chains to the internal CA and names the host. Read-only."""

from __future__ import annotations

from datetime import datetime, timedelta

import yaml
from conftest import address_of
from cryptography import x509

testinfra_hosts = ["ansible://all"]
ROLE = "pki"


def test_the_private_key_is_readable_by_the_tls_services_only(host, v):
    key = host.file(f"{v('pki_dir')}/host.key")
    assert key.user == "root"
    assert key.group == v("pki_key_group")
    assert key.mode == 0o640


def test_the_certificate_chains_to_the_internal_ca(host, v):
    directory = v("pki_dir")
    out = host.check_output(
        f"openssl verify -purpose sslserver -CAfile {directory}/ca.crt {directory}/host.crt"
    )
    assert out.endswith(": OK")


def test_the_certificate_names_the_host_and_its_private_address(host, v):
    text = host.check_output(f"openssl x509 -noout -ext subjectAltName -in {v('pki_dir')}/host.crt")
    assert f"IP Address:{address_of(host)}" in text
    assert f"DNS:{host.backend.get_hostname()}" in text


def test_the_key_matches_the_certificate(host, v):
    directory = v("pki_dir")
    from_key = host.check_output(f"openssl pkey -in {directory}/host.key -pubout")
    from_cert = host.check_output(f"openssl x509 -in {directory}/host.crt -noout -pubkey")
    assert from_key == from_cert


def test_the_certificate_starts_the_margin_before_the_issue_the_role_recorded(host, v):
    """A host whose clock lags the controller's by less than pki_backdate_hours still accepts
    the certificates: each starts that long before the controller issued it. The issue time is
    the one the role wrote beside the certificate (host.crt.issued) when it signed it."""
    directory = v("pki_dir")
    certificate_file = host.file(f"{directory}/host.crt")
    record = yaml.safe_load(host.file(f"{directory}/host.crt.issued").content_string)
    assert record["sha256"] == certificate_file.sha256sum, "the record is of another certificate"
    issued = datetime.strptime(record["issued"], "%Y-%m-%dT%H:%M:%S%z")
    certificate = x509.load_pem_x509_certificate(certificate_file.content)
    print(
        f"{host.backend.get_hostname()}: issued {issued}, notBefore "
        f"{certificate.not_valid_before_utc}, notAfter {certificate.not_valid_after_utc}"
    )
    margin = timedelta(hours=v("pki_backdate_hours"))
    assert certificate.not_valid_before_utc <= issued - margin
