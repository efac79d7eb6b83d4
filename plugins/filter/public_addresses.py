"""The addresses among some that are globally routable: what a preflight refuses to bind."""

from __future__ import annotations

import ipaddress

DOCUMENTATION = r"""
name: public_addresses
short_description: The globally routable IP addresses among some values
description:
  - Returns the values (as strings, in their order) that are IP addresses and globally
    routable, as C(ansible.utils.public) judges them (Python's C(ipaddress) C(is_global)).
  - Host names, wildcards such as C(0.0.0.0) or C(::), and private, loopback and link-local
    addresses are not public. A single value is taken as a list of one.
options:
  _input:
    description: Addresses, or one address.
    type: raw
    required: true
author: stackkit maintainers
"""

EXAMPLES = r"""
- name: Refuse a public bind unless allowed
  ansible.builtin.assert:
    that: >-
      redis_allow_public_bind
      or redis_bind_addresses | stackkit.kit.public_addresses | length == 0
"""

RETURN = r"""
_value:
  description: The public addresses.
  type: list
  elements: str
"""


def is_public(value: str) -> bool:
    try:
        return ipaddress.ip_address(value).is_global
    except ValueError:
        return False


def public_addresses(values) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        values = [values]
    return [str(value) for value in values if is_public(str(value))]


class FilterModule:
    def filters(self):
        return {"public_addresses": public_addresses}
