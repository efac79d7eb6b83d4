"""Rebuild the search index from PostgreSQL into a new index, then swap the alias to it.

With --if-changed (what a deploy runs) nothing happens when the alias already points at an index
built from this release's settings and mapping: their hash is part of every index's name."""

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
        parser.add_argument(
            "--if-changed",
            action="store_true",
            help="only when the settings or mapping differ from the live index's",
        )
        parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        client = get_client(timeout=options["timeout"])
        alias = indexer.alias_name()
        try:
            if options["if_changed"] and indexer.is_current(client, alias):
                self.stdout.write(f"alias {alias} already has this mapping: no reindex")
                return
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
