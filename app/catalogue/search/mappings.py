"""The one definition of the products index: analysis and mapping (Elasticsearch 5.6)."""

from __future__ import annotations

from typing import Any

from .client import DOC_TYPE

AUTOCOMPLETE_MIN_GRAM = 1
AUTOCOMPLETE_MAX_GRAM = 20

INDEX_DEFINITION: dict[str, Any] = {
    "settings": {
        "number_of_shards": 1,
        "number_of_replicas": 0,
        "analysis": {
            "filter": {
                "autocomplete_edge_ngram": {
                    "type": "edge_ngram",
                    "min_gram": AUTOCOMPLETE_MIN_GRAM,
                    "max_gram": AUTOCOMPLETE_MAX_GRAM,
                },
                "english_stop": {"type": "stop", "stopwords": "_english_"},
            },
            "analyzer": {
                # Index time: every prefix (1-20 chars) of every word of the title.
                "autocomplete": {
                    "type": "custom",
                    "tokenizer": "standard",
                    "filter": ["lowercase", "asciifolding", "autocomplete_edge_ngram"],
                },
                # Query time: the words as typed, so "pyt" matches the indexed prefix "pyt".
                "autocomplete_search": {
                    "type": "custom",
                    "tokenizer": "standard",
                    "filter": ["lowercase", "asciifolding"],
                },
                "title_terms": {
                    "type": "custom",
                    "tokenizer": "standard",
                    "filter": ["lowercase", "english_stop"],
                },
            },
        },
    },
    "mappings": {
        DOC_TYPE: {
            "dynamic": "strict",
            "properties": {
                "title": {
                    "type": "text",
                    "analyzer": "standard",
                    "fields": {
                        "autocomplete": {
                            "type": "text",
                            "analyzer": "autocomplete",
                            "search_analyzer": "autocomplete_search",
                        },
                        # For the "top title terms" aggregation (stop words left out).
                        "terms": {"type": "text", "analyzer": "title_terms", "fielddata": True},
                        "raw": {"type": "keyword", "ignore_above": 256},
                    },
                },
                "description": {"type": "text", "analyzer": "standard"},
                "image_url": {"type": "keyword", "index": False},
                "popularity": {"type": "integer"},
                "created_at": {"type": "date"},
                "updated_at": {"type": "date"},
                "image_status": {"type": "keyword"},
                "image_outcome": {"type": "keyword"},
            },
        }
    },
}
