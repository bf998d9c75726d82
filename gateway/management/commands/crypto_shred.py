"""Crypto-shred a project: destroy its body encryption keys (gateway.vault.project_key_destroy).

    manage.py crypto_shred proj_… --yes

Its kept request bodies and Web Chat texts can never be read again (the console says so);
its stored Responses and idempotent replays are deleted. Metadata (the request log, usage,
billing) is kept. There is no undo.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from console.models import Project
from gateway import vault


class Command(BaseCommand):
    help = "Destroy a project's body encryption keys: its stored bodies become unreadable for good."

    def add_arguments(self, parser):
        parser.add_argument("project", help="the project's public id (proj_…)")
        parser.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")

    def handle(self, *args, project, yes=False, **options):
        target = Project.objects.filter(public_id=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        if not yes:
            raise CommandError("this destroys the project's keys for good; add --yes to confirm")
        n = vault.project_key_destroy(target)
        self.stdout.write(f"project {target.public_id}: {n} key version(s) destroyed; its bodies are unreadable")
