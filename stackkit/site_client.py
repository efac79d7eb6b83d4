"""How the suites reach the catalogue as a client: over HTTPS verified against the local hosts'
test CA, writing with the API token of the inventory's vault.

    python -m stackkit.site_client token [--inventory inventories/local]   the API token (make load)

The token is STACKKIT_API_TOKEN when set, else vault_app_api_token from the inventory's
group_vars/all/vault.yml, opened with ANSIBLE_VAULT_PASSWORD_FILE (the local hosts' committed
password by default).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEST_CA = ROOT / ".cache" / "tls" / "ca.pem"
LOCAL_INVENTORY = ROOT / "inventories" / "local"
LOCAL_VAULT_PASSWORD = ROOT / "tests" / "hosts" / "local-vault-password"
DEMO_URL = "https://127.0.0.1:8443"


def api_token(inventory: Path | str = LOCAL_INVENTORY) -> str:
    if os.environ.get("STACKKIT_API_TOKEN"):
        return os.environ["STACKKIT_API_TOKEN"]
    from ansible.parsing.vault import VaultLib, VaultSecret  # noqa: PLC0415

    password_file = Path(os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE", LOCAL_VAULT_PASSWORD))
    secret = VaultSecret(password_file.read_bytes().strip())
    vault = Path(inventory) / "group_vars" / "all" / "vault.yml"
    plain = VaultLib([("default", secret)]).decrypt(vault.read_bytes())
    return str(yaml.safe_load(plain)["vault_app_api_token"])


def verify() -> str | bool:
    """What requests should verify the site's certificate with."""
    return str(TEST_CA) if TEST_CA.exists() else True


def session(token: str | None = None):
    """A requests session that trusts the test CA and writes with `token`."""
    import requests  # noqa: PLC0415

    http = requests.Session()
    http.verify = verify()
    # A session's own CA loses to REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE when it trusts the
    # environment (requests merges them that way round); the local hosts need no proxy either.
    http.trust_env = False
    if token:
        http.headers["Authorization"] = f"Bearer {token}"
    return http


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token")
    token.add_argument("--inventory", default=str(LOCAL_INVENTORY))
    args = parser.parse_args(argv)
    if args.command == "token":
        print(api_token(args.inventory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
