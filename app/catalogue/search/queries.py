"""Query bodies and the search strategies built from them (pure functions plus one client)."""

from __future__ import annotations

from typing import Any, TypedDict

from .client import ElasticsearchClient, SearchResult

TITLE_BOOST = 2  # title weighs twice the description
SUGGESTION_BOOST = 0.5  # likely spellings rank below the user's own words
PHRASE_BOOST = 3  # a phrase match outranks loose term matches
SUGGESTIONS_PER_WORD = 3
SEARCH_FIELDS = [f"title^{TITLE_BOOST}", "description"]
SUGGESTER = "spelling"


def phrase_query(q: str, size: int = 20) -> dict[str, Any]:
    """Round 1: the phrase as typed, plus term suggestions for each word in the same request."""
    return {
        "size": size,
        "query": {
            "multi_match": {
                "query": q,
                "type": "phrase",
                "fields": SEARCH_FIELDS,
                "boost": PHRASE_BOOST,
            }
        },
        "suggest": {
            "text": q,
            SUGGESTER: {
                "term": {
                    "field": "title",
                    "suggest_mode": "missing",
                    "size": SUGGESTIONS_PER_WORD,
                    "prefix_length": 1,
                    "min_word_length": 3,
                }
            },
        },
    }


def suggested_words(suggest: dict[str, Any]) -> list[str]:
    """Flatten a term-suggester answer into the distinct suggested words, best first."""
    words: list[str] = []
    for entry in suggest.get(SUGGESTER, []):
        for option in entry.get("options", []):
            if option["text"] not in words:
                words.append(option["text"])
    return words


def term_query(q: str, suggestions: list[str], size: int = 20) -> dict[str, Any]:
    """Round 2 (the phrase found nothing): any of the user's words, widened by suggestions."""
    should: list[dict[str, Any]] = [
        {"multi_match": {"query": q, "type": "best_fields", "fields": SEARCH_FIELDS, "boost": 1}}
    ]
    if suggestions:
        should.append(
            {
                "multi_match": {
                    "query": " ".join(suggestions),
                    "type": "best_fields",
                    "fields": SEARCH_FIELDS,
                    "boost": SUGGESTION_BOOST,
                }
            }
        )
    return {"size": size, "query": {"bool": {"should": should, "minimum_should_match": 1}}}


def autocomplete_query(q: str, size: int = 10) -> dict[str, Any]:
    """Edge n-gram prefixes of the title: best match first, then the most popular."""
    return {
        "size": size,
        "_source": ["title", "popularity"],
        "query": {"match": {"title.autocomplete": {"query": q, "operator": "and"}}},
        "sort": [{"_score": {"order": "desc"}}, {"popularity": {"order": "desc"}}],
    }


def stats_query(top_terms: int = 10) -> dict[str, Any]:
    return {
        "size": 0,
        "aggs": {
            "products_per_day": {
                "date_histogram": {"field": "created_at", "interval": "day", "min_doc_count": 0}
            },
            "top_title_terms": {"terms": {"field": "title.terms", "size": top_terms}},
            "image_fetch_outcomes": {"terms": {"field": "image_outcome", "size": 10}},
        },
    }


class SearchAnswer(TypedDict):
    query: str
    mode: str  # "phrase", "term" or "empty"
    suggestions: list[str]
    total: int
    results: list[dict[str, Any]]


def _results(result: SearchResult) -> list[dict[str, Any]]:
    return [{"id": hit["id"], "score": hit["score"], **hit["source"]} for hit in result["hits"]]


def search(client: ElasticsearchClient, index: str, q: str, size: int = 20) -> SearchAnswer:
    """Phrase first; if it finds nothing, the words and their likely spellings."""
    q = q.strip()
    if not q:
        return {"query": q, "mode": "empty", "suggestions": [], "total": 0, "results": []}
    first = client.search(index, phrase_query(q, size))
    suggestions = suggested_words(first["suggest"])
    if first["total"] > 0:
        return {
            "query": q,
            "mode": "phrase",
            "suggestions": suggestions,
            "total": first["total"],
            "results": _results(first),
        }
    second = client.search(index, term_query(q, suggestions, size))
    return {
        "query": q,
        "mode": "term",
        "suggestions": suggestions,
        "total": second["total"],
        "results": _results(second),
    }


def autocomplete(client: ElasticsearchClient, index: str, q: str) -> list[dict[str, Any]]:
    result = client.search(index, autocomplete_query(q))
    return [{"id": hit["id"], **hit["source"]} for hit in result["hits"]]


def stats(client: ElasticsearchClient, index: str) -> dict[str, Any]:
    aggs = client.search(index, stats_query())["aggregations"]
    return {
        "products_per_day": [
            {"day": bucket["key_as_string"][:10], "count": bucket["doc_count"]}
            for bucket in aggs.get("products_per_day", {}).get("buckets", [])
        ],
        "top_title_terms": [
            {"term": bucket["key"], "count": bucket["doc_count"]}
            for bucket in aggs.get("top_title_terms", {}).get("buckets", [])
        ],
        "image_fetch_outcomes": {
            bucket["key"]: bucket["doc_count"]
            for bucket in aggs.get("image_fetch_outcomes", {}).get("buckets", [])
        },
    }
