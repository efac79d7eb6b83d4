"""The checks every role shares: which secrets are weak, which bind addresses are public and
whether the host is a container. Each filter is documented in the YAML file of its name."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

# Shorter than 16 characters (whatever they are), or the example vaults' placeholder.
WEAK = re.compile(r"(?is)^(replace-|.{0,15}\Z)")

# Guests that share the host's kernel: kernel settings (sysctls, huge pages) are not theirs.
CONTAINER_TYPES = frozenset(
    ("docker", "podman", "container", "containerd", "lxc", "systemd-nspawn")
)


def weak_secrets(secrets, name: str = "name", secret: str = "password") -> list[str]:
    if isinstance(secrets, Mapping):
        pairs = secrets.items()
    elif isinstance(secrets, list) and all(isinstance(item, Mapping) for item in secrets):
        pairs = ((item.get(name, "?"), item.get(secret, "")) for item in secrets)
    else:
        raise AnsibleFilterError(
            "weak_secrets takes secrets by name (a mapping) or a list of mappings, "
            f"not {type(secrets).__name__}"
        )
    return [str(key) for key, value in pairs if WEAK.match(str(value))]


def is_public(value: str) -> bool:
    """As ansible.utils.public judges it."""
    try:
        return ipaddress.ip_address(value).is_global
    except ValueError:
        return False


def public_addresses(values) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        values = [values]
    return [str(value) for value in values if is_public(str(value))]


def in_container(facts: Mapping) -> bool:
    return (
        facts.get("virtualization_role", "") == "guest"
        and facts.get("virtualization_type", "") in CONTAINER_TYPES
    )


class FilterModule:
    def filters(self):
        return {
            "weak_secrets": weak_secrets,
            "public_addresses": public_addresses,
            "in_container": in_container,
        }
