"""``manage.py attestation_measurement allow|revoke|list``: the software nodes may run.

    manage.py attestation_measurement allow HEX [--description TEXT]
    manage.py attestation_measurement revoke HEX     # nodes verified with it stop serving at once
    manage.py attestation_measurement list
"""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nodes.attestation import services
from nodes.models import AllowedMeasurement


class Command(BaseCommand):
    help = "Manage the allow-list of node software measurements."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        allow = sub.add_parser("allow")
        allow.add_argument("value")
        allow.add_argument("--description", default="")
        sub.add_parser("revoke").add_argument("value")
        sub.add_parser("list")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            for m in AllowedMeasurement.objects.order_by("created_at"):
                self.stdout.write(f"{m.value} {'active' if m.active else 'revoked'} {m.description}\n")
            return
        try:
            value = services.normalize_measurement(options["value"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if action == "allow":
            services.measurement_allow(value=value, description=options["description"])
            self.stdout.write(f"allowed {value}\n")
            return
        measurement = AllowedMeasurement.objects.filter(value=value).first()
        if measurement is None:
            raise CommandError(f"{value} is not in the allow-list")
        taken_out = services.measurement_revoke(measurement=measurement)
        self.stdout.write(f"revoked {value}; nodes taken out of rotation: {', '.join(taken_out) or 'none'}\n")
