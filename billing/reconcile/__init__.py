"""Reconciliation: does the money add up, to the micro-unit, for one UTC day?

1. ledger invariants (``ledger``), 2. usage against the ledger (``usage``),
3. the ledger against Stripe (``stripe_side``); stored as runs with discrepancies
(``runs``), a dropped webhook's credit applied once (``heal``), figures for the
finance console (``reports``). Entry points: ``reconcile_run``, the ``reconcile``
management command, the Celery tasks in ``billing.tasks``.
"""
from .heal import CannotHeal, discrepancy_heal
from .runs import (
    day_bounds,
    discrepancy_close,
    open_count,
    reconcile_run,
    run_heal,
    run_refresh,
)

__all__ = [
    "CannotHeal", "day_bounds", "discrepancy_close", "discrepancy_heal", "open_count", "reconcile_run", "run_heal",
    "run_refresh",
]
