"""SSH to an inventory host as Ansible would, for Fabric: the address, user, port and key the
inventory gives it, and host keys checked the way Ansible's ssh connection checks them."""

from __future__ import annotations

import shlex
from pathlib import Path

from fabric import Connection
from paramiko import MissingHostKeyPolicy, RejectPolicy

from stackkit.inventory import PlayVars


class AcceptUnrecorded(MissingHostKeyPolicy):
    """Host key checking off: an unknown key is accepted for this connection and recorded
    nowhere, so no later run (Fabric's or ssh's) trusts a key that nobody verified."""

    def missing_host_key(self, client, hostname, key):
        return None


def ssh_options(args: list[str]) -> dict[str, str]:
    """The -o options of an ssh command line, keyed in lower case, as ssh reads them: the first
    value of an option wins, `-o Key=Value`, `-oKey=Value` and `-o "Key Value"` alike."""
    options: dict[str, str] = {}
    words = iter(args)
    for word in words:
        if word == "-o":
            option = next(words, "")
        elif word.startswith("-o"):
            option = word[2:]
        else:
            continue
        key, _, val = option.strip().replace("=", " ", 1).partition(" ")
        if key:
            options.setdefault(key.lower(), val.strip())
    return options


def connection(inventory: PlayVars, name: str) -> Connection:
    """ansible_host, _user, _port and the key; unknown host keys refused unless the inventory
    turns host key checking off (ansible_host_key_checking, or the StrictHostKeyChecking option
    it hands ssh), as it does for throwaway local hosts. Known keys are read, never written:
    with checking off an unknown key is used once, not saved."""

    def get(expression: str):
        return inventory.render(name, expression, facts=False)

    key = get("ansible_ssh_private_key_file | default(ansible_private_key_file) | default('')")
    conn = Connection(
        host=str(get("ansible_host | default(inventory_hostname)")),
        user=str(get("ansible_user | default(ansible_ssh_user) | default('')") or "") or None,
        port=int(get("ansible_port | default(ansible_ssh_port) | default(22)")),
        connect_kwargs={"key_filename": str(key)} if key else {},
    )
    checking = get(
        "ansible_host_key_checking | default(ansible_ssh_host_key_checking)"
        " | default(lookup('env', 'ANSIBLE_HOST_KEY_CHECKING') or True) | bool"
    )
    ssh_args = (get(f"ansible_ssh_{kind}_args | default('')") for kind in ("common", "extra"))
    options = ssh_options(shlex.split(" ".join(map(str, ssh_args))))
    if options.get("stricthostkeychecking", "yes").lower() in ("no", "off"):
        checking = False  # what ssh itself does with the arguments Ansible hands it
    for known in options.get("userknownhostsfile", "~/.ssh/known_hosts").split():
        path = Path(known).expanduser()
        if path.is_file():
            # HostKeys.load, not client.load_host_keys: the latter makes the file the one
            # paramiko saves newly accepted keys to.
            conn.client.get_host_keys().load(str(path))
    conn.client.set_missing_host_key_policy(RejectPolicy() if checking else AcceptUnrecorded())
    return conn


def install_file(conn: Connection, local: Path, directory: str) -> str:
    """Copies `local` into `directory` as root's, mode 0644: to a fresh mktemp file as the SSH
    user (who may not write there), then root moves it."""
    remote = conn.run("mktemp", hide=True).stdout.strip()
    conn.put(str(local), remote, preserve_mode=False)
    conn.sudo(f"install -o root -g root -m 0644 {remote} {directory}/{local.name}", hide=True)
    conn.run(f"rm -f {remote}", hide=True)
    return f"{directory}/{local.name}"
