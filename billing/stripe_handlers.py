"""Imported by billing.webhooks to register every Stripe event handler.

Each module below registers its handlers with ``@webhooks.handler("<event type>")``.
"""
# top-ups, refunds, disputes; subscriptions: customer.subscription.*, invoice.paid
from . import disputes, refunds, subscriptions, topups  # noqa: F401
