"""Whether the host's facts say it is a container, which shares its kernel with others."""

from __future__ import annotations

from collections.abc import Mapping

DOCUMENTATION = r"""
name: in_container
short_description: Whether the facts describe a container guest
description:
  - True when C(virtualization_role) is C(guest) and C(virtualization_type) is a container
    type (docker, podman, container, containerd, lxc, systemd-nspawn). A container shares its
    kernel, so the roles skip kernel settings there (sysctls, transparent huge pages) and
    say so.
  - A virtual machine (kvm, xen, ...) has a kernel of its own and is not a container.
options:
  _input:
    description: The host's facts (C(ansible_facts)); missing facts count as no container.
    type: dict
    required: true
author: stackkit maintainers
"""

EXAMPLES = r"""
- name: Tune the kernel where the host has its own
  ansible.posix.sysctl:
    name: vm.overcommit_memory
    value: "1"
  when: not ansible_facts | stackkit.kit.in_container
"""

RETURN = r"""
_value:
  description: Whether the host is a container.
  type: bool
"""

CONTAINER_TYPES = frozenset(
    ("docker", "podman", "container", "containerd", "lxc", "systemd-nspawn")
)


def in_container(facts: Mapping) -> bool:
    return (
        facts.get("virtualization_role", "") == "guest"
        and facts.get("virtualization_type", "") in CONTAINER_TYPES
    )


class FilterModule:
    def filters(self):
        return {"in_container": in_container}
