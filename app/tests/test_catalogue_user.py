"""The operator's command that makes the page's accounts (passwords on standard input)."""

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-staple"


def run(monkeypatch, *args, stdin=""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    out = io.StringIO()
    call_command("catalogue_user", *args, stdout=out)
    return json.loads(out.getvalue().splitlines()[-1])


def test_creates_then_changes_nothing_then_sets_a_new_password(monkeypatch):
    assert run(monkeypatch, "editor", stdin=PASSWORD + "\n") == {"changed": True}
    user = get_user_model().objects.get(username="editor")
    assert user.check_password(PASSWORD)
    assert not user.is_staff
    assert not user.is_superuser
    assert run(monkeypatch, "editor", stdin=PASSWORD + "\n") == {"changed": False}
    assert run(monkeypatch, "editor", stdin="another-long-passphrase-2\n") == {"changed": True}
    assert (
        get_user_model().objects.get(username="editor").check_password("another-long-passphrase-2")
    )


def test_a_disabled_account_is_enabled_again(monkeypatch):
    run(monkeypatch, "editor", stdin=PASSWORD)
    get_user_model().objects.filter(username="editor").update(is_active=False)
    assert run(monkeypatch, "editor", stdin=PASSWORD) == {"changed": True}
    assert get_user_model().objects.get(username="editor").is_active


@pytest.mark.parametrize("password", ["", "short", "1234567890123456789"])
def test_a_missing_or_weak_password_is_refused_and_nothing_is_made(monkeypatch, password):
    with pytest.raises(CommandError):
        run(monkeypatch, "editor", stdin=password)
    assert not get_user_model().objects.filter(username="editor").exists()


def test_remove(monkeypatch):
    run(monkeypatch, "editor", stdin=PASSWORD)
    assert run(monkeypatch, "editor", "--remove") == {"changed": True}
    assert run(monkeypatch, "editor", "--remove") == {"changed": False}
    assert not get_user_model().objects.exists()
