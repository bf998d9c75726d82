"""Imported by billing.webhooks to register every Stripe event handler.

Each module below registers its handlers with ``@webhooks.handler("<event type>")``.
"""
# top-ups, auto-recharge, refunds, disputes; subscriptions: customer.subscription.*, invoice.paid
from . import disputes, recharge, refunds, subscriptions, topups  # noqa: F401
