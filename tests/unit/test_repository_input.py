"""The vendor repositories' inputs are refused before any change, naming the variable: an
archive checksum other than sha256/sha512, and a signing key not pinned by its fingerprint."""

from __future__ import annotations

import pytest
from preflight import FACTS, output, run_preflight

ARCHIVE = {
    "elasticsearch_install_method": "archive",
    "elasticsearch_archive_url": "https://artifacts.example.com/elasticsearch-5.6.16.tar.gz",
}
SHA1 = "sha1:" + "a" * 40
SHA256 = "sha256:" + "b" * 64
SHA512 = "sha512:" + "c" * 128
# MongoDB's APT repository publishes for bookworm, not for the runner's default trixie.
BOOKWORM = {**FACTS, "distribution_release": "bookworm", "distribution_major_version": "12"}
MONGODB_APT = {
    "ansible_facts": BOOKWORM,
    "mongodb_install_method": "apt",
    "mongodb_admin_password": "unit-test-only-admin-password",
    "mongodb_app_password": "unit-test-only-app-password",
}


def assert_refused(result, variable: str, expected: str) -> None:
    text = output(result)
    assert result.returncode != 0, text
    assert "preflight.yml" in text
    assert variable in text
    assert expected in text


@pytest.mark.parametrize("checksum", [SHA256, SHA512], ids=["sha256", "sha512"])
def test_sha256_and_sha512_archive_checksums_pass(tmp_path, checksum):
    variables = {**ARCHIVE, "elasticsearch_archive_checksum": checksum}
    result = run_preflight(tmp_path, "elasticsearch", variables)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("checksum", [SHA1, "md5:" + "d" * 32], ids=["sha1", "md5"])
def test_weaker_archive_checksums_are_refused(tmp_path, checksum):
    variables = {**ARCHIVE, "elasticsearch_archive_checksum": checksum}
    result = run_preflight(tmp_path, "elasticsearch", variables)
    assert_refused(result, "elasticsearch_archive_checksum", "sha512:HEX or sha256:HEX")


@pytest.mark.parametrize(
    ("role", "base"),
    [("elasticsearch", {}), ("mongodb", MONGODB_APT)],
    ids=["elasticsearch", "mongodb"],
)
def test_the_published_signing_keys_are_pinned_by_default(tmp_path, role, base):
    result = run_preflight(tmp_path, role, base)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    ("role", "base"),
    [("elasticsearch", {}), ("mongodb", MONGODB_APT)],
    ids=["elasticsearch", "mongodb"],
)
@pytest.mark.parametrize("fingerprint", ["", "D88E42B4", "not a fingerprint"])
def test_an_unpinned_signing_key_is_refused(tmp_path, role, base, fingerprint):
    variable = f"{role}_apt_key_fingerprint"
    result = run_preflight(tmp_path, role, {**base, variable: fingerprint})
    assert_refused(result, variable, "40 hex digits")
