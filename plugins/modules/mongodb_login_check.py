#!/usr/bin/python
"""Report which of some SCRAM credentials log in to a MongoDB server; change nothing."""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure
except ImportError:
    PYMONGO_ERROR = traceback.format_exc()
else:
    PYMONGO_ERROR = None

DOCUMENTATION = r"""
module: mongodb_login_check
short_description: Report which credentials log in to a MongoDB server
description:
  - Tries each credential with SCRAM-SHA-256 on its own connection and reports, by name,
    whether the server accepted it. Nothing on the server changes.
  - A refused login (code 18, AuthenticationFailed) is reported as false; any other error
    (server down, TLS, protocol) fails the task.
options:
  login_host:
    description: Address of the server.
    type: str
    default: 127.0.0.1
  login_port:
    description: Port of the server.
    type: int
    default: 27017
  tls:
    description: Connect with TLS.
    type: bool
    default: false
  tls_ca_file:
    description: CA bundle that verifies the server's certificate when I(tls) is true.
    type: path
  credentials:
    description: Credentials to try, each with a name to report it under.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Key of the result in C(authenticated).
        type: str
        required: true
      user:
        description: User name.
        type: str
        required: true
      database:
        description: The user's authentication database.
        type: str
        required: true
      password:
        description: Password to try.
        type: str
        required: true
        no_log: true
requirements: [pymongo]
author: stackkit maintainers
"""

EXAMPLES = r"""
- name: Check which passwords log in
  stackkit.kit.mongodb_login_check:
    credentials:
      - {name: admin, user: admin, database: admin, password: "{{ mongodb_admin_password }}"}
  register: logins
  no_log: true
"""

RETURN = r"""
authenticated:
  description: For each credential's name, whether the server accepted it.
  type: dict
  returned: success
"""

AUTHENTICATION_FAILED = 18


def logs_in(params: dict, user: str, database: str, password: str) -> bool:
    tls = {"tls": True, "tlsCAFile": params["tls_ca_file"]} if params["tls"] else {}
    client = MongoClient(
        host=params["login_host"],
        port=params["login_port"],
        username=user,
        password=password,
        authSource=database,
        authMechanism="SCRAM-SHA-256",
        directConnection=True,
        serverSelectionTimeoutMS=10000,
        connectTimeoutMS=10000,
        **tls,
    )
    try:
        client.admin.command("ping")
    except OperationFailure as error:
        if error.code == AUTHENTICATION_FAILED:
            return False
        raise
    finally:
        client.close()
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "login_host": {"type": "str", "default": "127.0.0.1"},
            "login_port": {"type": "int", "default": 27017},
            "tls": {"type": "bool", "default": False},
            "tls_ca_file": {"type": "path"},
            "credentials": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "name": {"type": "str", "required": True},
                    "user": {"type": "str", "required": True},
                    "database": {"type": "str", "required": True},
                    "password": {"type": "str", "required": True, "no_log": True},
                },
            },
        },
        supports_check_mode=True,
    )
    if PYMONGO_ERROR:
        module.fail_json(msg=missing_required_lib("pymongo"), exception=PYMONGO_ERROR)
    params = module.params
    authenticated = {}
    for credential in params["credentials"]:
        try:
            authenticated[credential["name"]] = logs_in(
                params, credential["user"], credential["database"], credential["password"]
            )
        except Exception as error:  # reported to the play, not swallowed
            module.fail_json(msg=f"{credential['name']}: {error}")
    module.exit_json(changed=False, authenticated=authenticated)


if __name__ == "__main__":
    main()
