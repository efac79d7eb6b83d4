"""Digest of what a run converges a host from: the kit's files, the app's source, variables."""

from __future__ import annotations

import hashlib
import json
import os
import re

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = r"""
name: run_inputs
short_description: Digest of what a run converges a host from
description:
  - One SHA-256 digest of the files under each directory given (their paths and contents;
    byte code and virtualenvs left out), of the values of every variable whose name matches
    I(names) as the host sees them, and of I(extra), so that a run can tell whether
    anything it converges a host from changed since the host's last complete run.
  - A variable that cannot be templated for this host (one that reads another role's
    defaults, for example) counts by the error it raises, which is as stable as a value.
options:
  _terms:
    description: Directories whose files count (after I(kit)'s).
    type: list
    elements: path
    required: true
  kit:
    description:
      - Directories of the kit itself whose files count, named relative to the root of the
        collection this plugin belongs to (C(roles), C(playbooks)...), found from the plugin's
        own location (links resolved), so they are the kit's files whichever playbook
        imports the kit's plays and from wherever it runs.
    type: list
    elements: str
    default: []
  names:
    description: Regular expression of the names of the variables that count.
    type: str
    required: true
  exclude:
    description: Names of variables that do not count, of those I(names) matches.
    type: list
    elements: str
    default: []
  extra:
    description: Anything else that counts (facts, the inventory's groups).
    type: raw
    default: null
"""

EXAMPLES = r"""
- name: Digest the run's inputs
  ansible.builtin.debug:
    msg: "{{ lookup('stackkit.kit.run_inputs', playbook_dir ~ '/../roles', names='^app_') }}"
"""

RETURN = r"""
_raw:
  description: The digest, one hexadecimal string.
  type: list
  elements: str
"""

SKIPPED_DIRS = {".venv", "__pycache__", ".pytest_cache", ".git", "node_modules"}
# The root of the collection (or of the checkout) this plugin is part of: plugins/lookup/ below
# it. A checkout links plugins/ into playbooks/collections/, hence the links resolved.
KIT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


def tree_digest(root: str) -> str:
    """Paths and contents of every file under root, in a stable order."""
    digest = hashlib.sha256()
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            if name.endswith(".pyc"):
                continue
            path = os.path.join(top, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            try:
                with open(path, "rb") as handle:
                    digest.update(hashlib.sha256(handle.read()).digest())
            except OSError as error:
                digest.update(f"unreadable {error.errno}".encode())
    return digest.hexdigest()


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if variables is None:
            raise AnsibleError("run_inputs: no variables available")
        self.set_options(var_options=variables, direct=kwargs)
        try:
            pattern = re.compile(self.get_option("names"))
        except re.error as error:
            raise AnsibleError(f"run_inputs: names is not a regular expression: {error}") from None
        exclude = set(self.get_option("exclude"))
        values = {}
        for name in sorted(n for n in variables if pattern.search(n) and n not in exclude):
            try:
                value = self._templar.template(variables[name])
            except Exception as error:  # any template error counts as itself
                value = f"error {type(error).__name__}: {error}"
            try:
                values[name] = json.dumps(value, sort_keys=True, default=str)
            except TypeError:  # keys of mixed types cannot be sorted
                values[name] = repr(value)
        document = {
            # By position, not path: the same kit in another directory is the same input.
            "trees": [
                tree_digest(str(root))
                for root in [os.path.join(KIT_ROOT, name) for name in self.get_option("kit")]
                + list(terms)
            ],
            "variables": values,
            "extra": self.get_option("extra"),
        }
        text = json.dumps(document, sort_keys=True, default=str)
        return [hashlib.sha256(text.encode()).hexdigest()]
