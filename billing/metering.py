"""Overage to Stripe: the meter outbox sender and its acknowledgement.

Settlement writes one ``MeterOutbox`` row per usage transfer that went below a
zero balance, in the transaction of the settlement (billing.ledger). Here:

* ``meter_outbox_send`` sends each pending row as a Stripe billing meter event
  (``event_name`` STRIPE_METER_EVENT_NAME, payload ``stripe_customer_id`` and
  ``value`` in micro-units, ``identifier`` the row's "ovr_<transfer id>",
  ``timestamp`` the settlement time). A row is claimed by a conditional UPDATE
  of its attempt count: of the senders that read the same attempt, one sends it.
  A row can still go out twice (a sender that read it after another's claim, a
  timeout after Stripe recorded it, a sender that died before marking it): Stripe
  refuses a second event with the same identifier, and the row counts as sent,
  once. Errors count an attempt; a refusal, or a row still unsent after METER_OUTBOX_MAX_ATTEMPTS tries
  or METER_OUTBOX_MAX_AGE_MINUTES, is flagged for finance (resending later than
  Stripe's identifier window could count it twice).
* ``meter_outbox_acknowledge`` compares, per customer, the sum of what we sent
  with Stripe's meter event summary over the same minutes; when they agree the
  rows are acknowledged. A row sent but not acknowledged after
  METER_ACK_WINDOW_MINUTES is flagged.

Stripe calls happen outside any transaction; each row's state change is one
conditional UPDATE.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from decimal import Decimal

import stripe
from django.conf import settings
from django.db.models import F, Q, Sum
from django.utils import timezone

from . import stripe_client
from .models import MeterOutbox

log = logging.getLogger(__name__)
BATCH = 500


@dataclass
class SendResult:
    sent: int = 0
    duplicates: int = 0  # Stripe had it already: a resend after an unanswered attempt
    failed: int = 0  # will be retried
    flagged: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class AckResult:
    acknowledged: int = 0
    flagged: int = 0
    mismatched: list[str] = field(default_factory=list)  # customers whose Stripe total differs from ours

    def as_dict(self) -> dict:
        return asdict(self)


def _duplicate(exc: stripe.StripeError) -> bool:
    """Stripe's refusal of a second event with an identifier it has (answered 400)."""
    if not isinstance(exc, stripe.InvalidRequestError):
        return False
    code = getattr(exc, "code", None) or ""
    message = str(getattr(exc, "user_message", None) or exc).lower()
    return code in {"resource_already_exists", "meter_event_duplicate"} or (
        "identifier" in message and ("already exists" in message or "duplicate" in message)
    )


def _retryable(exc: stripe.StripeError) -> bool:
    """Worth another try later: the network, Stripe's side, rate limits, our credentials."""
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError | stripe.AuthenticationError
                  | stripe.PermissionError):
        return True
    status = getattr(exc, "http_status", None)
    return status is None or status >= 500 or status in (409, 429)


def _flag(row_id: int, reason: str, *, statuses=(MeterOutbox.Status.PENDING,)) -> bool:
    return MeterOutbox.objects.filter(id=row_id, status__in=statuses).update(
        status=MeterOutbox.Status.FLAGGED, last_error=reason[:2000]
    ) == 1


def _flag_stale_pending(now: dt.datetime) -> int:
    """Pending rows past the retry budget (by count or by age) go to finance."""
    too_old = now - dt.timedelta(minutes=settings.METER_OUTBOX_MAX_AGE_MINUTES)
    stale = MeterOutbox.objects.filter(status=MeterOutbox.Status.PENDING).filter(
        Q(attempts__gte=settings.METER_OUTBOX_MAX_ATTEMPTS) | Q(created_at__lt=too_old)
    )
    flagged = 0
    for row_id, attempts, error in stale.values_list("id", "attempts", "last_error"):
        reason = f"not sent after {attempts} attempts" + (f"; last error: {error}" if error else "")
        flagged += _flag(row_id, reason)
    return flagged


def meter_outbox_send(*, now: dt.datetime | None = None, limit: int = BATCH,
                      client: stripe.StripeClient | None = None) -> SendResult:
    """Send up to ``limit`` pending rows, oldest first (see the module)."""
    now = now or timezone.now()
    result = SendResult(flagged=_flag_stale_pending(now))
    rows = list(
        MeterOutbox.objects.filter(status=MeterOutbox.Status.PENDING)
        .order_by("id")
        .values_list("id", "identifier", "value", "attempts", "created_at", "account__stripe_customer_id")[:limit]
    )
    if not rows:
        return result
    client = client or stripe_client.client()
    event_name = settings.STRIPE_METER_EVENT_NAME
    for row_id, identifier, value, attempts, created_at, customer in rows:
        # The claim: whoever moves the attempt count on sends this try.
        claimed = MeterOutbox.objects.filter(id=row_id, status=MeterOutbox.Status.PENDING, attempts=attempts).update(
            attempts=F("attempts") + 1
        )
        if not claimed:
            continue
        if not customer:
            result.flagged += _flag(row_id, "the account has no Stripe customer to bill the overage to")
            continue
        try:
            client.v1.billing.meter_events.create(params={
                "event_name": event_name,
                "payload": {"stripe_customer_id": customer, "value": str(value)},
                "identifier": identifier,
                "timestamp": int(created_at.timestamp()),
            })
        except stripe.StripeError as exc:
            if _duplicate(exc):
                result.duplicates += _mark_sent(row_id, now, note="Stripe had this identifier already")
                continue
            error = f"{type(exc).__name__}: {getattr(exc, 'user_message', None) or exc}"
            if not _retryable(exc):
                log.warning("meter event %s refused by Stripe: %s", identifier, error)
                result.flagged += _flag(row_id, f"refused by Stripe: {error}")
            elif attempts + 1 >= settings.METER_OUTBOX_MAX_ATTEMPTS:
                result.flagged += _flag(row_id, f"not sent after {attempts + 1} attempts; last error: {error}")
            else:
                MeterOutbox.objects.filter(id=row_id, status=MeterOutbox.Status.PENDING).update(last_error=error[:2000])
                result.failed += 1
            continue
        result.sent += _mark_sent(row_id, now)
    return result


def _mark_sent(row_id: int, now: dt.datetime, *, note: str = "") -> int:
    # A row flagged for age while its last try was in flight still reached Stripe.
    return MeterOutbox.objects.filter(
        id=row_id, status__in=[MeterOutbox.Status.PENDING, MeterOutbox.Status.FLAGGED]
    ).update(status=MeterOutbox.Status.SENT, sent_at=now, last_error=note)


def _minute(when: dt.datetime) -> dt.datetime:
    return when.replace(second=0, microsecond=0)


_meter_ids: dict[str, str] = {}


def _meter_id(client: stripe.StripeClient) -> str | None:
    event_name = settings.STRIPE_METER_EVENT_NAME
    if event_name not in _meter_ids:
        for meter in client.v1.billing.meters.list(params={"limit": 100}).auto_paging_iter():
            if meter["event_name"] == event_name and meter["status"] == "active":
                _meter_ids[event_name] = meter["id"]
                break
    return _meter_ids.get(event_name)


def meter_outbox_acknowledge(*, now: dt.datetime | None = None,
                             client: stripe.StripeClient | None = None) -> AckResult:
    """Acknowledge sent rows Stripe's meter summary accounts for (see the module)."""
    now = now or timezone.now()
    result = AckResult()
    end = _minute(now)  # summaries cover whole minutes, end exclusive
    customers = set(
        MeterOutbox.objects.filter(status=MeterOutbox.Status.SENT, created_at__lt=end, account__stripe_customer_id__isnull=False)
        .values_list("account__stripe_customer_id", flat=True)
        .distinct()
    )
    if customers:
        client = client or stripe_client.client()
        meter = _meter_id(client)
        for customer in sorted(customers) if meter else ():
            try:
                result.acknowledged += _acknowledge_customer(client, meter=meter, customer=customer, end=end,
                                                             now=now, mismatched=result.mismatched)
            except stripe.InvalidRequestError as exc:
                if exc.code != "resource_missing":
                    raise
                # The meter we remembered is gone (deleted and made again): look it up next time.
                _meter_ids.pop(settings.STRIPE_METER_EVENT_NAME, None)
                log.warning("billing meter %s is gone; it will be looked up again", meter)
                break
    window = now - dt.timedelta(minutes=settings.METER_ACK_WINDOW_MINUTES)
    for row_id, sent_at in MeterOutbox.objects.filter(status=MeterOutbox.Status.SENT, sent_at__lt=window).values_list(
        "id", "sent_at"
    ):
        result.flagged += _flag(
            row_id, f"sent {sent_at:%Y-%m-%d %H:%M} UTC but not in Stripe's meter summary after "
            f"{settings.METER_ACK_WINDOW_MINUTES} minutes", statuses=(MeterOutbox.Status.SENT,),
        )
    return result


def _acknowledge_customer(client: stripe.StripeClient, *, meter: str, customer: str, end: dt.datetime,
                          now: dt.datetime, mismatched: list[str]) -> int:
    """Compare one customer's sent events with Stripe's sum over the same minutes."""
    rows = MeterOutbox.objects.filter(account__stripe_customer_id=customer, created_at__lt=end)
    oldest = rows.filter(status=MeterOutbox.Status.SENT).order_by("created_at").values_list("created_at", flat=True).first()
    if oldest is None:
        return 0
    start = _minute(oldest)
    # Everything that reached Stripe in those minutes, acknowledged before or not.
    ours = rows.filter(created_at__gte=start, sent_at__isnull=False).aggregate(s=Sum("value"))["s"] or 0
    summaries = client.v1.billing.meters.event_summaries.list(meter, params={
        "customer": customer, "start_time": int(start.timestamp()), "end_time": int(end.timestamp()), "limit": 100,
    })
    # Stripe sends the sum as a JSON number; every value we send is a whole micro-unit.
    theirs = sum(int(Decimal(str(s["aggregated_value"]))) for s in summaries.auto_paging_iter())
    if theirs != ours:
        log.warning("meter summary for %s from %s: Stripe %s, sent %s", customer, start, theirs, ours)
        mismatched.append(customer)
        return 0
    return rows.filter(status=MeterOutbox.Status.SENT, created_at__gte=start).update(
        status=MeterOutbox.Status.ACKNOWLEDGED, acknowledged_at=now
    )
