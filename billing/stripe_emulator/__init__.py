"""Stripe emulator (docstring written below)."""
