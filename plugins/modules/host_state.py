#!/usr/bin/python
"""Read the state the kit manages on a host in one call; compare it with the state recorded."""

from __future__ import annotations

import fnmatch
import glob
import grp
import hashlib
import json
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: host_state
short_description: Say whether a host is still in the state the kit's last complete run left
description:
  - Reads, in one call, everything on the host that the kit's roles manage or that their
    configuration lives in - every file under I(trees) (content, mode, owner, symbolic links)
    and each path of I(paths), every installed package's version and status, the units that
    are active, and the output of each program in I(probe_dir), which the roles install to
    list what lives inside their services (database roles and grants, broker users and
    permissions, index templates, the firewall's ruleset in the kernel, kernel settings).
  - Compares it, and the digest of the run's inputs, with what the host recorded after the
    last complete run, and says whether the roles must converge and, if so, what differs.
  - With I(record), writes what it read into I(path) (root's, mode 0600), with the inputs'
    digest. Nothing else on the host changes; in check mode nothing is written. The record is
    bookkeeping, as a cache is, so writing it is not reported as a change (C(recorded) says so).
options:
  inputs:
    description:
      - Digest of what the run converges the host from (the kit, the inventory).
      - Without it the state alone is compared, and nothing can be recorded; an operator can
        ask a host what changed since its last complete run this way.
    type: str
  trees:
    description: Directories read whole.
    type: list
    elements: path
    default: []
  paths:
    description: Files, directories (by their own mode and owner) or globs, read one by one.
    type: list
    elements: str
    default: []
  exclude:
    description:
      - Globs of paths under I(trees), or of unit names, that change on their own and are not
        read (a pattern with a C(/) never matches a unit).
    type: list
    elements: str
    default: []
  probe_dir:
    description:
      - Directory of programs, each printing state held inside a service; each one's exit
        status and output are read (a missing directory reads as no programs).
    type: path
    default: /usr/local/lib/stackkit/state
  record:
    description: Record what was read as the state of a complete run.
    type: bool
    default: false
  converge_all:
    description: Say the roles converge whatever the digests.
    type: bool
    default: false
  path:
    description: Where the host keeps the recorded state.
    type: path
    default: /var/lib/stackkit/state.json
"""

EXAMPLES = r"""
# What changed on the hosts since their last complete run (read only):
#   ansible all -b -m stackkit.kit.host_state \
#     -a '{"trees": "{{ stack_state_trees }}", "paths": "{{ stack_state_paths }}",
#          "exclude": "{{ stack_state_exclude }}"}'

- name: Compare the host with the state its last complete run left
  stackkit.kit.host_state:
    inputs: "{{ digest_of_the_inputs }}"
    trees: [/etc]
    exclude: [/etc/ld.so.cache]
  register: state
"""

RETURN = r"""
inputs:
  description: The digest of the inputs given, to record after the run.
  returned: always
  type: str
converge:
  description: True when the roles must converge.
  returned: always
  type: bool
reasons:
  description: What differs from the record (the first few items), or why the roles converge.
  returned: always
  type: list
  elements: str
recorded:
  description: True when I(record) wrote a record that differs from the one before.
  returned: always
  type: bool
state:
  description: A digest of everything read; any change on the host changes it.
  returned: always
  type: str
differ:
  description: How many items differ from the record.
  returned: always
  type: int
items:
  description: How many items were read.
  returned: always
  type: int
"""

MAX_REASONS = 8


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}:{stat.S_IMODE(st.st_mode):04o}"


def entry(path: str) -> str:
    """What a path is: absent, a link and its target, a directory, or a file and its content."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    if stat.S_ISLNK(st.st_mode):
        return f"link {os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return f"dir {_owner(st)}"
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return f"file {_owner(st)} {digest.hexdigest()[:32]}"
    return f"other {_owner(st)} {stat.S_IFMT(st.st_mode):o}"


def excluded(name: str, exclude: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


def read_files(trees: list[str], paths: list[str], exclude: list[str]) -> dict[str, str]:
    found = {}

    for root in trees:
        found[root] = entry(root)
        for top, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not excluded(os.path.join(top, d), exclude)]
            for name in dirs + files:
                path = os.path.join(top, name)
                if not excluded(path, exclude):
                    found[path] = entry(path)
    for pattern in paths:
        for path in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
            if not excluded(path, exclude):
                found[path] = entry(path)
    return found


def read_packages(module: AnsibleModule) -> dict[str, str]:
    rc, out, err = module.run_command(
        ["dpkg-query", "-W", "-f", "${Package}:${Architecture}\t${Version} ${db:Status-Abbrev}\n"]
    )
    if rc != 0:
        module.fail_json(msg=f"dpkg-query failed: {err.strip()}")
    return {
        f"package {name}": rest.strip()
        for name, _, rest in (line.partition("\t") for line in out.splitlines())
    }


def read_units(module: AnsibleModule, exclude: list[str]) -> dict[str, str]:
    # Active units only: what was running and stops is drift; the SSH connections' own
    # per-connection units and the users' sessions come and go, as do the units excluded.
    rc, out, err = module.run_command(
        ["systemctl", "list-units", "--state=active", "--type=service,socket,timer,target,mount",
         "--plain", "--no-legend", "--no-pager"]
    )  # fmt: skip
    if rc != 0:  # no systemd running: that too is a state, as stable as a list
        return {"units": f"unreadable: {err.strip()[:200]}"}
    units = (line.split()[0] for line in out.splitlines() if line.strip())
    return {
        f"unit {name}": "active"
        for name in units
        if not name.startswith(("ssh@", "sshd@", "user@", "user-runtime-dir@", "session-"))
        and not excluded(name, exclude)
    }


def read_probes(module: AnsibleModule, probe_dir: str) -> dict[str, str]:
    try:
        names = sorted(os.listdir(probe_dir))
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        path = os.path.join(probe_dir, name)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        rc, out, err = module.run_command([path])
        found[f"probe {name}"] = _sha256(f"rc={rc}\n{out}\n{err}".encode())[:32]
    return found


def differing(now: dict[str, str], then: dict) -> list[str]:
    before = then.get("items") or {}
    return sorted(key for key in set(now) | set(before) if now.get(key) != before.get(key))


def compare(now: dict[str, str], then: dict, inputs: str | None, converge_all: bool) -> list[str]:
    """Why the roles must converge: nothing when the host is as recorded."""
    if converge_all:
        return ["every role converges (stack_converge_all)"]
    if not then:
        return ["no record of a complete run"]
    if inputs is not None and then.get("inputs") != inputs:
        return ["the inputs changed (the kit's files, the inventory's variables or facts)"]
    before = then.get("items") or {}
    differ = differing(now, then)
    reasons = [
        f"{key}: {before.get(key, 'absent')} -> {now.get(key, 'absent')}"
        if key.startswith(("unit ", "package "))
        else f"{key} differs"
        for key in differ[:MAX_REASONS]
    ]
    if len(differ) > MAX_REASONS:
        reasons.append(f"and {len(differ) - MAX_REASONS} more")
    return reasons


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "inputs": {"type": "str"},
            "trees": {"type": "list", "elements": "path", "default": []},
            "paths": {"type": "list", "elements": "str", "default": []},
            "exclude": {"type": "list", "elements": "str", "default": []},
            "probe_dir": {"type": "path", "default": "/usr/local/lib/stackkit/state"},
            "record": {"type": "bool", "default": False},
            "converge_all": {"type": "bool", "default": False},
            "path": {"type": "path", "default": "/var/lib/stackkit/state.json"},
        },
        supports_check_mode=True,
    )
    params = module.params
    if params["record"] and params["inputs"] is None:
        module.fail_json(msg="record: the inputs' digest is needed to record a state")
    try:
        with open(params["path"], encoding="utf-8") as handle:
            then = json.load(handle)
    except (FileNotFoundError, ValueError):
        then = {}
    # The record and its directory are the module's own bookkeeping, not the host's state: the
    # first record would otherwise read the directory it is about to create as absent.
    own = [params["path"], os.path.dirname(params["path"])]
    now = read_files(params["trees"], params["paths"], [*params["exclude"], *own])
    now.update(read_packages(module))
    now.update(read_units(module, params["exclude"]))
    now.update(read_probes(module, params["probe_dir"]))
    reasons = compare(now, then, params["inputs"], params["converge_all"])
    recorded = False
    if params["record"]:
        fresh = {"inputs": params["inputs"], "items": now}
        recorded = fresh != then and not module.check_mode
        if recorded:
            os.makedirs(os.path.dirname(params["path"]), mode=0o755, exist_ok=True)
            temp = f"{params['path']}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(fresh, handle, indent=0, sort_keys=True)
            os.replace(temp, params["path"])
    module.exit_json(
        changed=False,
        converge=bool(reasons),
        reasons=reasons,
        inputs=params["inputs"],
        recorded=recorded,
        items=len(now),
        differ=len(differing(now, then)),
        state=_sha256(json.dumps(now, sort_keys=True).encode()),
    )


if __name__ == "__main__":
    main()
