#!/usr/bin/python
"""Install a vendor's signing key as an APT keyring once it is exactly the pinned key."""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import fetch_url

DOCUMENTATION = r"""
module: signing_key
short_description: Install a vendor's signing key once it is exactly the pinned key
description:
  - Reads an OpenPGP public key from I(url) (downloaded on the host) or from I(src) (a file on
    the host), lists it with C(gpg --show-keys --with-colons) and accepts it only when it holds
    exactly one primary key and that key's fingerprint is I(fingerprint). Subkeys of that key
    are allowed; a second primary key, or another key, fails the task and nothing is written.
  - Only the verified copy is written, to I(dest), atomically and with mode C(0644), and only
    when its content differs from what I(dest) holds. An APT source then names I(dest) in its
    C(Signed-By).
  - In check mode the key is still read and verified (nothing is written), so C(--check)
    reports a key that would be refused. Where gpg is not installed yet (check mode on a
    fresh host, whose gpg package the run would install), the key cannot be verified; the
    task then reports a change and warns.
options:
  url:
    description: Where the armored or binary key is downloaded from (C(https://), C(file://)).
    type: str
  src:
    description: A key file already on the host.
    type: path
  fingerprint:
    description:
      - The primary key's fingerprint, 40 hexadecimal digits; spaces and case do not matter.
    type: str
    required: true
  dest:
    description: The keyring file to write.
    type: path
    required: true
  timeout:
    description: Seconds the download may take.
    type: int
    default: 30
  validate_certs:
    description: Verify the server's certificate when I(url) is C(https://).
    type: bool
    default: true
requirements:
  - gpg on the host (GnuPG 2.2.8 or later, for --show-keys)
author: stackkit maintainers
"""

EXAMPLES = r"""
- name: Trust Elastic's signing key once it is the pinned one
  stackkit.kit.signing_key:
    url: https://artifacts.elastic.co/GPG-KEY-elasticsearch
    fingerprint: 4609 5ACC 8548 582C 1A26 99A9 D27D 666C D88E 42B4
    dest: /etc/apt/keyrings/elasticsearch.asc
  register: elastic_key
"""

RETURN = r"""
fingerprint:
  description: The pinned fingerprint, without spaces, in capitals.
  type: str
  returned: always
fingerprints:
  description: The fingerprints of every key and subkey the source holds, primary keys first.
  type: list
  elements: str
  returned: when the key was read
primary_fingerprints:
  description: The fingerprints of the primary keys the source holds.
  type: list
  elements: str
  returned: when the key was read
"""


def read_source(module: AnsibleModule) -> bytes:
    params = module.params
    if params["src"]:
        try:
            with open(params["src"], "rb") as handle:
                return handle.read()
        except OSError as error:
            module.fail_json(msg=f"Cannot read the key {params['src']}: {error}")
    response, info = fetch_url(module, params["url"], timeout=params["timeout"])
    # A file:// response has no HTTP status; a failed request has none or an error status.
    status = info.get("status")
    if response is None or (isinstance(status, int) and (status < 0 or status >= 400)):
        module.fail_json(msg=f"Cannot download the key {params['url']}: {info.get('msg')}")
    return response.read()


def list_keys(module: AnsibleModule, gpg: str, content: bytes) -> tuple[list[str], list[str]]:
    """(primary fingerprints, every fingerprint) of the keys in `content`, read by gpg in a
    throwaway home: the host's keyrings are neither read nor written."""
    home = tempfile.mkdtemp(prefix="signing_key.")
    try:
        os.chmod(home, 0o700)
        keyfile = os.path.join(home, "key")
        with open(keyfile, "wb") as handle:
            handle.write(content)
        rc, out, err = module.run_command(
            [gpg, "--batch", "--show-keys", "--with-colons", keyfile],
            environ_update={"GNUPGHOME": home, "LC_ALL": "C"},
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if rc != 0:
        module.fail_json(msg=f"gpg cannot read the key from {source(module)}: {err.strip()}")
    primaries, every, previous = [], [], ""
    for line in out.splitlines():
        fields = line.split(":")
        if fields[0] == "fpr":
            every.append(fields[9])
            if previous == "pub":
                primaries.append(fields[9])
        if fields[0] in ("pub", "sub"):
            previous = fields[0]
    return primaries, every


def source(module: AnsibleModule) -> str:
    return module.params["url"] or module.params["src"]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str"},
            "src": {"type": "path"},
            "fingerprint": {"type": "str", "required": True},
            "dest": {"type": "path", "required": True},
            "timeout": {"type": "int", "default": 30},
            "validate_certs": {"type": "bool", "default": True},
        },
        required_one_of=[("url", "src")],
        mutually_exclusive=[("url", "src")],
        supports_check_mode=True,
    )
    params = module.params
    pinned = params["fingerprint"].replace(" ", "").upper()
    result = {"changed": False, "fingerprint": pinned}
    if not re.fullmatch("[0-9A-F]{40}", pinned):
        module.fail_json(msg=f"fingerprint must be 40 hexadecimal digits, not {pinned!r}", **result)
    content = read_source(module)

    gpg = module.get_bin_path("gpg", required=not module.check_mode)
    if gpg is None:
        module.warn(
            f"gpg is not installed (yet): the key from {source(module)} is not verified in "
            "check mode."
        )
        module.exit_json(**{**result, "changed": True})
    primaries, every = list_keys(module, gpg, content)
    result |= {"fingerprints": every, "primary_fingerprints": primaries}
    if primaries != [pinned]:
        module.fail_json(
            msg=(
                f"{source(module)} does not hold exactly the pinned key {pinned}: its primary "
                f"keys are {primaries or 'none'} (keys and subkeys {every}). The key is not "
                "trusted."
            ),
            **result,
        )

    dest = params["dest"]
    before = None
    if os.path.exists(dest):
        with open(dest, "rb") as handle:
            before = handle.read()
    if before != content:
        result["changed"] = True
        if module._diff:
            result["diff"] = {
                "before_header": dest,
                "after_header": source(module),
                "before": before.decode("utf-8", "replace") if before is not None else "",
                "after": content.decode("utf-8", "replace"),
            }
        if not module.check_mode:
            handle, staged = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".signing_key.")
            with os.fdopen(handle, "wb") as staged_file:
                staged_file.write(content)
            module.atomic_move(staged, dest)
    if os.path.exists(dest):
        result["changed"] = module.set_mode_if_different(dest, "0644", result["changed"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
