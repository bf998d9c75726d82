"""Create or repair every active plan's Stripe product, monthly fee price and metered
overage price (on the billing meter for STRIPE_METER_EVENT_NAME). Safe to run again:
a second run creates nothing."""
from django.core.management.base import BaseCommand, CommandError

from billing import plans


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options):
        import stripe

        try:
            results = plans.plans_sync_to_stripe()
        except (stripe.StripeError, ValueError) as exc:
            raise CommandError(f"Stripe sync failed: {exc}") from exc
        for r in results:
            if r.skipped:
                self.stdout.write(f"{r.plan}: skipped ({r.skipped})")
                continue
            created = f"created {', '.join(r.created)}" if r.created else "up to date"
            self.stdout.write(
                f"{r.plan}: product {r.product}, fee price {r.price}, "
                f"overage price {r.meter_price or '-'} ({created})"
            )
