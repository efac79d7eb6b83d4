"""The Elasticsearch client keeps one HTTP session per process and thread, so a read reuses its
thread's connection to the search hosts' TLS proxy rather than opening one (a TLS handshake with
a client certificate) per request."""

import threading

from catalogue.search import client


def test_a_thread_reuses_its_session_across_clients():
    first, second = client.get_client(), client.get_client(timeout=1)
    assert first.session is second.session
    assert second.timeout == 1


def test_another_thread_gets_a_session_of_its_own():
    mine = client.get_client().session
    theirs = []
    thread = threading.Thread(target=lambda: theirs.append(client.get_client().session))
    thread.start()
    thread.join()
    assert theirs[0] is not mine


def test_other_tls_settings_get_another_session_with_them(settings, tmp_path):
    before = client.get_client().session
    settings.TLS_CA_FILE = str(tmp_path / "ca.pem")
    settings.ELASTICSEARCH_CLIENT_CERT = str(tmp_path / "host.pem")
    settings.ELASTICSEARCH_CLIENT_KEY = str(tmp_path / "host.key")
    after = client.get_client().session
    assert after is not before
    assert after.verify == str(tmp_path / "ca.pem")
    assert after.cert == (str(tmp_path / "host.pem"), str(tmp_path / "host.key"))


def test_a_forked_process_does_not_share_its_parents_session(monkeypatch):
    parent = client.get_client().session
    monkeypatch.setattr(client.os, "getpid", lambda: -1)
    assert client.get_client().session is not parent
