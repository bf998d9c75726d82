"""Imported by billing.webhooks to register every Stripe event handler.

Each module below registers its handlers with ``@webhooks.handler("<event type>")``.
"""
from . import disputes, recharge, refunds, topups  # noqa: F401  (top-ups, auto-recharge, refunds, disputes)
