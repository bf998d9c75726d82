"""Rotate the keys of encrypted bodies at rest (gateway.vault), online.

    manage.py rotate_keys --master            re-wrap project keys under the current master version
    manage.py rotate_keys --project proj_…    new key version for a project, then re-wrap its data keys
    manage.py rotate_keys --project all       the same for every project that has a key

Batched and resumable: each batch commits on its own, rows already done are skipped, so an
interrupted run is finished by running it again. Until a row is re-wrapped its old key version
keeps opening it; remove an old master version from MASTER_KEYS only after --master finished.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from config import envelope
from console.models import Project
from gateway import vault
from gateway.models import ProjectKey


class Command(BaseCommand):
    help = "Re-wrap project keys under the current master key, or rotate a project's key."

    def add_arguments(self, parser):
        parser.add_argument("--master", action="store_true", help="re-wrap project keys under the current master version")
        parser.add_argument("--project", help="a project's public id (or 'all'): new key version, data keys re-wrapped")
        parser.add_argument("--resume", action="store_true",
                            help="with --project: re-wrap under the current version without creating a new one")
        parser.add_argument("--batch", type=int, default=200)

    def handle(self, *args, master=False, project=None, resume=False, batch=200, **options):
        if not master and not project:
            raise CommandError("say what to rotate: --master and/or --project <id|all>")
        if master:
            n = vault.rewrap_master(batch=batch)
            self.stdout.write(f"master: {n} project key(s) re-wrapped under master version {envelope.master().current_version}")
        if project:
            if project == "all":
                ids = ProjectKey.objects.filter(destroyed_at__isnull=True).values_list("project_id", flat=True).distinct()
                projects = list(Project.objects.filter(id__in=ids).order_by("id"))
            else:
                projects = list(Project.objects.filter(public_id=project))
                if not projects:
                    raise CommandError(f"no project {project!r}")
            for p in projects:
                version = vault.project_key_current(p)[0] if resume else vault.project_key_rotate(p)
                n = vault.rewrap_project(p, batch=batch)
                self.stdout.write(f"project {p.public_id}: key version {version}, {n} data key(s) re-wrapped")
