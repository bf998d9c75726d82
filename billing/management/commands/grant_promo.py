"""Grant promotional credit to an organization: spent before paid credit, expires.

    python manage.py grant_promo --org org_… --amount-usd 10 --days 30 --reference launch-2026

Once per reference: running it again reports the first grant and changes nothing.
"""
from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing import promo
from billing.models import BillingAccount
from billing.topups import TopupError, format_amount, parse_amount


class Command(BaseCommand):
    help = "Grant promotional credit (USD) to an organization, expiring after --days."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="the organization's public id (org_…)")
        parser.add_argument("--amount-usd", required=True, help="dollars, e.g. 10 or 12.50")
        parser.add_argument("--days", type=int, required=True, help="days until it expires (1 to 3660)")
        parser.add_argument("--reference", required=True, help="unique name of this grant (makes it happen once)")
        parser.add_argument("--description", default="", help="shown to the customer next to the credit")

    def handle(self, *args, **options):
        account = BillingAccount.objects.filter(organization__public_id=options["org"]).first()
        if account is None:
            raise CommandError(f"no organization {options['org']!r} with a billing account")
        try:
            amount = parse_amount(options["amount_usd"])
        except TopupError as exc:
            raise CommandError(str(exc)) from None
        if not 1 <= options["days"] <= 3660:
            raise CommandError("--days must be between 1 and 3660")
        now = timezone.now()
        try:
            transfer = promo.promo_grant(
                account=account, amount=amount, expires_at=now + dt.timedelta(days=options["days"]),
                reference=options["reference"], description=options["description"], now=now,
            )
        except promo.PromoError as exc:
            raise CommandError(str(exc)) from None
        lot = transfer.credit_lot
        again = "" if transfer.created_at >= now else " (already granted: nothing changed)"
        self.stdout.write(
            f"granted {format_amount(transfer.amount, transfer.currency)} of promotional credit to {options['org']}, "
            f"expiring {lot.expires_at:%Y-%m-%d %H:%M} UTC, reference {transfer.reference}{again}"
        )
