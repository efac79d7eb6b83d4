"""What every role shares: which secrets are weak, which bind addresses are public, whether the
host is a container, and the sandbox of its systemd units. Each filter is documented in the YAML
file of its name."""

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


# The kit's sandbox for a service that needs no privilege, in the order a unit lists it. A unit
# names only where it differs (systemd_sandbox.yml); the None entries have no default and stand
# where a unit's value goes.
SANDBOX = {
    "UMask": "0027",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "NoNewPrivileges": True,
    "PrivateTmp": True,
    "PrivateDevices": True,
    "PrivateUsers": True,
    "PrivateMounts": True,
    "ProtectSystem": "strict",
    "ReadWritePaths": None,
    "ProtectHome": True,
    "ProtectProc": "invisible",
    "ProcSubset": None,
    "ProtectKernelTunables": True,
    "ProtectKernelModules": True,
    "ProtectKernelLogs": True,
    "ProtectControlGroups": True,
    "ProtectClock": True,
    "ProtectHostname": True,
    "RestrictNamespaces": True,
    "RestrictRealtime": True,
    "RestrictSUIDSGID": True,
    "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6"],
    "IPAddressDeny": None,
    "LockPersonality": True,
    "MemoryDenyWriteExecute": True,
    "RemoveIPC": True,
    "DevicePolicy": None,
    "KeyringMode": None,
    "SystemCallArchitectures": "native",
    "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    "SystemCallErrorNumber": "EPERM",
}
# Directives a unit may assign more than once, each assignment adding to the last: a list is
# one line per item. Any other list is one line, its items separated by spaces.
REPEATED = frozenset(("SystemCallFilter",))


def systemd_sandbox(overrides: Mapping | None = None) -> str:
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise AnsibleFilterError(
            f"systemd_sandbox takes a mapping of directives, not {type(overrides).__name__}"
        )
    lines = []
    for key, value in {**SANDBOX, **overrides}.items():
        if not re.fullmatch(r"[A-Z][A-Za-z]+", str(key)):
            raise AnsibleFilterError(f"systemd_sandbox: {key!r} is not a systemd directive")
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if isinstance(value, bool):
            values = ["yes" if value else "no"]
        elif isinstance(value, (list, tuple)):
            items = [str(item) for item in value]
            values = items if key in REPEATED else [" ".join(items)]
        else:
            values = [str(value)]
        lines += [f"{key}={item}" for item in values]
    return "\n".join(lines)


class FilterModule:
    def filters(self):
        return {
            "weak_secrets": weak_secrets,
            "public_addresses": public_addresses,
            "in_container": in_container,
            "systemd_sandbox": systemd_sandbox,
        }
