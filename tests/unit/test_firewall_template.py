"""The firewall the common role writes admits each rule's sources by family: IPv4 addresses and
networks in an `ip saddr` set, IPv6 ones in an `ip6 saddr` set, [any] without a source match."""

from __future__ import annotations

from preflight import ROOT, output, run_play

ROLE = ROOT / "roles" / "common"


def render(tmp_path, variables: dict) -> str:
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "tasks": [
                {
                    "name": "Render the firewall",
                    "ansible.builtin.copy": {
                        "content": "{{ lookup('ansible.builtin.template', '"
                        + str(ROLE / "templates" / "etc" / "nftables.conf.j2")
                        + "') }}",
                        "dest": str(tmp_path / "nftables.conf"),
                        "mode": "0644",
                    },
                }
            ],
        }
    ]
    result = run_play(tmp_path, play, variables)
    assert result.returncode == 0, output(result)
    return (tmp_path / "nftables.conf").read_text()


def test_sources_are_split_by_family(tmp_path):
    rules = render(
        tmp_path,
        {
            "common_firewall_ssh_sources": ["10.0.0.0/16"],
            "common_firewall_allowed_web": [{"port": 443, "sources": ["any"], "comment": "web"}],
            "common_firewall_allowed_db": [
                {"port": 5432, "sources": ["10.0.1.5", "fd00::/64", "10.0.2.0/24"], "comment": "db"}
            ],
        },
    )
    assert 'ip saddr { 10.0.0.0/16 } tcp dport 22 accept comment "ssh"' in rules
    assert 'tcp dport 443 accept comment "web"' in rules
    assert "saddr { any" not in rules
    assert 'ip saddr { 10.0.1.5, 10.0.2.0/24 } tcp dport 5432 accept comment "db"' in rules
    assert 'ip6 saddr { fd00::/64 } tcp dport 5432 accept comment "db"' in rules
