"""Rebuild the search index from PostgreSQL into a new index, then swap the alias to it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalogue import autocomplete_cache
from catalogue.search import indexer
from catalogue.search.client import SearchError, SearchUnavailable, get_client


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--keep-old", action="store_true", help="keep the indices the alias pointed at"
        )
        parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        client = get_client(timeout=options["timeout"])
        alias = indexer.alias_name()
        try:
            result = indexer.rebuild(client, alias, keep_old=options["keep_old"])
        except (SearchError, SearchUnavailable) as exc:
            raise CommandError(f"reindex failed, alias {alias} unchanged: {exc}") from exc
        autocomplete_cache.bump()  # the alias now shows a new index: no cached answer holds
        previous = ", ".join(result["previous"]) or "nothing"
        self.stdout.write(
            self.style.SUCCESS(
                f"indexed {result['documents']} products into {result['index']}; "
                f"alias {alias} moved from {previous}"
            )
        )
