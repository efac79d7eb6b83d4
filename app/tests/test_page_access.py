"""The page's form is for accounts the operator made: anonymous visitors get a sign-in link, and
their POSTs are refused before anything is read, recorded or queued."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from catalogue.models import Product, Submission
from tests.conftest import MEMBER_PASSWORD

pytestmark = pytest.mark.django_db

GOOD = {"title": "Python Cookbook", "image_url": "https://example.org/cover.png"}


def test_an_anonymous_visitor_gets_a_sign_in_link_and_no_form(anonymous):
    response = anonymous.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="image_url"' not in html
    assert 'href="/accounts/login/?next=/"' in html
    assert 'role="combobox"' in html  # search stays open to everyone


@pytest.mark.parametrize("data", [GOOD, {"title": "", "image_url": "ftp://x"}], ids=["good", "bad"])
def test_an_anonymous_post_is_refused_and_records_nothing(anonymous, broker, data):
    response = anonymous.post("/", data)
    assert response.status_code == 403
    assert b"Only signed-in users can add products" in response.content
    assert 'name="image_url"' not in response.content.decode()
    assert broker.drain() == []
    assert Submission.objects.count() == 0
    assert Product.objects.count() == 0


def test_a_signed_in_user_sees_the_form_and_a_sign_out_button(member):
    html = member.get("/").content.decode()
    assert 'name="title"' in html
    assert 'name="image_url"' in html
    assert 'action="/accounts/logout/"' in html
    assert "Signed in as <strong>editor</strong>" in html


def test_sign_in_with_the_operator_made_account_then_sign_out(broker):
    get_user_model().objects.create_user("editor", password=MEMBER_PASSWORD)
    browser = Client(enforce_csrf_checks=True)
    login = browser.get("/accounts/login/?next=/")
    assert login.status_code == 200
    token = login.context["csrf_token"]
    wrong = browser.post(
        "/accounts/login/",
        {"username": "editor", "password": "not-the-password", "csrfmiddlewaretoken": token},
    )
    assert wrong.status_code == 200  # the form again, with an error
    assert not browser.get("/").context["user"].is_authenticated
    signed_in = browser.post(
        "/accounts/login/",
        {
            "username": "editor",
            "password": MEMBER_PASSWORD,
            "next": "/",
            "csrfmiddlewaretoken": token,
        },
    )
    assert signed_in.status_code == 302
    assert signed_in["Location"] == "/"
    page = browser.get("/")
    assert page.context["user"].get_username() == "editor"
    token = page.context["csrf_token"]
    assert browser.post("/accounts/logout/", {"csrfmiddlewaretoken": token}).status_code == 302
    assert browser.post("/", {**GOOD, "csrfmiddlewaretoken": token}).status_code in (403,)
    assert Submission.objects.count() == 0


def test_a_disabled_account_cannot_add(member, broker):
    get_user_model().objects.filter(username="editor").update(is_active=False)
    assert member.post("/", GOOD).status_code == 403
    assert Submission.objects.count() == 0


def test_the_form_sends_the_image_url_through_the_apis_validation(member, broker):
    """The same field rules as the API: only http(s) URLs, nothing guessed."""
    for url in ("ftp://example.org/a.png", "example.org/a.png", "file:///etc/passwd"):
        response = member.post("/", {"title": "x", "image_url": url})
        assert response.status_code == 400, url
    assert broker.drain() == []
    assert Submission.objects.count() == 0
