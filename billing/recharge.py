"""Auto-recharge: charge the saved card when available credit falls below a threshold.

Once per threshold crossing, whatever runs twice:

* ``auto_recharge_scan`` (Celery beat) finds enabled, armed accounts whose customer
  wallet's available (balance + credit_limit - reserved) is below the threshold and
  claims each under the wallet's row lock with a conditional UPDATE (armed → false,
  crossings + 1). Only the claim that changed the row creates that crossing's
  ``RechargeAttempt`` and, on commit, queues ``recharge_charge``: two scans or two
  workers racing make one attempt.
* ``recharge_charge`` creates the PaymentIntent (off_session, confirm) with the
  attempt's idempotency key (``auto-recharge:<account>:<crossing>``): a retried task
  gets Stripe's first answer again, never a second charge.
* The credit lands only from the verified ``payment_intent.succeeded`` webhook, through
  ``credit_payment_intent`` (reference "pi:<id>": any number of deliveries, one
  credit). It re-arms the account in the same transaction if available is back at or
  above the threshold; the scan re-arms too (after a manual top-up or a grant).
* A decline (answered at creation, or ``payment_intent.payment_failed``) marks the
  attempt failed and leaves the account disarmed: the card is not tried again until
  available recovers or the settings are saved again (e.g. after changing the card).

Money: Stripe charges cents, the ledger counts micro-units (1 cent = 10,000). Amounts
are whole cents by validation, so the two convert exactly (billing.stripe_client).
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping

import stripe
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from . import services, stripe_client, webhooks
from .models import BillingAccount, RechargeAttempt, Transfer, Wallet
from .topups import format_amount

log = logging.getLogger(__name__)

PURPOSE = "auto_recharge"  # PaymentIntent metadata["purpose"]
CURRENCY = "usd"  # accounts open their wallets in usd (billing.services.account_open)
# A charge that Stripe has not answered (network, outage) is sent again with the
# same idempotency key by the scan after RESEND_AFTER; Stripe keeps keys for 24 h,
# so past GIVE_UP_AFTER it is marked failed instead (reconciliation finds a charge
# that did go through, and its webhook credits it regardless).
RESEND_AFTER = dt.timedelta(minutes=10)
GIVE_UP_AFTER = dt.timedelta(hours=23)
IN_FLIGHT = (RechargeAttempt.Status.PENDING, RechargeAttempt.Status.PROCESSING)


class RechargeError(ValueError):
    """Auto-recharge settings that cannot be saved; the message says why."""


class NotARecharge(ValueError):
    """A payment intent that is not an auto-recharge (a Checkout top-up, another integration)."""


class RechargeRefused(ValueError):
    """An auto-recharge payment intent whose credit must not happen (unknown account, another
    customer, a currency without a wallet): stored as failed for reconciliation to show."""


# --- settings ------------------------------------------------------------------------------------


def saved_payment_method(*, account: BillingAccount) -> str | None:
    """The customer's saved card in Stripe: its default payment method, else the newest
    card attached to it (a Checkout top-up with setup_future_usage attaches one)."""
    if not account.stripe_customer_id:
        return None
    api = stripe_client.client().v1
    customer = api.customers.retrieve(account.stripe_customer_id).to_dict()
    default = (customer.get("invoice_settings") or {}).get("default_payment_method")
    if default:
        return default if isinstance(default, str) else default["id"]
    cards = api.payment_methods.list(params={"customer": account.stripe_customer_id, "type": "card", "limit": 100})
    newest = max(cards.data, key=lambda pm: (pm.created or 0, pm.id), default=None)
    return newest.id if newest is not None else None


def _check_payment_method(*, account: BillingAccount, payment_method: str) -> None:
    if not account.stripe_customer_id:
        raise RechargeError("Make a top-up with a card first: auto-recharge charges a card saved with Stripe.")
    try:
        pm = stripe_client.client().v1.payment_methods.retrieve(payment_method).to_dict()
    except stripe.InvalidRequestError:
        raise RechargeError("That card is not known to Stripe.") from None
    customer = pm.get("customer")
    customer = customer if isinstance(customer, str) or customer is None else customer["id"]
    if customer != account.stripe_customer_id:
        raise RechargeError("That card is not saved for this organization.")


def _check_amounts(*, threshold: int, amount: int) -> None:
    for name, value in (("threshold", threshold), ("amount", amount)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise RechargeError(f"The {name} is an integer number of micro-units.")
    if threshold < 0:
        raise RechargeError("The threshold cannot be negative.")
    if threshold > settings.TOPUP_MAX:
        raise RechargeError(f"The threshold can be at most {format_amount(settings.TOPUP_MAX, CURRENCY)}.")
    if not settings.TOPUP_MIN <= amount <= settings.TOPUP_MAX:
        raise RechargeError(
            f"The recharge amount must be between {format_amount(settings.TOPUP_MIN, CURRENCY)} and "
            f"{format_amount(settings.TOPUP_MAX, CURRENCY)}."
        )
    try:
        stripe_client.to_minor(amount, CURRENCY)
    except ValueError:
        raise RechargeError("The recharge amount must be whole cents.") from None


def auto_recharge_configure(
    *,
    account: BillingAccount,
    enabled: bool,
    threshold: int,
    amount: int,
    payment_method: str | None = None,
    user=None,
) -> BillingAccount:
    """Save the account's auto-recharge settings (micro-units); bad input raises
    ``RechargeError`` and changes nothing.

    Enabling needs a card: ``payment_method`` (which must be saved for this customer
    in Stripe) or, by default, the customer's saved card (``saved_payment_method``).
    Saving re-arms the account (the customer may just have replaced a declined card),
    unless a charge is in flight: that crossing is not over yet.
    """
    _check_amounts(threshold=threshold, amount=amount)
    # Stripe is read before the transaction: nothing is held while it answers.
    if payment_method:
        _check_payment_method(account=account, payment_method=payment_method)
    elif enabled:
        payment_method = saved_payment_method(account=account)
        if payment_method is None:
            raise RechargeError(
                "No saved card: make a top-up with a card first, auto-recharge charges that card."
            )
    with transaction.atomic():
        locked = BillingAccount.objects.select_for_update().get(id=account.id)
        in_flight = locked.recharge_attempts.filter(status__in=IN_FLIGHT).exists()
        locked.auto_recharge_enabled = bool(enabled)
        locked.auto_recharge_threshold = threshold
        locked.auto_recharge_amount = amount
        if payment_method:
            locked.auto_recharge_payment_method = payment_method
        locked.auto_recharge_armed = not in_flight
        locked.save(update_fields=[
            "auto_recharge_enabled", "auto_recharge_threshold", "auto_recharge_amount",
            "auto_recharge_payment_method", "auto_recharge_armed",
        ])
    log.info(
        "auto-recharge of account %s set by user %s: enabled=%s threshold=%s amount=%s",
        account.id, getattr(user, "pk", None), enabled, threshold, amount,
    )
    for field in ("auto_recharge_enabled", "auto_recharge_threshold", "auto_recharge_amount",
                  "auto_recharge_payment_method", "auto_recharge_armed"):
        setattr(account, field, getattr(locked, field))
    return account


# --- the scan and the charge ---------------------------------------------------------------------


def _available():
    return F("balance") + F("credit_limit") - F("reserved")


def auto_recharge_scan(*, now: dt.datetime | None = None, limit: int = 500) -> dict[str, int]:
    """Re-arm recovered accounts, claim the ones below their threshold, resend stale charges."""
    now = now or timezone.now()
    rearmed = (
        BillingAccount.objects.filter(auto_recharge_enabled=True, auto_recharge_armed=False)
        .filter(Exists(
            Wallet.objects.filter(account=OuterRef("pk"), kind=Wallet.Kind.CUSTOMER, currency=CURRENCY)
            .annotate(available=_available())
            .filter(available__gte=OuterRef("auto_recharge_threshold"))
        ))
        .update(auto_recharge_armed=True)
    )
    below = list(
        Wallet.objects.filter(
            kind=Wallet.Kind.CUSTOMER, currency=CURRENCY,
            account__auto_recharge_enabled=True, account__auto_recharge_armed=True,
        )
        .annotate(available=_available())
        .filter(available__lt=F("account__auto_recharge_threshold"))
        .order_by("account_id")
        .values_list("account_id", flat=True)[:limit]
    )
    claimed = sum(1 for account_id in below if _claim(account_id=account_id) is not None)
    return {"rearmed": rearmed, "claimed": claimed, "resent": _resend_stale(now=now)}


@transaction.atomic
def _claim(*, account_id: int) -> RechargeAttempt | None:
    # The customer wallet first (the lock order of settlement and transfer_post), so
    # available cannot change between the check and the claim.
    wallet = Wallet.objects.select_for_update().get(account_id=account_id, kind=Wallet.Kind.CUSTOMER, currency=CURRENCY)
    claimed = (
        BillingAccount.objects.filter(
            id=account_id, auto_recharge_enabled=True, auto_recharge_armed=True,
            auto_recharge_threshold__gt=wallet.available, auto_recharge_amount__gt=0,
        )
        .exclude(auto_recharge_payment_method="")
        .update(auto_recharge_armed=False, auto_recharge_crossings=F("auto_recharge_crossings") + 1)
    )
    if claimed != 1:
        return None  # another scan claimed it, or it changed meanwhile
    account = BillingAccount.objects.get(id=account_id)
    attempt = RechargeAttempt.objects.create(
        account=account, crossing=account.auto_recharge_crossings, amount=account.auto_recharge_amount,
        currency=wallet.currency, payment_method=account.auto_recharge_payment_method,
    )
    _queue_charge(attempt.id)
    log.info("auto-recharge claimed: account %s crossing %s (available %s < %s)",
             account_id, attempt.crossing, wallet.available, account.auto_recharge_threshold)
    return attempt


def _queue_charge(attempt_id: int) -> None:
    from .tasks import auto_recharge_charge

    # robust: a broker (or, eagerly, Stripe) failing for one account must not stop the
    # scan for the others; the attempt stays pending and the scan resends it later.
    transaction.on_commit(lambda: auto_recharge_charge.delay(attempt_id), robust=True)


def _resend_stale(*, now: dt.datetime) -> int:
    stale = RechargeAttempt.objects.filter(status=RechargeAttempt.Status.PENDING, created_at__lt=now - RESEND_AFTER)
    stale.filter(created_at__lt=now - GIVE_UP_AFTER).update(
        status=RechargeAttempt.Status.FAILED, error="Stripe did not confirm the charge within a day."
    )
    ids = list(stale.filter(created_at__gte=now - GIVE_UP_AFTER).values_list("id", flat=True)[:100])
    for attempt_id in ids:
        _queue_charge(attempt_id)  # outside a transaction on_commit runs now
    return len(ids)


def recharge_charge(*, attempt_id: int) -> RechargeAttempt:
    """Create (or, on a retry, fetch again through its idempotency key) the attempt's
    PaymentIntent. Network and Stripe-side errors propagate for the task to retry; a
    decline marks the attempt failed. Never credits: that is the webhook's job."""
    attempt = RechargeAttempt.objects.select_related("account").get(id=attempt_id)
    if attempt.status != RechargeAttempt.Status.PENDING:
        return attempt
    account = attempt.account
    if not account.auto_recharge_enabled:
        RechargeAttempt.objects.filter(id=attempt.id, status=RechargeAttempt.Status.PENDING).update(
            status=RechargeAttempt.Status.CANCELED, error="Auto-recharge was switched off before the charge.",
            updated_at=timezone.now(),
        )
        attempt.refresh_from_db()
        return attempt
    params = {
        "amount": stripe_client.to_minor(attempt.amount, attempt.currency),
        "currency": attempt.currency,
        "customer": account.stripe_customer_id,
        "payment_method": attempt.payment_method,
        "off_session": True,
        "confirm": True,
        "metadata": {
            "account_id": str(account.id),
            "amount_micros": str(attempt.amount),
            "purpose": PURPOSE,
            "crossing": str(attempt.crossing),
        },
    }
    try:
        pi = stripe_client.client().v1.payment_intents.create(
            params=params, options={"idempotency_key": attempt.idempotency_key}
        ).to_dict()
    except stripe.CardError as exc:
        failed = ((exc.json_body or {}).get("error") or {}).get("payment_intent") or {}
        pi_id = failed.get("id", "") if isinstance(failed, dict) else str(failed)
        return _fail(attempt, error=exc.user_message or str(exc), payment_intent=pi_id)
    except (stripe.InvalidRequestError, stripe.IdempotencyError, stripe.PermissionError) as exc:
        if exc.http_status == 409:
            raise  # the same key is in flight elsewhere (a resend racing the first try): retry later
        # Permanent: the card or the customer is gone, or the request is wrong. Not retried.
        return _fail(attempt, error=exc.user_message or str(exc))
    if pi["status"] in ("succeeded", "processing", "requires_capture"):
        RechargeAttempt.objects.filter(id=attempt.id, status=RechargeAttempt.Status.PENDING).update(
            status=RechargeAttempt.Status.PROCESSING, payment_intent=pi["id"], updated_at=timezone.now()
        )
    elif pi["status"] == "requires_action":
        _fail(attempt, error="The bank asks the cardholder to confirm this payment (3-D Secure); "
                             "an unattended recharge cannot.", payment_intent=pi["id"])
    else:
        _fail(attempt, error=_last_error(pi) or f"The payment is {pi['status']}.", payment_intent=pi["id"])
    attempt.refresh_from_db()
    return attempt


def _fail(attempt: RechargeAttempt, *, error: str, payment_intent: str = "") -> RechargeAttempt:
    values = {"status": RechargeAttempt.Status.FAILED, "error": error[:2000], "updated_at": timezone.now()}
    if payment_intent:
        values["payment_intent"] = payment_intent
    RechargeAttempt.objects.filter(id=attempt.id, status__in=IN_FLIGHT).update(**values)
    log.warning("auto-recharge of account %s crossing %s failed: %s", attempt.account_id, attempt.crossing, error)
    attempt.refresh_from_db()
    return attempt


def _last_error(pi: Mapping) -> str:
    error = pi.get("last_payment_error") or {}
    return error.get("message") or error.get("code") or ""


# --- money in: the webhook ---------------------------------------------------------------------


def _recharge_metadata(payment_intent: Mapping) -> tuple[BillingAccount, int | None]:
    metadata = payment_intent.get("metadata") or {}
    if metadata.get("purpose") != PURPOSE:
        raise NotARecharge(f"payment intent {payment_intent.get('id')} is not an auto-recharge")
    try:
        account = BillingAccount.objects.get(id=int(metadata.get("account_id", "")))
    except (ValueError, BillingAccount.DoesNotExist):
        raise RechargeRefused(
            f"payment intent {payment_intent.get('id')} names no account of ours ({metadata.get('account_id')!r})"
        ) from None
    customer = payment_intent.get("customer")
    customer = customer["id"] if isinstance(customer, Mapping) else customer
    if account.stripe_customer_id and customer != account.stripe_customer_id:
        raise RechargeRefused(
            f"payment intent {payment_intent.get('id')} is for customer {customer}, not account {account.id}'s"
        )
    crossing = metadata.get("crossing")
    return account, int(crossing) if str(crossing or "").isdigit() else None


def credit_payment_intent(*, payment_intent: Mapping, source: str) -> tuple[Transfer | None, bool]:
    """Credit a succeeded auto-recharge PaymentIntent once: (transfer, credited now?).

    Reference "pi:<id>", kind topup, stripe_object the payment intent: a second
    delivery, or reconciliation healing a dropped webhook, returns the first credit.
    None if it has not succeeded. The amount credited is what Stripe received.
    Raises ``NotARecharge`` for another kind of payment, ``RechargeRefused`` for one that
    must not be credited.
    """
    if payment_intent.get("status") != "succeeded":
        return None, False
    account, crossing = _recharge_metadata(payment_intent)
    pi_id = payment_intent["id"]
    currency = str(payment_intent.get("currency") or "").lower()
    received = payment_intent.get("amount_received")
    received = payment_intent.get("amount") if received is None else received
    if not isinstance(received, int) or received <= 0:
        raise RechargeRefused(f"payment intent {pi_id} received no amount ({received!r})")
    with transaction.atomic():
        wallet = (
            Wallet.objects.select_for_update()
            .filter(account=account, kind=Wallet.Kind.CUSTOMER, currency=currency)
            .first()
        )
        if wallet is None:
            raise RechargeRefused(f"payment intent {pi_id} is in {currency!r}, account {account.id} has no such wallet")
        funding = services.wallet(account_id=account.id, currency=currency, kind=Wallet.Kind.FUNDING)
        label = f"Auto-recharge #{crossing}" if crossing is not None else "Auto-recharge"
        transfer, created = services.transfer_post(
            kind=Transfer.Kind.TOPUP, debit_wallet=funding, credit_wallet=wallet,
            amount=stripe_client.to_micros(received, currency), reference=f"pi:{pi_id}",
            description=f"{label} ({source})", stripe_object=pi_id,
        )
        if created:
            if crossing is not None:
                RechargeAttempt.objects.filter(account=account, crossing=crossing).update(
                    status=RechargeAttempt.Status.SUCCEEDED, payment_intent=pi_id, transfer=transfer, error="",
                    updated_at=timezone.now(),
                )
            wallet.refresh_from_db(fields=["balance", "reserved", "credit_limit"])
            # Re-armed here, not only by the next scan: spending that crosses again
            # before the scan runs is then a new crossing, not a missed one.
            BillingAccount.objects.filter(
                id=account.id, auto_recharge_armed=False, auto_recharge_threshold__lte=wallet.available
            ).update(auto_recharge_armed=True)
            log.info("auto-recharge %s credited %s to account %s (%s)", pi_id, transfer.amount, account.id, source)
    return transfer, created


def payment_failure_record(*, payment_intent: Mapping, source: str) -> RechargeAttempt | None:
    """Mark the crossing's attempt failed with Stripe's reason; the account stays disarmed
    (no retry loop). A later success of the same payment intent still credits it."""
    account, crossing = _recharge_metadata(payment_intent)
    attempt = RechargeAttempt.objects.filter(account=account, crossing=crossing).first() if crossing else None
    if attempt is None:
        return None
    pi_id = payment_intent.get("id") or ""
    # The charge task usually saw the decline first (and Stripe's error may not name the
    # payment intent): fill that in, keep its reason.
    RechargeAttempt.objects.filter(id=attempt.id, payment_intent="").update(payment_intent=pi_id)
    log.info("auto-recharge %s failed (%s)", pi_id, source)
    return _fail(attempt, error=_last_error(payment_intent) or "The card was declined.", payment_intent=pi_id)


@webhooks.handler("payment_intent.succeeded")
def on_payment_intent_succeeded(event: dict) -> str | None:
    try:
        transfer, created = credit_payment_intent(payment_intent=event["data"]["object"], source=f"webhook {event['id']}")
    except NotARecharge as why:
        raise webhooks.Ignore(str(why)) from None
    except RechargeRefused as why:
        raise webhooks.Refuse(str(why)) from None
    if transfer is not None and not created:
        return f"already credited by transfer {transfer.id}"
    return None


@webhooks.handler("payment_intent.payment_failed")
def on_payment_intent_failed(event: dict) -> str | None:
    try:
        attempt = payment_failure_record(payment_intent=event["data"]["object"], source=f"webhook {event['id']}")
    except NotARecharge as why:
        raise webhooks.Ignore(str(why)) from None
    except RechargeRefused as why:
        raise webhooks.Refuse(str(why)) from None
    if attempt is None:
        raise webhooks.Ignore("no auto-recharge attempt for this payment intent")
    return None


# --- reads ---------------------------------------------------------------------------------------


def auto_recharge_state(*, account: BillingAccount) -> dict:
    """What the console shows: the settings, whether it is armed, and recent attempts
    (a failed last attempt is why auto-recharge is paused)."""
    attempts = list(account.recharge_attempts.order_by("-crossing")[:5])
    last = attempts[0] if attempts else None
    if not account.auto_recharge_enabled:
        state = "off"
    elif last is not None and last.status in IN_FLIGHT:
        state = "charging"
    elif last is not None and last.status == RechargeAttempt.Status.FAILED and not account.auto_recharge_armed:
        state = "paused"
    else:
        state = "armed" if account.auto_recharge_armed else "waiting"
    return {
        "enabled": account.auto_recharge_enabled,
        "threshold": account.auto_recharge_threshold,
        "amount": account.auto_recharge_amount,
        "payment_method": account.auto_recharge_payment_method,
        "armed": account.auto_recharge_armed,
        "state": state,
        "last_attempt": last,
        "attempts": attempts,
    }
