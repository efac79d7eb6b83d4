"""Every host: services listen on the host's private address (the inventory's private_address,
else ansible_host) and on loopback, nowhere else. Only sshd and nginx, which the firewall
opens to other networks, may listen on every address. Read-only."""

from __future__ import annotations

from conftest import address_of, listeners

testinfra_hosts = ["ansible://all"]
# What may listen on a wildcard: the firewall (common_firewall_ssh_sources, the web tier's
# rules) decides who reaches them.
WILDCARD_OK = {"sshd", "nginx"}


def test_services_listen_on_the_private_address_and_loopback_only(host):
    private = address_of(host)
    stray = [
        listener
        for listener in listeners(host)
        if not listener.is_loopback
        and listener.address != private
        and not (listener.is_wildcard and listener.process in WILDCARD_OK)
    ]
    assert not stray, f"listening outside {private} and loopback: {stray}"


def test_the_private_address_is_the_one_the_inventory_names(host):
    """The roles bind what the inventory says, so that address must be one of the host's."""
    private = address_of(host)
    addresses = {a for name in host.interface.names() for a in host.interface(name).addresses}
    assert private in addresses, f"{private} is not an address of {host.backend.host}"
