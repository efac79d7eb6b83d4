"""An inventory's hosts and their variables as a play sees them: the one resolver the tests,
the drift and chaos drivers and the fabfile share.

Ansible's documented Python API does the work (DataLoader, InventoryManager, VariableManager, a
Play loaded as ansible-playbook loads one from playbooks/): the role's defaults and vars, the
playbooks' group_vars (the kit's wiring), the inventory's group_vars and host_vars,
vault-encrypted values (the password comes from ANSIBLE_VAULT_PASSWORD_FILE, as for
ansible-playbook) and the host's facts, each at the precedence Ansible gives it, rendered by
Ansible's templating. A variable that none of them defines, or that renders through an undefined
one, is an error: a check never compares a host against a value the play did not use. With
`vault=False` encrypted files count as empty, so reading where to connect needs no secret.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

from ansible.errors import AnsibleError
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import get_file_vault_secret, is_encrypted_file
from ansible.playbook.play import Play
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template
from ansible.utils.collection_loader import AnsibleCollectionConfig
from ansible.vars.hostvars import HostVars
from ansible.vars.manager import VariableManager

ROOT = Path(__file__).resolve().parents[1]
ROLES = ROOT / "roles"
# The kit's wiring (playbooks/group_vars/): every play of the kit's playbooks sees it.
PLAYBOOKS = ROOT / "playbooks"
# The local hosts' secrets are throwaway; their vault password is committed beside them.
LOCAL_VAULT_PASSWORD = ROOT / "tests" / "hosts" / "local-vault-password"
# The variable an inventory sets on its hosts to let the destructive checks run there.
DISPOSABLE = "stackkit_disposable"


@cache
def _init_plugins() -> None:
    """What the ansible CLIs do first (once per process): the modules roles name resolve. A
    process whose collections another tool configured already keeps that."""
    if AnsibleCollectionConfig.collection_finder is None:
        init_plugin_loader()


class UnresolvedVariable(AssertionError):
    """A variable the play would not have a value for."""


class _SkipVault(DataLoader):
    """Reads the inventory without the vault: encrypted files count as empty."""

    def load_from_file(self, file_name, *args, **kwargs):
        with open(file_name, "rb") as handle:
            if is_encrypted_file(handle):
                return {}
        return super().load_from_file(file_name, *args, **kwargs)


class PlayVars:
    def __init__(
        self,
        inventory: str,
        facts: Callable[[str], dict] | None = None,
        vault_password_file: str | None = None,
        vault: bool = True,
        playbook_dir: str | None = None,
    ) -> None:
        """`facts(hostname)` returns the host's facts as the setup module reports them; it is
        called once per host, the first time a role's variables are asked for.
        `playbook_dir` is the directory of the playbook that converged the hosts, whose
        group_vars the play saw: the kit's playbooks/ unless said otherwise (a molecule
        scenario's own converge playbook sees no wiring)."""
        _init_plugins()
        self.loader = DataLoader() if vault else _SkipVault()
        self.loader.set_basedir(str(playbook_dir or PLAYBOOKS))
        password_file = vault_password_file or os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE")
        if vault and password_file:
            secret = get_file_vault_secret(filename=password_file, loader=self.loader)
            secret.load()
            self.loader.set_vault_secrets([("default", secret)])
        self.inventory = InventoryManager(loader=self.loader, sources=[inventory])
        self.manager = VariableManager(loader=self.loader, inventory=self.inventory)
        HostVars(inventory=self.inventory, variable_manager=self.manager, loader=self.loader)
        self._facts = facts
        self._gathered: set[str] = set()
        self._plays: dict[tuple[str, str | None], Play] = {}

    def hostnames(self, pattern: str = "all") -> list[str]:
        return [h.name for h in self.inventory.get_hosts(pattern)]

    def _play(self, hostname: str, role: str | None) -> Play:
        key = (hostname, role)
        if key not in self._plays:
            data = {"name": "variables", "hosts": hostname, "gather_facts": False}
            if role:
                if not (ROLES / role).is_dir():
                    raise UnresolvedVariable(f"no role {role!r} under {ROLES}")
                data["roles"] = [{"role": str(ROLES / role)}]
            self._plays[key] = Play.load(data, variable_manager=self.manager, loader=self.loader)
        return self._plays[key]

    def _templar(self, hostname: str, role: str | None, with_facts: bool) -> Templar:
        host = self.inventory.get_host(hostname)
        if host is None:
            raise UnresolvedVariable(f"{hostname} is not a host of the inventory")
        if with_facts and self._facts and hostname not in self._gathered:
            self.manager.set_host_facts(hostname, clean_facts(self._facts(hostname)))
            self._gathered.add(hostname)
        variables = self.manager.get_vars(play=self._play(hostname, role), host=host)
        return Templar(loader=self.loader, variables=variables)

    def value(self, hostname: str, name: str, role: str | None = None):
        """`name` for `hostname` as a play applying `role` renders it."""
        templar = self._templar(hostname, role, with_facts=True)
        if name not in templar.available_variables:
            source = f"role {role}'s defaults, its vars or " if role else ""
            raise UnresolvedVariable(
                f"{name} is not defined for {hostname} by {source}the inventory"
            )
        try:
            return templar.template(templar.available_variables[name])
        except AnsibleError as error:
            raise UnresolvedVariable(f"{name} cannot be rendered for {hostname}: {error}") from None

    def render(self, hostname: str, expression: str, role: str | None = None, facts=True):
        """A Jinja expression evaluated with the host's variables (and `role`'s, if named)."""
        templar = self._templar(hostname, role, with_facts=facts)
        try:
            return templar.evaluate_expression(trust_as_template(expression))
        except AnsibleError as error:
            raise UnresolvedVariable(
                f"{expression!r} cannot be rendered for {hostname}: {error}"
            ) from None

    def not_disposable(self) -> list[str]:
        """Hosts whose inventory does not set stackkit_disposable to true (no facts needed)."""
        return [
            name
            for name in self.hostnames()
            if self.render(name, f"{DISPOSABLE} | default(false) | bool", facts=False) is not True
        ]


def vault_password_file(inventory: str) -> str | None:
    """ANSIBLE_VAULT_PASSWORD_FILE, else the committed one for inventories/local (as `make`)."""
    if os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE"):
        return os.environ["ANSIBLE_VAULT_PASSWORD_FILE"]
    local = Path(inventory).resolve() == ROOT / "inventories" / "local"
    return str(LOCAL_VAULT_PASSWORD) if local else None


def clean_facts(result: dict) -> dict:
    """The setup module's `ansible_facts` as Ansible stores them: without the prefix (they are
    then seen both as ansible_facts.NAME and, injected, as ansible_NAME)."""
    facts = result.get("ansible_facts", result)
    return {key.removeprefix("ansible_"): value for key, value in facts.items()}
