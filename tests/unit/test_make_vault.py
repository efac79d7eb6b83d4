"""`make secrets` (stackkit/make_vault.py): a fresh encrypted vault for a new inventory,
with every variable the example lists, values the roles' preflights accept, and no overwrite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stackkit import make_vault

ROOT = Path(__file__).resolve().parents[2]

PASSWORD = "unit-test-vault-password"


def run(inventory: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    password_file = tmp_path / "vault-password"
    password_file.write_text(PASSWORD + "\n")
    return subprocess.run(
        [sys.executable, "-m", "stackkit.make_vault", str(inventory)],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_VAULT_PASSWORD_FILE": str(password_file)},
        check=False,
    )


def decrypt(path: Path) -> dict:
    vault = VaultLib([("default", VaultSecret(PASSWORD.encode()))])
    return yaml.safe_load(vault.decrypt(path.read_bytes()))


@pytest.fixture
def inventory(tmp_path) -> Path:
    path = tmp_path / "inventories" / "prod"
    path.mkdir(parents=True)
    return path


def test_every_variable_of_the_example_gets_a_value_the_preflights_accept():
    example = make_vault.example_variables()
    values = make_vault.generate(example)
    assert list(values) == list(example)
    assert "vault_app_secret_key" in values
    assert "vault_rabbitmq_erlang_cookie" in values
    assert values["vault_common_deploy_authorized_keys"] == []
    ca = {name: values.pop(name) for name in (make_vault.CA_CERTIFICATE, make_vault.CA_PRIVATE_KEY)}
    texts = {name: value for name, value in values.items() if isinstance(value, str)}
    assert len(texts) == len(values) - 1
    for name, value in texts.items():
        assert len(value) >= 32, name
        assert value.isalnum(), name
        assert not value.lower().startswith("replace-"), name
    assert re.fullmatch(r"[A-Za-z0-9]{20,255}", texts["vault_rabbitmq_erlang_cookie"])
    assert len(texts["vault_app_secret_key"]) >= 50
    assert len(set(texts.values())) == len(texts), "two secrets are equal"
    assert_a_ca_pair(ca[make_vault.CA_CERTIFICATE], ca[make_vault.CA_PRIVATE_KEY])


def assert_a_ca_pair(certificate_pem: str, key_pem: str) -> None:
    """A CA certificate (basicConstraints CA:TRUE, years ahead) and the key it was made for."""
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc > timedelta(days=3000)
    assert certificate.public_key() == key.public_key()


def test_two_runs_draw_different_secrets():
    example = make_vault.example_variables()
    first, second = make_vault.generate(example), make_vault.generate(example)
    assert all(first[n] != second[n] for n in first if isinstance(first[n], str))


def test_rendered_values_read_back_as_the_same_strings():
    values = {"vault_a": "12345", "vault_b": "yes", "vault_c": "0x1F", "vault_d": []}
    assert yaml.safe_load(make_vault.render(values, Path("v.yml"))) == values


def test_writes_an_encrypted_vault_with_every_variable(inventory, tmp_path):
    result = run(inventory, tmp_path)
    assert result.returncode == 0, result.stderr
    vault = inventory / "group_vars/all/vault.yml"
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")
    assert vault.stat().st_mode & 0o777 == 0o600
    content = decrypt(vault)
    assert list(content) == list(make_vault.example_variables())
    for name, value in content.items():
        if isinstance(value, str):
            assert value not in vault.read_text(), f"{name} is in clear"
            assert value not in result.stdout + result.stderr, f"{name} was printed"
    assert "vault_common_deploy_authorized_keys" in result.stdout
    assert sorted(p.name for p in vault.parent.iterdir()) == ["vault.yml"]


def test_refuses_to_overwrite_an_existing_vault(inventory, tmp_path):
    vault = inventory / "group_vars/all/vault.yml"
    vault.parent.mkdir(parents=True)
    vault.write_text("kept\n")
    result = run(inventory, tmp_path)
    assert result.returncode != 0
    assert "refusing to overwrite" in result.stderr
    assert vault.read_text() == "kept\n"
    assert sorted(p.name for p in vault.parent.iterdir()) == ["vault.yml"]


def test_refuses_an_inventory_that_does_not_exist(tmp_path):
    result = run(tmp_path / "inventories" / "missing", tmp_path)
    assert result.returncode != 0
    assert "production.example" in result.stderr
    assert not (tmp_path / "inventories").exists()


def test_the_local_inventory_keeps_its_vault(tmp_path):
    vault = ROOT / "inventories/local/group_vars/all/vault.yml"
    before = vault.read_bytes()
    result = run(ROOT / "inventories/local", tmp_path)
    assert result.returncode != 0
    assert vault.read_bytes() == before


def test_make_secrets_runs_the_script_on_the_inventory_named():
    dry = subprocess.run(
        ["make", "-n", "secrets", "INVENTORY=inventories/prod"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "-m stackkit.make_vault inventories/prod" in dry.stdout


def test_the_internal_ca_starts_a_day_before_it_is_issued():
    """A host whose clock lags the controller's by less than the margin still accepts the CA:
    it starts make_vault.BACKDATE before its issue time, the margin the pki role's hosts get."""
    at = datetime(2026, 12, 6, 14, 30, 5, tzinfo=UTC)
    certificate = x509.load_pem_x509_certificate(make_vault.internal_ca(now=at)[0].encode())
    assert certificate.not_valid_before_utc == at - make_vault.BACKDATE
    assert timedelta(hours=24) <= make_vault.BACKDATE
    pki = yaml.safe_load((ROOT / "roles/pki/defaults/main.yml").read_text())
    assert timedelta(hours=pki["pki_backdate_hours"]) == make_vault.BACKDATE
