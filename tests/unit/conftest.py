"""Fixtures shared by the unit tests."""

# fabric's mocked SSH and SFTP (MockRemote); importing the fixture here lets pytest find it.
from fabric.testing.fixtures import remote_with_sftp  # noqa: F401
