"""The java role, on search hosts: OpenJDK 8 is the only Java and the default one."""

from __future__ import annotations

import re

import pytest

testinfra_hosts = ["ansible://search"]
ROLE = "java"
# A version in apt-cache policy's table; " *** " marks the installed one.
VERSION_LINE = re.compile(r"^( \*\*\*|    ) \S")


def java_home(host, v) -> str:
    """java_home as the play renders it (by default the JVM directory of the host's arch)."""
    return v("java_home")


def test_java_on_the_path_is_version_8(host, v):
    out = host.run("java -version")
    assert out.rc == 0
    assert f'version "1.{v("java_version")}.0_' in out.stderr


def test_alternatives_point_java_at_java_home(host, v):
    home = java_home(host, v)
    assert host.file(home).is_directory
    listed = host.check_output("update-alternatives --list java").splitlines()
    assert listed == [f"{home}/jre/bin/java"], "another java is registered"
    assert host.file("/etc/alternatives/java").linked_to == f"{home}/jre/bin/java"


def test_no_other_openjdk_is_installed(host, v):
    installed = host.check_output(
        "dpkg-query --show --showformat '${Package} ${db:Status-Status}\\n' 'openjdk-*'"
        " | awk '$2 == \"installed\" {print $1}'"
    ).split()
    assert installed, "no OpenJDK package is installed"
    others = [p for p in installed if not p.startswith(f"openjdk-{v('java_version')}-")]
    assert others == []


def test_java_trusts_the_system_certificates(host):
    keystore = host.file("/etc/ssl/certs/java/cacerts")
    assert keystore.is_file
    assert keystore.size > 10_000


def is_debian_13(host) -> bool:
    info = host.system_info
    return info.distribution == "debian" and info.release.split(".")[0] == "13"


def suites_of_installed_versions(host) -> dict[str, set[str]]:
    """{package: suites offering its installed version}, parsed from apt-cache policy."""
    policy = host.check_output(
        "dpkg-query --show --showformat '${Package}\\n' | xargs apt-cache policy"
    )
    found: dict[str, set[str]] = {}
    package, installed = "", False
    for line in policy.splitlines():
        if not line.startswith(" "):
            package = line.rstrip(":")
        elif VERSION_LINE.match(line):
            installed = line.startswith(" *** ")
            if installed:
                found[package] = set()
        elif installed and "://" in line:
            found[package].add(line.split()[2].split("/")[0])
    return found


def test_only_the_jre_comes_from_sid(host, v):
    if not is_debian_13(host):
        pytest.skip("sid is used on Debian 13 only")
    suites = suites_of_installed_versions(host)
    only_in_sid = sorted(p for p, s in suites.items() if s == {"sid"})
    assert only_in_sid, "nothing came from sid, yet Debian 13 has no Java 8 of its own"
    assert all(p.startswith(f"openjdk-{v('java_version')}-") for p in only_in_sid), only_in_sid
    release = host.system_info.codename
    assert any(s.startswith(release) for s in suites["libc6"]), f"libc6 from {suites['libc6']}"


def test_apt_would_take_nothing_else_from_sid(host):
    if not is_debian_13(host):
        pytest.skip("sid is used on Debian 13 only")
    upgrade = host.check_output("apt-get --simulate --with-new-pkgs upgrade")
    from_sid = [
        line for line in upgrade.splitlines() if line.startswith("Inst ") and "unstable" in line
    ]
    assert from_sid == []
