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

from django.db import models
from django.db.models import F, Q


class BillingAccount(models.Model):
    organization = models.OneToOneField("console.Organization", on_delete=models.PROTECT, related_name="billing_account")
    created_at = models.DateTimeField(auto_now_add=True)


class Wallet(models.Model):
    class Kind(models.TextChoices):
        CUSTOMER = "customer"  # the organization's prepaid money
        USAGE = "usage"  # counterpart that collects settled spend
        FUNDING = "funding"  # counterpart that top-ups and grants come from

    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"

    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="wallets")
    currency = models.CharField(max_length=3, default="usd")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    balance = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "currency", "kind"], name="wallet_one_per_kind"),
            models.CheckConstraint(condition=Q(reserved__gte=0), name="wallet_reserved_nonnegative"),
            # The reservation guard: an UPDATE that would reserve more than is
            # available fails this check and rolls its transaction back.
            models.CheckConstraint(
                condition=~Q(kind="customer") | Q(balance__gte=F("reserved")), name="wallet_available_nonnegative"
            ),
        ]

    @property
    def available(self) -> int:
        return self.balance - self.reserved


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
        TOPUP = "topup"
        GRANT = "grant"
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
        ]
        indexes = [
            models.Index(fields=["status", "timeout_at"], name="transfer_pending_timeout"),
            models.Index(fields=["request_id"], name="transfer_request"),
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
