"""A new product shows up in the autocomplete of a prefix that is hot in the cache as soon as
Elasticsearch can find it, while answers stay cached when nothing new was indexed."""

import uuid

import pytest
from django.core.management import call_command

from catalogue import autocomplete_cache, tasks
from catalogue.search.client import ElasticsearchClient
from tests.http_fakes import Reply, Session

pytestmark = pytest.mark.django_db


def hit(product_id, title):
    return {"id": product_id, "score": 1.0, "source": {"title": title}}


def new_product(title="Python Cookbook"):
    payload = {
        "id": str(uuid.uuid4()),
        "title": title,
        "image_url": "https://example.org/a.png",
        "submitted_at": "2025-01-02T03:04:05+00:00",
    }
    tasks.insert_product.run(payload)
    return payload["id"]


def autocomplete(client, q="pyt"):
    return client.get("/api/autocomplete", {"q": q}).json()


@pytest.fixture
def hot(client, fake_es, settings, clock):
    """The prefix "pyt" answered from the cache with one product."""
    clock.advance(settings.CATALOGUE_AUTOCOMPLETE_SETTLE)
    autocomplete(client, "other")  # the process learns the generation
    clock.advance(settings.CATALOGUE_AUTOCOMPLETE_SETTLE)
    fake_es.responses = [{"hits": [hit("old", "Python Primer")]}]
    autocomplete(client)
    answer = autocomplete(client)
    assert answer["cached"] is True
    assert [r["id"] for r in answer["results"]] == ["old"]


def test_a_new_product_shows_up_in_a_hot_prefix_once_indexed(client, fake_es, store, hot):
    product_id = new_product()
    tasks.index_product.run(product_id)
    fake_es.responses = [
        {"hits": [hit(product_id, "Python Cookbook"), hit("old", "Python Primer")]}
    ]
    answer = autocomplete(client)
    assert answer["cached"] is False
    assert [r["id"] for r in answer["results"]] == [product_id, "old"]


def test_nothing_looked_up_before_the_index_refreshed_is_cached(
    client, fake_es, store, hot, clock, settings
):
    """Elasticsearch finds a document only after its next refresh (up to 1 s after indexing):
    within the window an answer may lack it, so it is served but not kept."""
    tasks.index_product.run(new_product())
    before = len(fake_es.bodies())
    autocomplete(client)  # first sight of the new generation
    clock.advance(settings.CATALOGUE_AUTOCOMPLETE_SETTLE - 0.1)
    assert autocomplete(client)["cached"] is False
    clock.advance(0.1)
    assert autocomplete(client)["cached"] is False  # looked up after the window: kept
    assert autocomplete(client)["cached"] is True
    assert len(fake_es.bodies()) - before == 3


def test_a_document_rewritten_in_place_keeps_the_cached_answers(client, fake_es, store, hot):
    """A view or an image result re-indexes the product: only its popularity changed."""
    product_id = new_product()
    tasks.index_product.run(product_id)
    generation = autocomplete_cache.generation()
    tasks.index_product.run(product_id)
    assert autocomplete_cache.generation() == generation


@pytest.mark.parametrize(
    "request_context", [{"retries": 1}, {"delivery_info": {"redelivered": True}}]
)
def test_a_retried_or_redelivered_index_retires_cached_answers(
    client, fake_es, store, hot, request_context
):
    """The attempt before may have created the document and lost the answer: this one then
    finds it there already, and must still count it as new."""
    product_id = new_product()
    fake_es.documents[product_id] = {"title": "Python Cookbook"}  # the lost attempt's work
    generation = autocomplete_cache.generation()
    tasks.index_product.push_request(**request_context)
    try:
        tasks.index_product.run(product_id)
    finally:
        tasks.index_product.pop_request()
    assert autocomplete_cache.generation() != generation


def test_a_document_removed_from_the_index_retires_cached_answers(client, fake_es, hot):
    generation = autocomplete_cache.generation()
    tasks.index_product.run(str(uuid.uuid4()))  # no such product: its document is deleted
    assert fake_es.called("delete_document")
    assert autocomplete_cache.generation() != generation


def test_a_reindex_retires_cached_answers(client, fake_es, store, hot):
    generation = autocomplete_cache.generation()
    call_command("reindex")
    assert autocomplete_cache.generation() != generation
    assert autocomplete(client)["cached"] is False


def test_answers_are_keyed_by_generation_and_query_in_any_case():
    assert autocomplete_cache.key("Pyt", "g1") == autocomplete_cache.key("pyt", "g1")
    assert autocomplete_cache.key("pyt", "g1") != autocomplete_cache.key("pyt", "g2")


@pytest.mark.parametrize(
    ("status", "result", "created"), [(201, "created", True), (200, "updated", False)]
)
def test_the_client_tells_a_new_document_from_a_replaced_one(status, result, created):
    client = ElasticsearchClient(
        "http://es:9200", session=Session(Reply(status, {"result": result}))
    )
    assert client.index_document("products", "a", {"title": "A"}) is created
