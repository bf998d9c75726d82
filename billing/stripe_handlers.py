"""Imported by billing.webhooks to register every Stripe event handler.

Each module below registers its handlers with ``@webhooks.handler("<event type>")``.
"""
from . import recharge  # noqa: F401  (auto-recharge payment intents)
