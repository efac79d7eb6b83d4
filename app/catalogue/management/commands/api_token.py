"""Make an API token: prints the token (for the client, or the vault) and the entry for
CATALOGUE_API_TOKEN_HASHES (what the app is configured with)."""

from __future__ import annotations

import secrets

from django.core.management.base import BaseCommand

from catalogue.auth import digest


class Command(BaseCommand):
    help = "Print a new random API token and its CATALOGUE_API_TOKEN_HASHES entry."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="who the token is for, e.g. importer")

    def handle(self, *args, **options) -> None:
        token = secrets.token_urlsafe(32)
        self.stdout.write(f"token: {token}\nentry: {options['name']}:{digest(token)}\n")
