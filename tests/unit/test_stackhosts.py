"""The local-host tool: mirror discovery, image cache keys and the inventory it writes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml
from cryptography import x509

from stackkit import stackhosts
from stackkit.make_vault import BACKDATE

DEB822 = """\
Types: deb
URIs: http://mirror.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main
"""

ONE_LINE = """\
# a comment
deb [arch=amd64 signed-by=/k.gpg] http://one.example.net/debian/ bookworm main
deb http://sec.example.net/debian-security bookworm-security main
"""


def test_mirrors_are_read_from_deb822_sources():
    assert stackhosts.parse_apt_sources([DEB822]) == {
        "main": "http://mirror.example.org/debian",
        "security": "http://mirror.example.org/debian-security",
    }


def test_mirrors_are_read_from_one_line_sources_with_options():
    assert stackhosts.parse_apt_sources([ONE_LINE]) == {
        "main": "http://one.example.net/debian",
        "security": "http://sec.example.net/debian-security",
    }


def test_security_mirror_is_derived_when_only_main_is_configured():
    mirrors = stackhosts.parse_apt_sources(["deb http://m.example.com/debian bookworm main\n"])
    assert mirrors["security"] == "http://m.example.com/debian-security"


def test_no_mirror_is_an_error():
    with pytest.raises(SystemExit, match="no Debian mirror"):
        stackhosts.parse_apt_sources(["# nothing here\n"])


def test_image_sources_use_the_machine_mirror_for_all_three_suites():
    text = stackhosts.image_sources("trixie", stackhosts.parse_apt_sources([DEB822]))
    assert "Suites: trixie trixie-updates" in text
    assert "Suites: trixie-security" in text
    assert "http://mirror.example.org/debian-security" in text


def test_image_tag_changes_with_the_recipe_only():
    mirrors = stackhosts.parse_apt_sources([DEB822])
    tag = stackhosts.image_tag("trixie", mirrors)
    assert tag == stackhosts.image_tag("trixie", dict(mirrors))
    assert tag != stackhosts.image_tag("bookworm", mirrors)
    other = {**mirrors, "main": "http://elsewhere.example.org/debian"}
    assert tag != stackhosts.image_tag("trixie", other)
    assert tag.startswith(f"{stackhosts.IMAGE_REPO}:trixie-")


def test_multi_topology_inventory_places_every_host_in_its_groups():
    hosts = stackhosts.TOPOLOGIES["multi"]
    addresses = {h.name: f"10.0.0.{i}" for i, h in enumerate(hosts, start=10)}
    inventory = yaml.safe_load(stackhosts.render_inventory("multi", addresses))
    assert len(inventory["all"]["hosts"]) == 9
    assert inventory["all"]["hosts"]["db1"]["ansible_host"] == addresses["db1"]
    children = inventory["all"]["children"]
    assert set(children["web"]["hosts"]) == {"web1", "web2"}
    assert set(children["app"]["hosts"]) == {"web1", "web2", "worker1", "worker2"}
    assert set(children["search"]["hosts"]) == {"search1"}
    assert inventory["all"]["vars"]["ansible_user"] == stackhosts.DEPLOY_USER


def test_only_the_web_entry_point_is_published():
    for hosts in stackhosts.TOPOLOGIES.values():
        published = [h for h in hosts if h.publish]
        assert len(published) == 1
        assert "web" in published[0].groups
        assert all(p.startswith("127.0.0.1:") for p in published[0].publish)


def test_host_specs_from_molecule_platforms():
    hosts = stackhosts.parse_host_specs(["db:db,app:bookworm", "solo::trixie", "bare"])
    assert [(h.name, h.groups, h.suite) for h in hosts] == [
        ("db", ("db", "app"), "bookworm"),
        ("solo", (), "trixie"),
        ("bare", (), None),
    ]


def test_the_test_ca_starts_the_margin_before_it_is_made_and_is_made_once(tmp_path):
    """The harness's own issuer, in a directory of its own (the real .cache/tls may serve
    another checkout's hosts): valid from make_vault.BACKDATE before the moment it was made."""
    directory = tmp_path / "tls"
    before = datetime.now(UTC).replace(microsecond=0)
    path = stackhosts.ensure_test_ca(directory)
    after = datetime.now(UTC)
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    print(f"test CA notBefore {certificate.not_valid_before_utc}, made {before}..{after}")
    assert path == directory / "ca.pem"
    assert before - BACKDATE <= certificate.not_valid_before_utc <= after - BACKDATE
    assert (directory / "ca.key").stat().st_mode & 0o777 == 0o600
    assert stackhosts.ensure_test_ca(directory).read_bytes() == path.read_bytes()
