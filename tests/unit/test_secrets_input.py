"""Every role that takes a secret refuses a `replace-...` placeholder and anything shorter than
16 characters before it changes anything, naming the variable and never showing the value.

The roles' preflights run on the controller (tests/unit/preflight.py), in check mode and
limited to the preflight tag: a refusal there comes before any task that could change a host.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret
from preflight import output, run_preflight

STRONG = "a-strong-secret-of-32-characters"
SIXTEEN = "exactly16chars!!"
# The placeholder vault.yml.example carries, the one it gives the secret key, and 15 characters.
PLACEHOLDER = "replace-me"
LONG_PLACEHOLDER = "Replace-with-50-random-characters-from-a-password-generator"
SHORT = "Sh0rt-but-15-ch"
# The test server's method, whose preflight needs only a wheel of the pinned release for the
# host's Python (3.13 in preflight.FACTS) in the wheelhouse.
WHEELHOUSE = tempfile.TemporaryDirectory()
(Path(WHEELHOUSE.name) / "secantusdb-0.7.0b3-cp313-cp313-manylinux_2_28_x86_64.whl").touch()
MONGODB_SECANTUSDB = {
    "mongodb_install_method": "secantusdb",
    "mongodb_secantusdb_wheelhouse": WHEELHOUSE.name,
}

# Good input for each role, and the variables (or entries) that hold its secrets.
ROLES = {
    "postgresql": {
        "postgresql_users": [
            {"name": "catalogue", "password": STRONG},
            {"name": "catalogue_app", "password": STRONG + "-app"},
        ],
        "postgresql_databases": [{"name": "catalogue", "owner": "catalogue"}],
        "postgresql_listen_addresses": ["localhost"],
    },
    "redis": {
        "redis_default_password": STRONG,
        "redis_app_password": STRONG + "-app",
        "redis_bind_addresses": ["127.0.0.1"],
    },
    "rabbitmq": {
        "rabbitmq_app_password": STRONG,
        "rabbitmq_erlang_cookie": "A" * 32,
        "rabbitmq_bind_address": "127.0.0.1",
    },
    "mongodb": {
        **MONGODB_SECANTUSDB,
        "mongodb_admin_password": STRONG,
        "mongodb_app_password": STRONG + "-app",
    },
    "app": {
        "app_secret_key": "k" * 50,
        "app_postgres_password": STRONG + "-pg",
        "app_postgres_owner_user": "catalogue_owner",
        "app_postgres_owner_password": STRONG + "-owner",
        "app_redis_password": STRONG + "-redis",
        "app_rabbitmq_password": STRONG + "-amqp",
        "app_mongodb_password": STRONG + "-mongo",
    },
}
SECRETS = [
    ("redis", "redis_default_password"),
    ("redis", "redis_app_password"),
    ("rabbitmq", "rabbitmq_app_password"),
    ("rabbitmq", "rabbitmq_erlang_cookie"),
    ("mongodb", "mongodb_admin_password"),
    ("mongodb", "mongodb_app_password"),
    ("app", "app_secret_key"),
    ("app", "app_postgres_password"),
    ("app", "app_postgres_owner_password"),
    ("app", "app_redis_password"),
    ("app", "app_rabbitmq_password"),
    ("app", "app_mongodb_password"),
]


def assert_refused_naming(result, variable: str, value: str) -> None:
    text = output(result)
    assert result.returncode != 0, text
    assert variable in text
    assert "preflight.yml" in text, "the refusal must come from the preflight"
    assert value not in text, "the refusal shows the secret"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_strong_secrets_pass(tmp_path, role):
    result = run_preflight(tmp_path, role, ROLES[role])
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(("role", "variable"), SECRETS, ids=[s[1] for s in SECRETS])
@pytest.mark.parametrize("value", [PLACEHOLDER, SHORT], ids=["placeholder", "15-characters"])
def test_weak_secret_is_refused_by_name(tmp_path, role, variable, value):
    result = run_preflight(tmp_path, role, {**ROLES[role], variable: value})
    assert_refused_naming(result, variable, value)


@pytest.mark.parametrize("role", ["redis", "mongodb", "app"])
def test_long_placeholder_is_refused_whatever_its_case(tmp_path, role):
    variable = next(name for r, name in SECRETS if r == role)
    result = run_preflight(tmp_path, role, {**ROLES[role], variable: LONG_PLACEHOLDER})
    assert_refused_naming(result, variable, LONG_PLACEHOLDER)
    assert "replace-" in output(result)


@pytest.mark.parametrize("role", ["redis", "mongodb"])
def test_sixteen_characters_are_enough(tmp_path, role):
    variable = next(name for r, name in SECRETS if r == role)
    result = run_preflight(tmp_path, role, {**ROLES[role], variable: SIXTEEN})
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("value", [PLACEHOLDER, SHORT], ids=["placeholder", "15-characters"])
def test_weak_database_password_is_refused_naming_the_role(tmp_path, value):
    users = [
        {"name": "catalogue", "password": STRONG},
        {"name": "catalogue_app", "password": value},
    ]
    result = run_preflight(
        tmp_path, "postgresql", {**ROLES["postgresql"], "postgresql_users": users}
    )
    assert_refused_naming(result, "postgresql_users", value)
    assert "catalogue_app" in output(result)
    assert "the password of catalogue_app" in output(result)


def test_app_secret_with_a_trailing_newline_cannot_be_quoted(tmp_path):
    result = run_preflight(
        tmp_path, "app", {**ROLES["app"], "app_redis_password": STRONG + "-redis\n"}
    )
    assert_refused_naming(result, "app_redis_password", STRONG + "-redis")
    assert "newline" in output(result)


@pytest.mark.parametrize(
    "value", [STRONG + " ", " " + STRONG, STRONG + "\n", STRONG[:8] + "\n" + STRONG[8:]]
)
def test_a_rabbitmq_password_that_stdin_would_trim_is_refused(tmp_path, value):
    # rabbitmqctl reads the password from stdin, where it trims white space and reads one line.
    result = run_preflight(
        tmp_path, "rabbitmq", {**ROLES["rabbitmq"], "rabbitmq_app_password": value}
    )
    assert_refused_naming(result, "rabbitmq_app_password", value.strip())
    assert "white space" in output(result)


def _vault_values(node, found: dict[str, str]) -> dict[str, str]:
    """vault_* string values anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if str(key).startswith("vault_") and isinstance(value, str):
                found[str(key)] = value
            else:
                _vault_values(value, found)
    elif isinstance(node, list):
        for item in node:
            _vault_values(item, found)
    return found


def _test_secrets() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    password = (root / "tests/hosts/local-vault-password").read_text().strip().encode()
    vault = VaultLib([("default", VaultSecret(password))])
    local = root / "inventories/local/group_vars/all/vault.yml"
    secrets = {
        f"local {k}": v
        for k, v in _vault_values(yaml.safe_load(vault.decrypt(local.read_bytes())), {}).items()
    }
    for scenario in sorted(root.glob("molecule/*/molecule.yml")):
        found = _vault_values(yaml.safe_load(scenario.read_text()), {})
        secrets.update({f"{scenario.parent.name} {k}": v for k, v in found.items()})
    return secrets


def test_the_test_inventories_secrets_pass_the_preflights():
    secrets = _test_secrets()
    assert any(name.startswith("local vault_") for name in secrets)
    weak = [
        name
        for name, value in secrets.items()
        if len(value) < 16 or value.lower().startswith("replace-")
    ]
    assert weak == []


# With a monitoring user (the Redis exporter's ACL account), its password is checked too;
# without one, its empty default is not.
REDIS_MONITORING = {**ROLES["redis"], "redis_monitoring_user": "exporter"}


def test_redis_monitoring_password_is_checked_only_with_its_user(tmp_path):
    result = run_preflight(tmp_path, "redis", {**ROLES["redis"], "redis_monitoring_password": ""})
    assert result.returncode == 0, output(result)
    strong = {**REDIS_MONITORING, "redis_monitoring_password": STRONG + "-exporter"}
    (tmp_path / "strong").mkdir()
    result = run_preflight(tmp_path / "strong", "redis", strong)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("value", [PLACEHOLDER, SHORT], ids=["placeholder", "15-characters"])
def test_weak_redis_monitoring_password_is_refused_by_name(tmp_path, value):
    result = run_preflight(
        tmp_path, "redis", {**REDIS_MONITORING, "redis_monitoring_password": value}
    )
    assert_refused_naming(result, "redis_monitoring_password", value)


@pytest.mark.parametrize("user", ["default", "app", "two words"])
def test_redis_monitoring_user_must_be_an_account_of_its_own(tmp_path, user):
    variables = {
        **REDIS_MONITORING,
        "redis_monitoring_user": user,
        "redis_monitoring_password": STRONG + "-exporter",
    }
    result = run_preflight(tmp_path, "redis", variables)
    text = output(result)
    assert result.returncode != 0, text
    assert "redis_monitoring_user" in text and "preflight.yml" in text, text[-2000:]
