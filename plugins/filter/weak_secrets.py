"""The names of the secrets a role's preflight refuses: too short, or a placeholder."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: weak_secrets
short_description: Names of the secrets that are too short or still a placeholder
description:
  - Given secrets by name, returns the names (in their order) whose value is shorter than 16
    characters or starts with C(replace-), the placeholder the example vaults carry. The values
    never appear in the result, so a preflight message can name what to fix without showing it.
  - Given a list of mappings instead (such as C(postgresql_users)), each mapping's I(name) key
    names it and its I(secret) key holds the value; a mapping without a name is called C(?),
    and one without a secret has an empty one.
options:
  _input:
    description: Secrets by name, or a list of mappings.
    type: raw
    required: true
  name:
    description: With a list, the key that names each mapping.
    type: str
    default: name
  secret:
    description: With a list, the key that holds each mapping's secret.
    type: str
    default: password
author: stackkit maintainers
"""

EXAMPLES = r"""
- name: Assert the passwords are not weak
  ansible.builtin.assert:
    that: __redis_weak_secrets | length == 0
    fail_msg: "{{ __redis_weak_secrets | join(', ') }}: each must be at least 16 characters"
  vars:
    __redis_weak_secrets: >-
      {{ {'redis_password': redis_password} | stackkit.kit.weak_secrets }}

- name: The users of postgresql_users whose password is weak
  ansible.builtin.debug:
    msg: "{{ postgresql_users | stackkit.kit.weak_secrets(name='name', secret='password') }}"
"""

RETURN = r"""
_value:
  description: The names of the weak secrets.
  type: list
  elements: str
"""

# Shorter than 16 characters (whatever they are), or the example vaults' placeholder.
WEAK = re.compile(r"(?is)^(replace-|.{0,15}\Z)")


def is_weak(value) -> bool:
    return WEAK.match(str(value)) is not None


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
    return [str(key) for key, value in pairs if is_weak(value)]


class FilterModule:
    def filters(self):
        return {"weak_secrets": weak_secrets}
