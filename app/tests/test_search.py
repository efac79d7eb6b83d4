import json

import pytest
import requests
from django.core.management import call_command

from catalogue import autocomplete_cache
from catalogue.search import indexer, mappings, queries
from catalogue.search.client import ElasticsearchClient, SearchError, SearchUnavailable
from tests.http_fakes import Reply, Session

SUGGEST_PYTHN = {
    "spelling": [
        {"text": "pythn", "offset": 0, "length": 5, "options": [{"text": "python", "score": 0.8}]}
    ]
}


def test_phrase_query_weighs_title_twice_and_asks_for_term_suggestions():
    body = queries.phrase_query("python cookbook")
    match = body["query"]["multi_match"]
    assert match["type"] == "phrase"
    assert match["fields"] == ["title^2", "description"]
    assert body["suggest"]["text"] == "python cookbook"
    assert body["suggest"]["spelling"]["term"]["field"] == "title"


def test_term_query_boosts_suggestions_below_the_users_words():
    body = queries.term_query("pythn", ["python"])
    own, suggested = body["query"]["bool"]["should"]
    assert own["multi_match"]["query"] == "pythn"
    assert suggested["multi_match"]["query"] == "python"
    assert suggested["multi_match"]["boost"] < own["multi_match"]["boost"]
    assert (
        own["multi_match"]["fields"] == suggested["multi_match"]["fields"] == queries.SEARCH_FIELDS
    )


def test_search_uses_the_phrase_when_it_finds_something(fake_es):
    fake_es.responses = [
        {"total": 1, "hits": [{"id": "1", "score": 3.0, "source": {"title": "A"}}]}
    ]
    answer = queries.search(fake_es, "products", "python cookbook")
    assert answer["mode"] == "phrase"
    assert len(fake_es.bodies()) == 1


def test_search_falls_back_to_terms_widened_by_suggestions(fake_es):
    fake_es.responses = [
        {"total": 0, "suggest": SUGGEST_PYTHN},
        {"total": 1, "hits": [{"id": "1", "score": 1.0, "source": {"title": "Python"}}]},
    ]
    answer = queries.search(fake_es, "products", "pythn")
    assert answer["mode"] == "term"
    assert answer["suggestions"] == ["python"]
    assert answer["results"] == [{"id": "1", "score": 1.0, "title": "Python"}]
    phrase, term = fake_es.bodies()
    assert phrase["query"]["multi_match"]["type"] == "phrase"
    assert [c["multi_match"]["query"] for c in term["query"]["bool"]["should"]] == [
        "pythn",
        "python",
    ]


def test_empty_query_does_not_touch_elasticsearch(fake_es):
    assert queries.search(fake_es, "products", "   ")["mode"] == "empty"
    assert fake_es.calls == []


def test_autocomplete_query_uses_edge_ngrams_then_popularity():
    body = queries.autocomplete_query("pyt")
    assert body["query"] == {"match": {"title.autocomplete": {"query": "pyt", "operator": "and"}}}
    assert body["sort"] == [{"_score": {"order": "desc"}}, {"popularity": {"order": "desc"}}]


def test_mapping_defines_edge_ngrams_1_to_20_on_the_title():
    analysis = mappings.INDEX_DEFINITION["settings"]["analysis"]
    edge = analysis["filter"]["autocomplete_edge_ngram"]
    assert (edge["type"], edge["min_gram"], edge["max_gram"]) == ("edge_ngram", 1, 20)
    title = mappings.INDEX_DEFINITION["mappings"]["product"]["properties"]["title"]
    assert title["fields"]["autocomplete"]["analyzer"] == "autocomplete"
    assert title["fields"]["autocomplete"]["search_analyzer"] == "autocomplete_search"


@pytest.mark.django_db
def test_autocomplete_answers_from_cache_within_the_ttl(client, fake_es, settings, clock):
    from django.core.cache import cache  # noqa: PLC0415

    client.get("/api/autocomplete", {"q": "warm"})  # this process now knows the generation
    clock.advance(settings.CATALOGUE_AUTOCOMPLETE_SETTLE)
    fake_es.responses = [{"hits": [{"id": "1", "score": 1, "source": {"title": "Python"}}]}]
    first = client.get("/api/autocomplete", {"q": "Pyt"}).json()
    second = client.get("/api/autocomplete", {"q": "pyt "}).json()
    assert first["cached"] is False
    assert second["cached"] is True
    assert first["results"] == second["results"] == [{"id": "1", "title": "Python"}]
    assert len(fake_es.bodies()) == 2  # "warm", then "pyt" once
    key = autocomplete_cache.key("pyt", autocomplete_cache.generation())
    assert cache.get(key) == first["results"]


@pytest.mark.django_db
def test_search_and_stats_endpoints_answer_503_when_elasticsearch_is_down(client, fake_es):
    fake_es.down = True
    for path in ("/api/search?q=x", "/api/autocomplete?q=x", "/api/stats"):
        assert client.get(path).status_code == 503


@pytest.mark.django_db
def test_stats_reshapes_aggregations(client, fake_es):
    fake_es.responses = [
        {
            "aggregations": {
                "products_per_day": {
                    "buckets": [{"key_as_string": "2025-01-02T00:00:00.000Z", "doc_count": 3}]
                },
                "top_title_terms": {"buckets": [{"key": "python", "doc_count": 2}]},
                "image_fetch_outcomes": {"buckets": [{"key": "ok", "doc_count": 3}]},
            }
        }
    ]
    body = client.get("/api/stats").json()
    assert body == {
        "products_per_day": [{"day": "2025-01-02", "count": 3}],
        "top_title_terms": [{"term": "python", "count": 2}],
        "image_fetch_outcomes": {"ok": 3},
    }
    aggs = fake_es.bodies()[0]["aggs"]
    assert aggs["products_per_day"]["date_histogram"]["interval"] == "day"


@pytest.mark.django_db
def test_reindex_builds_a_new_index_and_swaps_the_alias_atomically(fake_es, store):
    from catalogue import tasks  # noqa: PLC0415

    tasks.insert_product.run(
        {
            "id": "6f1c0a52-34c6-4b6d-9a41-5b3c2f0e8d11",
            "title": "Python",
            "image_url": "https://example.org/a.png",
            "submitted_at": "2025-01-01T00:00:00+00:00",
        }
    )
    fake_es.aliases["products"] = ["products-old"]
    call_command("reindex")
    [(new_index, definition)] = fake_es.called("create_index")
    assert definition is mappings.INDEX_DEFINITION
    [(index, docs)] = fake_es.called("bulk_index")
    assert index == new_index
    assert [doc_id for doc_id, _ in docs] == ["6f1c0a52-34c6-4b6d-9a41-5b3c2f0e8d11"]
    [(actions,)] = fake_es.called("update_aliases")
    assert actions == [
        {"remove": {"index": "products-old", "alias": "products"}},
        {"add": {"index": new_index, "alias": "products"}},
    ]
    assert fake_es.called("delete_index") == [("products-old",)]


# -- the REST layer itself, against a fake HTTP session ----------------------------------------


def test_client_sends_json_with_timeout_and_parses_hits():
    session = Session(
        Reply(200, {"hits": {"total": 1, "hits": [{"_id": "a", "_score": 2.0, "_source": {}}]}})
    )
    client = ElasticsearchClient("http://es:9200/", timeout=1.5, session=session)
    result = client.search("products", {"query": {"match_all": {}}})
    assert result["total"] == 1
    method, url, kwargs = session.sent[0]
    assert (method, url, kwargs["timeout"]) == ("POST", "http://es:9200/products/_search", 1.5)
    assert json.loads(kwargs["data"]) == {"query": {"match_all": {}}}


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (requests.ConnectionError("refused"), SearchUnavailable),
        (Reply(503, {"error": "unavailable"}), SearchUnavailable),
        (Reply(400, {"error": "parse"}), SearchError),
    ],
)
def test_client_separates_outages_from_bad_requests(reply, error):
    client = ElasticsearchClient("http://es:9200", session=Session(reply))
    with pytest.raises(error):
        client.search("products", {})


def test_client_bulk_sends_ndjson():
    session = Session(Reply(200, {"errors": False, "items": []}))
    client = ElasticsearchClient("http://es:9200", session=session)
    assert client.bulk_index("products-1", [("a", {"title": "A"})]) == 1
    _, _, kwargs = session.sent[0]
    assert kwargs["headers"]["Content-Type"] == "application/x-ndjson"
    lines = kwargs["data"].splitlines()
    assert json.loads(lines[0]) == {
        "index": {"_index": "products-1", "_type": "product", "_id": "a"}
    }


def test_client_counts_the_documents_a_bulk_request_created():
    items = [
        {"index": {"_id": "a", "result": "created"}},
        {"index": {"_id": "b", "result": "updated"}},
    ]
    session = Session(Reply(200, {"errors": False, "items": items}))
    client = ElasticsearchClient("http://es:9200", session=session)
    assert client.index_documents("products", [("a", {"title": "A"}), ("b", {"title": "B"})]) == 1
    assert len(session.sent) == 1


@pytest.mark.parametrize(
    ("status", "error"), [(429, SearchUnavailable), (503, SearchUnavailable), (400, SearchError)]
)
def test_a_bulk_item_refused_for_now_is_an_outage_and_a_bad_one_an_error(status, error):
    """A full bulk queue (429) passes: the task retries; a document Elasticsearch rejects is a
    bug."""
    items = [
        {"index": {"_id": "a", "result": "created", "status": 201}},
        {"index": {"_id": "b", "status": status, "error": {"type": "x"}}},
    ]
    session = Session(Reply(200, {"errors": True, "items": items}))
    client = ElasticsearchClient("http://es:9200", session=session)
    with pytest.raises(error):
        client.index_documents("products", [("a", {"title": "A"}), ("b", {"title": "B"})])


def test_client_reports_a_missing_alias_as_no_targets():
    session = Session(Reply(404, {"error": "alias [products] missing", "status": 404}))
    client = ElasticsearchClient("http://es:9200", session=session)
    assert client.alias_targets("products") == []


@pytest.mark.django_db
def test_reindex_if_changed_keeps_an_index_built_from_the_same_mapping(fake_es, store):
    current = f"products-{indexer.definition_hash()}-20250101000000000000"
    fake_es.aliases["products"] = [current]
    call_command("reindex", "--if-changed")
    assert fake_es.called("create_index") == []
    assert fake_es.called("update_aliases") == []


@pytest.mark.django_db
def test_reindex_if_changed_rebuilds_when_the_mapping_differs(fake_es, store):
    fake_es.aliases["products"] = ["products-0123456789-20250101000000000000"]
    call_command("reindex", "--if-changed")
    [(new_index, _)] = fake_es.called("create_index")
    assert new_index.startswith(f"products-{indexer.definition_hash()}-")
    assert fake_es.called("delete_index") == [("products-0123456789-20250101000000000000",)]
