"""Make or update an account that may add products through the page, or remove it.

    catalogue-manage catalogue_user NAME < password-file     create, or set the password
    catalogue-manage catalogue_user NAME --remove            delete the account

The password is read from the first line of standard input, so it is neither in a process list
nor in the shell's history, and it must pass the settings' AUTH_PASSWORD_VALIDATORS. Accounts
made here are ordinary users (no staff, no superuser: the app has no admin site). The last line
printed is JSON, `{"changed": true|false}`, for Ansible; a second run with the same password
changes nothing.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--remove", action="store_true", help="delete the account")

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        name = options["name"]
        if options["remove"]:
            deleted, _ = users.objects.filter(username=name).delete()
            self.stdout.write(json.dumps({"changed": deleted > 0}))
            return
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("no password on standard input")
        with transaction.atomic():
            user, created = users.objects.select_for_update().get_or_create(username=name)
            try:
                validate_password(password, user)
            except ValidationError as exc:
                raise CommandError(f"{name}: {' '.join(exc.messages)}") from exc
            changed = created or not user.check_password(password) or not user.is_active
            if changed:
                user.set_password(password)
                user.is_active = True
                user.save()
        self.stdout.write(json.dumps({"changed": changed}))
