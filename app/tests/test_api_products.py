import json
import uuid
from datetime import datetime

import pytest
from django.core.exceptions import ImproperlyConfigured

from catalogue import auth, tasks
from catalogue.models import Event, Product, Submission

pytestmark = pytest.mark.django_db

GOOD = {"title": " Python Cookbook ", "image_url": "https://example.org/cover.png"}


def post(client, data, path="/api/products/"):
    return client.post(path, data=json.dumps(data), content_type="application/json")


def test_bad_input_is_400_with_field_errors_and_nothing_stored_or_enqueued(client, broker):
    response = post(client, {"title": "", "image_url": "ftp://x"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"title", "image_url"}
    assert broker.drain() == []
    assert Product.objects.count() == 0


def test_invalid_json_is_400(client, broker):
    response = client.post("/api/products/", data="{nope", content_type="application/json")
    assert response.status_code == 400
    assert broker.drain() == []


def test_good_input_is_202_with_id_chosen_now_and_insert_enqueued_on_default(
    client, broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, GOOD)
    assert response.status_code == 202
    body = response.json()
    product_id = str(uuid.UUID(body["id"]))
    assert body["status_url"] == f"/api/products/{product_id}"
    assert response["Location"] == body["status_url"]
    [message] = broker.drain()
    assert message.queue == "default"
    assert message.task == "catalogue.tasks.insert_product"
    assert message.delivery_mode == 2  # persistent
    [payload] = message.args
    assert payload["id"] == product_id
    assert payload["title"] == "Python Cookbook"
    datetime.fromisoformat(payload["submitted_at"])
    # The web process writes the submission, never the product itself.
    assert Submission.objects.get().payload == payload
    assert Product.objects.count() == 0


def test_each_post_gets_its_own_id(client, broker):
    first = post(client, GOOD).json()["id"]
    second = post(client, GOOD).json()["id"]
    assert first != second


def stored(product_id):
    tasks.insert_product.run(
        {
            "id": str(product_id),
            "title": "Python",
            "image_url": "https://example.org/a.png",
            "submitted_at": "2025-01-01T00:00:00+00:00",
        }
    )


def test_status_url_says_pending_until_the_row_exists(client, store):
    product_id = uuid.uuid4()
    assert client.get(f"/api/products/{product_id}").status_code == 202
    stored(product_id)
    response = client.get(f"/api/products/{product_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "stored"


@pytest.mark.parametrize("method", ["get", "head"])
def test_a_read_writes_nothing_and_queues_nothing(client, store, broker, method):
    product_id = uuid.uuid4()
    stored(product_id)
    broker.drain()
    before = (Product.objects.get(id=product_id).popularity, Event.objects.count())
    for address in ("192.0.2.1", "192.0.2.2", "2001:db8::1"):
        response = getattr(client, method)(f"/api/products/{product_id}", REMOTE_ADDR=address)
        assert response.status_code == 200
    assert broker.drain() == []
    assert (Product.objects.get(id=product_id).popularity, Event.objects.count()) == before


def beacon(client, product_id, **meta):
    return client.post(f"/api/products/{product_id}/views", **meta)


def test_the_view_beacon_counts_one_view_per_client_and_window(
    anonymous, store, broker, settings, monkeypatch
):
    product_id = uuid.uuid4()
    stored(product_id)
    broker.drain()
    events = Event.objects.filter(product_id=product_id, kind="viewed")
    answers = [beacon(anonymous, product_id, REMOTE_ADDR="192.0.2.1") for _ in range(3)]
    assert [(a.status_code, a.json()["counted"]) for a in answers] == [
        (202, True),
        (202, False),
        (202, False),
    ]
    # Another IPv4 address is another client; a new address in a counted /64 is not.
    assert beacon(anonymous, product_id, HTTP_X_REAL_IP="198.51.100.7").json()["counted"]
    assert beacon(anonymous, product_id, HTTP_X_REAL_IP="2001:db8:1:2::1").json()["counted"]
    assert not beacon(anonymous, product_id, HTTP_X_REAL_IP="2001:db8:1:2:ffff::9").json()[
        "counted"
    ]
    assert not events.exists()  # the beacon itself writes nothing: a task does
    messages = broker.drain()
    assert [(m.queue, m.task) for m in messages] == [("default", "catalogue.tasks.count_view")] * 3
    for message in messages:
        tasks.count_view.run(*message.args)
    assert Product.objects.get(id=product_id).popularity == 3
    assert events.count() == 3
    # The next window counts the same client again.
    now = __import__("time").time()
    monkeypatch.setattr("catalogue.views.time.time", lambda: now + settings.CATALOGUE_VIEW_WINDOW)
    assert beacon(anonymous, product_id, REMOTE_ADDR="192.0.2.1").json()["counted"]


def test_the_view_beacon_counts_nothing_for_an_unknown_product_and_takes_no_get(
    anonymous, store, broker
):
    product_id = uuid.uuid4()
    assert beacon(anonymous, product_id).status_code == 404
    stored(product_id)
    broker.drain()
    assert anonymous.get(f"/api/products/{product_id}/views").status_code == 405
    assert broker.drain() == []


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", "Basic dGVzdHM6eA==", "bearer  "],
    ids=["missing", "empty", "no token", "unknown token", "basic", "blank token"],
)
@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/products/", GOOD), ("/api/products/batch", {"products": [GOOD]})],
    ids=["single", "batch"],
)
def test_a_write_without_a_valid_token_is_401_and_stores_nothing(
    anonymous, broker, authorization, path, body
):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = anonymous.post(
        path, data=json.dumps(body), content_type="application/json", **headers
    )
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert broker.drain() == []
    assert Submission.objects.count() == 0
    assert Product.objects.count() == 0


def test_a_configured_token_is_accepted_and_a_malformed_configuration_refused(
    anonymous, broker, settings
):
    settings.CATALOGUE_API_TOKEN_HASHES = ["importer:" + auth.digest("importer-secret-token")]
    response = anonymous.post(
        "/api/products/",
        data=json.dumps(GOOD),
        content_type="application/json",
        HTTP_AUTHORIZATION="Bearer importer-secret-token",
    )
    assert response.status_code == 202
    settings.CATALOGUE_API_TOKEN_HASHES = ["importer:not-a-digest"]
    with pytest.raises(ImproperlyConfigured):
        auth.configured()


def test_the_page_form_needs_a_csrf_token_even_when_signed_in(member, broker):
    from django.test import Client  # noqa: PLC0415

    strict = Client(enforce_csrf_checks=True)
    strict.cookies = member.cookies
    assert strict.get("/").context["user"].is_authenticated
    assert strict.post("/", GOOD).status_code == 403
    assert broker.drain() == []
    assert Submission.objects.count() == 0


def test_batch_rejects_everything_when_one_item_is_bad(client, broker):
    response = post(
        client, {"products": [GOOD, {"title": "", "image_url": "x"}]}, "/api/products/batch"
    )
    assert response.status_code == 400
    assert set(response.json()["errors"]["products"]) == {"1"}
    assert broker.drain() == []


def test_batch_enqueues_one_message_for_all_its_products(
    client, broker, django_capture_on_commit_callbacks
):
    items = [{"title": f"Item {i}", "image_url": f"https://example.org/{i}.png"} for i in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, {"products": items}, "/api/products/batch")
    assert response.status_code == 202
    body = response.json()
    [message] = broker.drain()
    assert (message.task, message.queue) == ("catalogue.tasks.insert_batch", "default")
    payloads, batch_id = message.args
    assert [p["id"] for p in payloads] == [p["id"] for p in body["products"]]
    assert [p["title"] for p in payloads] == [item["title"] for item in items]
    assert batch_id == body["batch_id"]
    recorded = Submission.objects.filter(batch_id=body["batch_id"])
    assert sorted(str(pk) for pk in recorded.values_list("pk", flat=True)) == sorted(
        p["id"] for p in body["products"]
    )


def test_batch_size_is_capped(client, broker, settings):
    settings.CATALOGUE_BATCH_MAX = 2
    response = post(client, {"products": [GOOD] * 3}, "/api/products/batch")
    assert response.status_code == 400
    assert broker.drain() == []


def test_html_form_rejects_bad_input_with_400_and_enqueues_nothing(member, broker):
    response = member.post("/", {"title": "", "image_url": "nope"})
    assert response.status_code == 400
    assert b'role="alert"' in response.content
    assert broker.drain() == []


def test_html_form_accepts_and_redirects(member, broker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = member.post("/", GOOD)
    assert response.status_code == 302
    [message] = broker.drain()
    assert response["Location"].endswith(message.args[0]["id"])
