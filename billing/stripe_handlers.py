"""Imported by billing.webhooks to register every Stripe event handler.

Each module below registers its handlers with ``@webhooks.handler("<event type>")``.
"""
from . import disputes, refunds, topups  # noqa: F401  (top-ups, refunds, disputes)
from . import subscriptions  # noqa: F401  customer.subscription.*, invoice.paid
