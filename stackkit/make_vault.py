"""Write a fresh, encrypted group_vars/all/vault.yml for a new inventory.

    make secrets INVENTORY=inventories/NAME

Every vault_ variable that inventories/production.example/group_vars/all/vault.yml.example
lists gets a new random value (lists, the deploy user's SSH keys, are left empty for the
operator to fill in). The plaintext goes to `ansible-vault encrypt` on a pipe and never touches
the disk; ansible-vault takes its password from ANSIBLE_VAULT_PASSWORD_FILE or asks for a new
one. An existing vault.yml is never overwritten. The internal CA (vault_pki_ca_certificate and
vault_pki_ca_private_key) is a new EC P-256 CA that signs the hosts' certificates.
"""

from __future__ import annotations

import argparse
import os
import secrets
import string
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "inventories/production.example/group_vars/all/vault.yml.example"
# Letters and digits only: the values go into URLs, the app's single-quoted environment file,
# Redis ACL lines and the Erlang cookie file without any quoting to get wrong.
ALPHANUMERIC = string.ascii_letters + string.digits
# (suffix of the variable name, length, alphabet); the first match wins.
KINDS = [
    # RabbitMQ wants 20 to 255 letters and digits; upper case like the ones it generates.
    ("_erlang_cookie", 48, string.ascii_uppercase + string.digits),
    # Django's secret key: at least 50 characters, as Django's own check asks.
    ("_secret_key", 64, ALPHANUMERIC),
    ("", 32, ALPHANUMERIC),
]


def example_variables(example: Path = EXAMPLE) -> dict[str, object]:
    """The vault_ variables the example lists, in its order, with their example values."""
    loaded = yaml.safe_load(example.read_text()) or {}
    return {name: value for name, value in loaded.items() if str(name).startswith("vault_")}


def random_value(name: str) -> str:
    length, alphabet = next((n, a) for suffix, n, a in KINDS if name.endswith(suffix))
    return "".join(secrets.choice(alphabet) for _ in range(length))


CA_CERTIFICATE = "vault_pki_ca_certificate"
CA_PRIVATE_KEY = "vault_pki_ca_private_key"
CA_YEARS = 10
# A certificate starts this long before it is issued, as public CAs backdate theirs: a host whose
# clock lags the issuer's (a fresh VM before its first time sync, a clock stepped back by NTP)
# still accepts it. The pki role's pki_backdate_hours says the same for host certificates.
BACKDATE = timedelta(hours=24)


def internal_ca(
    common_name: str = "stackkit internal CA", now: datetime | None = None
) -> tuple[str, str]:
    """A new CA for the hosts' certificates: (certificate PEM, private key PEM). It is valid
    from BACKDATE before `now` (the issue time, the current time by default)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = now or datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


def generate(variables: dict[str, object]) -> dict[str, object]:
    """A new value for each variable: random text, an empty list where a list is expected, and
    a new internal CA for the CA's pair."""
    values = {
        name: [] if isinstance(example, list) else random_value(name)
        for name, example in variables.items()
    }
    if CA_CERTIFICATE in values or CA_PRIVATE_KEY in values:
        certificate, key = internal_ca()
        values.update({CA_CERTIFICATE: certificate, CA_PRIVATE_KEY: key})
    return values


def render(values: dict[str, object], vault: Path) -> str:
    lists = [name for name, value in values.items() if isinstance(value, list)]
    lines = [
        "---",
        f"# Generated by `make secrets` on {datetime.now(UTC):%Y-%m-%d}; edit with",
        f"#   ansible-vault edit {vault}",
        "# Only vault_* variables live here; group_vars refer to them by name.",
    ]
    if lists:
        lines.append(f"# Fill in before the first run: {', '.join(lists)}.")
    # safe_dump quotes whatever YAML would otherwise read as a number or a boolean.
    lines += [yaml.safe_dump({name: value}, width=1000).strip() for name, value in values.items()]
    return "\n".join(lines) + "\n"


def vault_path(inventory: Path) -> Path:
    return inventory / "group_vars" / "all" / "vault.yml"


def write_encrypted(text: str, dest: Path, ansible_vault: Path) -> None:
    """Encrypt text into dest with ansible-vault, refusing to replace an existing dest."""
    if dest.exists() or dest.is_symlink():
        raise SystemExit(f"make secrets: {dest} exists; refusing to overwrite it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        subprocess.run(
            [str(ansible_vault), "encrypt", "--output", str(partial)],
            input=text.encode(),
            check=True,
        )
        # A hard link fails when dest appeared meanwhile, so nothing is ever overwritten.
        os.link(partial, dest)
    except FileExistsError:
        raise SystemExit(f"make secrets: {dest} exists; refusing to overwrite it") from None
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"make secrets: ansible-vault failed ({error.returncode})") from None
    finally:
        partial.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inventory", type=Path, help="inventory directory, e.g. inventories/prod")
    parser.add_argument(
        "--ansible-vault",
        type=Path,
        default=Path(sys.executable).parent / "ansible-vault",
        help="the ansible-vault program (default: the one beside this Python)",
    )
    args = parser.parse_args(argv)
    if not args.inventory.is_dir():
        raise SystemExit(
            f"make secrets: {args.inventory} is not a directory; copy "
            "inventories/production.example to it first"
        )
    dest = vault_path(args.inventory)
    values = generate(example_variables())
    write_encrypted(render(values, dest), dest, args.ansible_vault)
    print(f"make secrets: wrote {dest} ({len(values)} variables, encrypted)")
    empty = [name for name, value in values.items() if isinstance(value, list)]
    if empty:
        print(f"make secrets: fill in {', '.join(empty)} with: ansible-vault edit {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
