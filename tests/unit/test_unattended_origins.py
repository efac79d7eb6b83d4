"""Unattended upgrades take the vendor repositories the roles configure (Elastic's, MongoDB's)
besides the distribution's security archive.

The common role's apt.conf.d file and each vendor role's are rendered with the roles' defaults
and read together by the controller's own apt-config, as apt reads /etc/apt/apt.conf.d.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = {
    "common": "52stackkit-unattended-upgrades",
    "elasticsearch": "52stackkit-unattended-upgrades-elasticsearch",
    "mongodb": "52stackkit-unattended-upgrades-mongodb",
}

pytestmark = pytest.mark.skipif(shutil.which("apt-config") is None, reason="needs apt-config")


def render(role: str, dest: Path) -> None:
    facts = {"ansible_facts": {"distribution": "Debian", "distribution_release": "bookworm"}}
    subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-m",
            "ansible.builtin.template",
            "-a",
            f"src={ROOT}/roles/{role}/templates/etc/apt/apt.conf.d/{FILES[role]}.j2 dest={dest}",
            "-e",
            f"@{ROOT}/roles/{role}/defaults/main.yml",
            "-e",
            f"@{ROOT}/roles/{role}/vars/main.yml",
            "-e",
            json.dumps(facts),
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ],
        check=True,
        capture_output=True,
        # Ansible's own linear strategy: an ad-hoc command on the local connection hands
        # Mitogen the configured playbook_dir as its working directory, a tagged string its
        # target refuses to unpickle (ansible-core 2.19, mitogen 0.3.54). Over SSH, and in
        # playbooks, the kit's default strategy has no such path.
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_STRATEGY": "linear",
        },
    )


@pytest.fixture(scope="module")
def origins(tmp_path_factory) -> list[str]:
    tmp = tmp_path_factory.mktemp("apt")
    parts = tmp / "apt.conf.d"
    parts.mkdir()
    for role, name in FILES.items():
        render(role, parts / name)
    config = tmp / "apt.conf"
    config.write_text(f'Dir::Etc::Parts "{parts}";\nDir::Etc::Main "/dev/null";\n')
    dump = subprocess.run(
        ["apt-config", "dump", "Unattended-Upgrade::Origins-Pattern"],
        env={**os.environ, "APT_CONFIG": str(config)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [
        line.split(" ", 1)[1].strip().rstrip(";").strip('"')
        for line in dump.splitlines()
        if line.startswith("Unattended-Upgrade::Origins-Pattern:: ")
    ]


def test_the_distribution_security_archive_stays_allowed(origins):
    assert any("label=Debian-Security" in origin for origin in origins)


def test_elastic_and_mongodb_repositories_are_allowed(origins):
    assert "site=artifacts.elastic.co" in origins
    assert "site=repo.mongodb.org" in origins
