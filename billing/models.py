"""The ledger: integer micro-units, two-phase transfers, append-only entries.

* ``Transfer`` moves money from ``debit_wallet`` to ``credit_wallet``. Usage
  is two-phase: a ``pending`` reservation holds ``pending_amount``; settlement
  changes it once to ``posted`` with ``amount`` <= ``pending_amount``, or to
  ``voided``. That one conditional status change is what makes settlement
  idempotent. Top-ups and grants post directly.
* ``Entry`` rows are written when a transfer posts (one debit, one credit,
  summing to zero) and never change. A wallet's ``balance`` is the sum of its
  entries; ``reserved`` is the sum of its pending transfers. Both stored columns
  are checked against that derivation by ``billing.invariants``.
* ``SpendCounter`` holds a month's usage of one capped project or key, so the
  reservation can be refused in the database when it would cross the cap.
"""
from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from config.ids import new_id


class Plan(models.Model):
    """A subscription plan: monthly fee, usage credit included per period, overage.

    Limits feed the gateway: ``rpm_limit``/``tpm_limit`` cap every project of a
    subscribed organization (None: no plan limit), ``allowed_models`` lists the
    models it may use ([]: all; otherwise model_forbidden).
    """

    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    currency = models.CharField(max_length=3, default="usd")
    monthly_fee = models.BigIntegerField(default=0)  # micro-units
    included_credit = models.BigIntegerField(default=0)  # micro-units granted per paid period
    overage_enabled = models.BooleanField(default=False)
    overage_limit = models.BigIntegerField(default=0)  # postpaid credit line per period, micro-units
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    allowed_models = models.JSONField(default=list, blank=True)
    stripe_product_id = models.CharField(max_length=255, blank=True)
    stripe_price_id = models.CharField(max_length=255, blank=True)  # the monthly fee
    stripe_meter_price_id = models.CharField(max_length=255, blank=True)  # metered overage, per micro-unit
    active = models.BooleanField(default=True)
    sort = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(monthly_fee__gte=0, included_credit__gte=0, overage_limit__gte=0), name="plan_amounts_nonnegative"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class BillingAccount(models.Model):
    organization = models.OneToOneField("console.Organization", on_delete=models.PROTECT, related_name="billing_account")
    created_at = models.DateTimeField(auto_now_add=True)
    stripe_customer_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    # The effective plan (kept by the subscription webhooks); null: no plan limits.
    plan = models.ForeignKey(Plan, null=True, blank=True, on_delete=models.PROTECT, related_name="accounts")
    # Auto-recharge: when available falls below the threshold, charge the saved
    # payment method for the amount. ``auto_recharge_armed`` makes it once per
    # crossing: cleared when a charge starts, set again once available is back
    # above the threshold.
    auto_recharge_enabled = models.BooleanField(default=False)
    auto_recharge_threshold = models.BigIntegerField(default=0)
    auto_recharge_amount = models.BigIntegerField(default=0)
    auto_recharge_payment_method = models.CharField(max_length=255, blank=True)
    auto_recharge_armed = models.BooleanField(default=True)
    # Threshold crossings charged so far: the claim that disarms also counts, and
    # the count names the charge (RechargeAttempt, Stripe idempotency key).
    auto_recharge_crossings = models.PositiveIntegerField(default=0, db_default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(auto_recharge_threshold__gte=0, auto_recharge_amount__gte=0), name="account_recharge_nonnegative"
            ),
        ]


class RechargeAttempt(models.Model):
    """One auto-recharge charge: at most one per threshold crossing of an account.

    Created by the claim that disarms the account (same transaction); the charge
    task creates the Stripe PaymentIntent with ``idempotency_key``; the credit
    lands only from the verified ``payment_intent.succeeded`` webhook
    (``billing.recharge.credit_payment_intent``), which links ``transfer``.
    """

    class Status(models.TextChoices):
        PENDING = "pending"  # claimed; the PaymentIntent is not confirmed yet
        PROCESSING = "processing"  # Stripe took the charge; the credit waits for the webhook
        SUCCEEDED = "succeeded"  # credited
        FAILED = "failed"  # declined or needs the customer: auto-recharge stays paused
        CANCELED = "canceled"  # auto-recharge was switched off before the charge was made

    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="recharge_attempts")
    crossing = models.PositiveIntegerField()
    amount = models.BigIntegerField()  # micro-units
    currency = models.CharField(max_length=3, default="usd")
    payment_method = models.CharField(max_length=255)
    payment_intent = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)  # why it failed, as Stripe said it
    transfer = models.OneToOneField(
        "Transfer", null=True, blank=True, on_delete=models.PROTECT, related_name="recharge_attempt"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "crossing"], name="recharge_one_per_crossing"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="recharge_amount_positive"),
        ]
        indexes = [models.Index(fields=["payment_intent"], name="recharge_payment_intent")]

    @property
    def idempotency_key(self) -> str:
        """Stripe's key for this crossing's PaymentIntent: a retried task never charges twice."""
        return f"auto-recharge:{self.account_id}:{self.crossing}"


class Wallet(models.Model):
    class Kind(models.TextChoices):
        CUSTOMER = "customer"  # the organization's prepaid money
        USAGE = "usage"  # counterpart that collects settled spend
        FUNDING = "funding"  # counterpart that top-ups and grants come from
        RECEIVABLE = "receivable"  # what the customer owes after a refund or dispute the wallet could not cover

    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"

    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="wallets")
    currency = models.CharField(max_length=3, default="usd")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    suspended_reason = models.CharField(max_length=32, blank=True, default="", db_default="")
    balance = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)
    # Customer wallets: the part of ``balance`` that is promotional or included
    # (subscription) credit. Settlement spends it before paid credit.
    promo = models.BigIntegerField(default=0, db_default=0)
    # Scratch for settlement: what the last settlement took from ``promo``, read by
    # the next statement of the same transaction while it still holds the row lock.
    promo_last = models.BigIntegerField(default=0, db_default=0)
    # Postpaid allowance (a subscription's overage): balance may go down to
    # -credit_limit; usage below 0 is overage, billed through Stripe's meter.
    credit_limit = models.BigIntegerField(default=0, db_default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "currency", "kind"], name="wallet_one_per_kind"),
            models.CheckConstraint(condition=Q(reserved__gte=0), name="wallet_reserved_nonnegative"),
            # The reservation guard: an UPDATE that would reserve more than is
            # available fails this check and rolls its transaction back.
            models.CheckConstraint(
                condition=~Q(kind="customer") | Q(balance__gte=F("reserved") - F("credit_limit")),
                name="wallet_available_nonnegative",
            ),
            models.CheckConstraint(
                condition=Q(promo__gte=0, credit_limit__gte=0) & (Q(promo=0) | Q(promo__lte=F("balance"))),
                name="wallet_promo_within_balance",
            ),
        ]

    @property
    def available(self) -> int:
        return self.balance + self.credit_limit - self.reserved

    @property
    def paid(self) -> int:
        """The paid part of the balance (negative: overage owed)."""
        return self.balance - self.promo


class ModelPrice(models.Model):
    """Price of a model per 1M tokens in micro-units; a new row per change."""

    model = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    input_per_mtok = models.BigIntegerField()
    cached_input_per_mtok = models.BigIntegerField()
    output_per_mtok = models.BigIntegerField()
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="modelprice_version_unique"),
            models.CheckConstraint(
                condition=Q(input_per_mtok__gte=0, output_per_mtok__gte=0, cached_input_per_mtok__gte=0)
                & Q(cached_input_per_mtok__lte=F("input_per_mtok")),
                name="modelprice_sane",
            ),
        ]
        indexes = [models.Index(fields=["model", "effective_from"], name="modelprice_lookup")]


class ImagePrice(models.Model):
    """What one image of a size costs, in micro-units, under a ModelPrice version.

    A model priced per image (an image model) has a price version whose token
    prices are 0 and one row here per size it serves; a new version (a price
    change) brings its own rows, so a job keeps the version it reserved at.
    """

    price = models.ForeignKey(ModelPrice, on_delete=models.PROTECT, related_name="image_prices")
    size = models.CharField(max_length=16, help_text="<width>x<height>, e.g. 1024x1024")
    per_image = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["price", "size"], name="imageprice_one_per_size"),
            models.CheckConstraint(condition=Q(per_image__gte=0), name="imageprice_nonnegative"),
        ]


class Transfer(models.Model):
    class Kind(models.TextChoices):
        USAGE = "usage"  # two-phase: reservation, then settlement
        TOPUP = "topup"  # paid credit from Stripe (Checkout, auto-recharge)
        GRANT = "grant"  # paid-equivalent credit given by us (seed, goodwill)
        PROMO = "promo"  # promotional credit with expiry, spent first
        INCLUDED = "included"  # a subscription period's included credit, spent first, expires at period end
        PROMO_EXPIRY = "promo_expiry"  # the unspent rest of a promo/included lot, returned at expiry
        REFUND = "refund"  # reverses (part of) a top-up refunded through Stripe
        DISPUTE = "dispute"  # reverses a disputed payment
        DISPUTE_WON = "dispute_won"  # gives a dispute's reversal back
        OVERAGE_PAYMENT = "overage_payment"  # a paid invoice's metered overage, brings balance back up
        ADJUSTMENT = "adjustment"

    class Status(models.TextChoices):
        PENDING = "pending"
        POSTED = "posted"
        VOIDED = "voided"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices)
    debit_wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="debits")
    credit_wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="credits")
    pending_amount = models.BigIntegerField(default=0)
    amount = models.BigIntegerField(default=0)
    currency = models.CharField(max_length=3, default="usd")
    price = models.ForeignKey(ModelPrice, null=True, blank=True, on_delete=models.PROTECT)
    # External reference that makes a credit idempotent (e.g. a Stripe event or a seed name).
    reference = models.CharField(max_length=255, null=True, blank=True)
    request_id = models.CharField(max_length=128, null=True, blank=True)
    project = models.ForeignKey("console.Project", null=True, blank=True, on_delete=models.PROTECT)
    api_key = models.ForeignKey("console.ApiKey", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # Usage only: the calendar month (UTC, "YYYY-MM") whose spend counters this
    # transfer belongs to, and whether its pending amount is held in the
    # project's / the key's counter (so settle and void release exactly that).
    spend_period = models.CharField(max_length=7, blank=True, default="", db_default="")
    counted_project = models.BooleanField(default=False, db_default=False)
    counted_key = models.BooleanField(default=False, db_default=False)
    model = models.CharField(max_length=200, blank=True)
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    description = models.CharField(max_length=255, blank=True)
    # Usage: the part paid from promo credit, and the part that went below a zero
    # balance (postpaid overage, reported to Stripe from MeterOutbox).
    promo_amount = models.BigIntegerField(default=0, db_default=0)
    overage_amount = models.BigIntegerField(default=0, db_default=0)
    # The Stripe object behind a credit or debit (checkout session, payment
    # intent, refund, dispute, invoice), for reconciliation.
    stripe_object = models.CharField(max_length=255, blank=True, default="", db_default="")
    # Random token written by the one settle/void that won the status change.
    claim = models.CharField(max_length=32, null=True, blank=True)
    created_at = models.DateTimeField()
    timeout_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0, pending_amount__gte=0), name="transfer_amounts_nonnegative"),
            models.CheckConstraint(
                condition=~Q(kind="usage") | Q(amount__lte=F("pending_amount")), name="transfer_posted_within_pending"
            ),
            models.CheckConstraint(condition=~Q(debit_wallet=F("credit_wallet")), name="transfer_distinct_wallets"),
            models.UniqueConstraint(
                fields=["kind", "reference"], condition=Q(reference__isnull=False), name="transfer_reference_unique"
            ),
            models.CheckConstraint(
                condition=Q(promo_amount__gte=0, overage_amount__gte=0), name="transfer_parts_nonnegative"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "timeout_at"], name="transfer_pending_timeout"),
            models.Index(fields=["request_id"], name="transfer_request"),
            models.Index(fields=["stripe_object"], name="transfer_stripe_object"),
            models.Index(fields=["finished_at"], name="transfer_finished"),
        ]


class Entry(models.Model):
    transfer = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="entries")
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="entries")
    amount = models.BigIntegerField()  # signed: negative debits, positive credits
    created_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["transfer", "wallet"], name="entry_one_per_wallet")]


class SpendCounter(models.Model):
    """One capped scope's usage in one calendar month (UTC), in micro-units.

    ``spent`` is the posted usage of the scope's transfers of the month;
    ``reserved`` is the pending amount of those held here (``counted_*``). The
    reservation adds to ``reserved`` in its own transaction, so a request that
    would cross ``cap`` breaks ``spend_within_cap`` and reserves nothing.

    ``excess`` is how far spend and holds already stood above the cap when it
    was lowered below them (or a request reserved before the cap was known
    settled): settle, void and cap changes reset it to max(0, spent + reserved
    - cap), so it lets those finish but never leaves room for a new hold.
    Rows exist only for scopes that have (or had) a cap; the cap lives on
    console's Project/ApiKey and is copied here by ``billing.services.spend_cap_set``
    and by the first reservation of a month.
    """

    class Scope(models.TextChoices):
        PROJECT = "project"
        KEY = "key"

    scope = models.CharField(max_length=8, choices=Scope.choices)
    scope_id = models.BigIntegerField()
    period = models.CharField(max_length=7)  # "YYYY-MM", UTC
    spent = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)
    excess = models.BigIntegerField(default=0)
    cap = models.BigIntegerField(null=True, blank=True)  # null: the cap was cleared; still counted

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "scope_id", "period"], name="spendcounter_one_per_period"),
            models.CheckConstraint(
                condition=Q(spent__gte=0, reserved__gte=0, excess__gte=0), name="spendcounter_nonnegative"
            ),
            # The cap guard: a reservation that would take spent + reserved over
            # the cap fails this check and rolls its whole transaction back.
            models.CheckConstraint(
                condition=Q(cap__isnull=True) | Q(spent__lte=F("cap") + F("excess") - F("reserved")),
                name="spend_within_cap",
            ),
        ]


class CreditLot(models.Model):
    """A promotional or included credit grant with an expiry.

    The wallet's ``promo`` is what is left of all its unexpired lots; spending
    takes from the lot that expires first, so lot i still holds
    clamp(promo - sum of later-expiring lots' grants, 0, its grant). At expiry
    that rest goes back with a ``promo_expiry`` transfer.
    """

    class Kind(models.TextChoices):
        PROMO = "promo"
        INCLUDED = "included"

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="credit_lots")
    transfer = models.OneToOneField(Transfer, on_delete=models.PROTECT, related_name="credit_lot")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.BigIntegerField()
    expires_at = models.DateTimeField()
    expired_amount = models.BigIntegerField(default=0)
    closed_at = models.DateTimeField(null=True, blank=True)  # expiry processed
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(amount__gt=0, expired_amount__gte=0) & Q(expired_amount__lte=F("amount")),
                name="creditlot_amounts",
            ),
        ]
        indexes = [models.Index(fields=["closed_at", "expires_at"], name="creditlot_open_expiry")]


class Subscription(models.Model):
    class Status(models.TextChoices):
        INCOMPLETE = "incomplete"
        TRIALING = "trialing"
        ACTIVE = "active"
        PAST_DUE = "past_due"
        UNPAID = "unpaid"
        CANCELED = "canceled"
        INCOMPLETE_EXPIRED = "incomplete_expired"
        PAUSED = "paused"

    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    stripe_subscription_id = models.CharField(max_length=255, unique=True)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.INCOMPLETE)
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)


class StripeEvent(models.Model):
    """Each Stripe webhook event, stored once by id in the transaction of its effect."""

    class Status(models.TextChoices):
        PROCESSED = "processed"
        IGNORED = "ignored"  # an event type we do not act on
        FAILED = "failed"

    id = models.CharField(max_length=255, primary_key=True)
    type = models.CharField(max_length=100)
    api_created = models.DateTimeField()
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices)
    error = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["type", "api_created"], name="stripeevent_type")]


class MeterOutbox(models.Model):
    """Overage to report to Stripe as a meter event, written with its settlement."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"  # Stripe accepted it
        ACKNOWLEDGED = "acknowledged"  # seen in Stripe's meter summary / the invoice
        FLAGGED = "flagged"  # not accepted after the retry budget: a person looks

    identifier = models.CharField(max_length=64, unique=True)  # Stripe's dedupe key: "ovr_<transfer id>"
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="meter_outbox")
    transfer = models.OneToOneField(Transfer, on_delete=models.PROTECT, related_name="meter_event")
    value = models.BigIntegerField()  # micro-units of overage
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(value__gt=0), name="meteroutbox_value_positive")]
        indexes = [models.Index(fields=["status", "created_at"], name="meteroutbox_pending")]


class ReconciliationRun(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running"
        OK = "ok"
        DISCREPANCIES = "discrepancies"
        FAILED = "failed"

    day = models.DateField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    rerun_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reruns")
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["day", "started_at"], name="reconrun_day")]


class Discrepancy(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        HEALED = "healed"  # fixed by the system (e.g. a dropped webhook's credit applied)
        CLOSED = "closed"  # resolved by a person, with a note

    run = models.ForeignKey(ReconciliationRun, on_delete=models.CASCADE, related_name="discrepancies")
    kind = models.CharField(max_length=64)
    amount = models.BigIntegerField(default=0)  # micro-units, signed
    currency = models.CharField(max_length=3, default="usd")
    references = models.JSONField(default=dict, blank=True)
    detail = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    note = models.TextField(blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        indexes = [models.Index(fields=["kind", "status"], name="discrepancy_kind")]


class TopupSession(models.Model):
    """One top-up through Stripe Checkout, from the console form to its credit.

    Written before Stripe is called, so the Checkout Session is created with an
    idempotency key from this row (``topup-session:<public id>``) and the success
    page can say what became of the payment from our own data. The credit itself
    is the ``topup`` transfer with reference ``cs:<session id>``, posted only by a
    verified webhook (``billing.topups.credit_checkout_session``); a refused
    payment (amounts or customer do not match) keeps its reason in ``error``.
    """

    class Status(models.TextChoices):
        CREATED = "created"  # row written, Checkout Session not created (yet)
        OPEN = "open"  # Checkout Session open: the customer is on Stripe's page
        PROCESSING = "processing"  # completed, the payment has not cleared (async methods)
        CREDITED = "credited"
        FAILED = "failed"  # the payment failed, or Stripe refused to open the session
        EXPIRED = "expired"
        REFUSED = "refused"  # paid, but not credited: it did not match what we asked for

    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "topup"), editable=False)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="topup_sessions")
    currency = models.CharField(max_length=3, default="usd")
    amount = models.BigIntegerField()  # micro-units asked for
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CREATED)
    stripe_session_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    stripe_payment_intent = models.CharField(max_length=255, blank=True)
    checkout_url = models.TextField(blank=True)
    transfer = models.OneToOneField(
        Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="topup_session"
    )
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="topupsession_amount_positive")]
        indexes = [models.Index(fields=["account", "created_at"], name="topupsession_account")]


class TopupRefund(models.Model):
    """A refund of (part of) a top-up: asked for in the console, or seen first in a webhook.

    Console refunds write this row (under a lock on the top-up, so two can never
    refund more than was paid) before Stripe is called with the idempotency key
    ``topup-refund:<public id>``; Stripe's refund carries that public id in its
    metadata. The ledger reversal is posted by ``billing.refunds.refund_post``
    from the webhook once the refund succeeded, once per refund id.
    """

    class Status(models.TextChoices):
        REQUESTED = "requested"  # row written, Stripe not answered yet
        PENDING = "pending"  # Stripe has the refund; not succeeded yet
        SUCCEEDED = "succeeded"  # reversal posted
        FAILED = "failed"  # Stripe refused it, or it failed or was canceled

    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "topref"), editable=False)
    topup = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="refunds")
    amount = models.BigIntegerField()  # micro-units
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.REQUESTED)
    stripe_refund_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="topuprefund_amount_positive")]


class Dispute(models.Model):
    """A chargeback on a top-up's payment, and what it did to the wallet.

    Opening (or losing, if that is heard of first) reverses the disputed amount
    like a refund (transfers ``dp:<id>`` and ``dp:<id>:owed``) and suspends the
    wallet; winning gives exactly that back and lifts the suspension when no
    other dispute is open or lost and unresolved. A lost dispute keeps the
    wallet suspended until finance reactivates it (``resolved_*``).
    """

    class Status(models.TextChoices):
        OPEN = "open"
        WON = "won"
        LOST = "lost"

    stripe_dispute_id = models.CharField(max_length=255, unique=True)
    topup = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="disputes")
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="disputes")
    amount = models.BigIntegerField()  # micro-units disputed
    reason = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    reversed_at = models.DateTimeField(null=True, blank=True)  # the reversal was posted
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)  # a lost dispute, settled by finance
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    resolution_note = models.TextField(blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="dispute_amount_positive")]
