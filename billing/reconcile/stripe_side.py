"""Check 3, the ledger against Stripe, for one UTC day (through the real ``stripe`` library).

Both directions, each enumerated for its own day and matched whatever day the
other side landed on (a payment at 23:59 whose webhook arrives at 00:00):

* ledger → Stripe: every transfer of the day that names a Stripe object
  (``stripe_object``: top-ups, refunds, disputes and their reversal, a paid
  invoice's overage and included credit) is matched to the balance transaction
  behind that object; its amount × 10,000 (cents → micro-units) must equal what
  the ledger moved. Fee and net are recorded in the references.
* Stripe → ledger: every balance transaction created on the day that moves a
  customer's money (payments, refunds, dispute withdrawals and reinstatements)
  has its ledger transfer. A payment without one is a dropped or failed
  webhook: ``missing_credit``, healed by applying the Checkout Session, payment
  intent or invoice through the same idempotent function the webhook uses.
  Balance transactions younger than ``RECONCILE_WEBHOOK_GRACE_SECONDS`` are
  counted as in flight instead (their webhook may still be on its way).
* payouts created on the day equal the net of the balance transactions they
  paid out, and their own balance transaction is minus their amount.
* the day's meter outbox rows (overage reported to Stripe): none flagged, none
  left unsent past ``RECONCILE_METER_GRACE_SECONDS``, none sent but still not
  acknowledged past ``RECONCILE_METER_ACK_SECONDS``.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import stripe
from django.conf import settings
from django.db.models import Count, Q, Sum

from billing.invariants import Problem
from billing.models import BillingAccount, MeterOutbox, Plan, Transfer
from billing.stripe_client import client

# Currencies Stripe counts in whole units (no cents): 1 unit = 1,000,000 micro-units.
ZERO_DECIMAL = frozenset({
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
})
PAYMENT_TYPES = frozenset({"charge", "payment"})
REFUND_TYPES = frozenset({"refund", "payment_refund"})
DISPUTE_TYPES = frozenset({"adjustment", "dispute", "dispute_reversal"})
# Ledger kinds that move money Stripe moved, and the sign Stripe's amount has for each.
STRIPE_KINDS = {
    Transfer.Kind.TOPUP: +1,
    Transfer.Kind.REFUND: -1,
    Transfer.Kind.DISPUTE: -1,
    Transfer.Kind.DISPUTE_WON: +1,
    Transfer.Kind.OVERAGE_PAYMENT: +1,
    Transfer.Kind.INCLUDED: +1,
    Transfer.Kind.GRANT: +1,  # included credit that paid usage already on the credit line (names its invoice)
}


class StripeUnavailable(Exception):
    """Stripe (or the emulator) could not be asked: the check could not run."""


def micros(amount: int, currency: str) -> int:
    """A Stripe amount (smallest currency unit) in micro-units."""
    return amount * (1_000_000 if currency.lower() in ZERO_DECIMAL else 10_000)


def _d(obj) -> dict:
    if obj is None:
        return {}
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _id(value) -> str | None:
    """An expandable field: the id, whether it came expanded or not."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return value.get("id")


class _Stripe:
    """The few reads the check needs, each object fetched once per run."""

    def __init__(self, sc: stripe.StripeClient):
        self.sc = sc
        self._cache: dict[str, dict] = {}

    def _get(self, key: str, fetch) -> dict:
        if key not in self._cache:
            self._cache[key] = _d(fetch())
        return self._cache[key]

    def balance_transaction(self, bt_id: str) -> dict:
        return self._get(bt_id, lambda: self.sc.v1.balance_transactions.retrieve(bt_id))

    def charge(self, charge_id: str) -> dict:
        return self._get(charge_id, lambda: self.sc.v1.charges.retrieve(charge_id))

    def payment_intent(self, pi_id: str) -> dict:
        return self._get(pi_id, lambda: self.sc.v1.payment_intents.retrieve(pi_id))

    def refund(self, refund_id: str) -> dict:
        return self._get(refund_id, lambda: self.sc.v1.refunds.retrieve(refund_id))

    def dispute(self, dispute_id: str) -> dict:
        return self._get(dispute_id, lambda: self.sc.v1.disputes.retrieve(dispute_id))

    def invoice(self, invoice_id: str) -> dict:
        return self._get(invoice_id, lambda: self.sc.v1.invoices.retrieve(invoice_id, params={"expand": ["lines"]}))

    def checkout_session(self, session_id: str) -> dict:
        return self._get(session_id, lambda: self.sc.v1.checkout.sessions.retrieve(session_id))

    def session_for_payment_intent(self, pi_id: str) -> dict | None:
        found = self.sc.v1.checkout.sessions.list(params={"payment_intent": pi_id, "limit": 1})
        return _d(found.data[0]) if found.data else None

    def balance_transactions(self, *, start: dt.datetime, end: dt.datetime) -> Iterable[dict]:
        params = {"created": {"gte": int(start.timestamp()), "lt": int(end.timestamp())}, "limit": 100}
        for bt in self.sc.v1.balance_transactions.list(params=params).auto_paging_iter():
            yield _d(bt)

    def payouts(self, *, start: dt.datetime, end: dt.datetime) -> Iterable[dict]:
        params = {"created": {"gte": int(start.timestamp()), "lt": int(end.timestamp())}, "limit": 100}
        for payout in self.sc.v1.payouts.list(params=params).auto_paging_iter():
            yield _d(payout)

    def payout_transactions(self, payout_id: str) -> Iterable[dict]:
        for bt in self.sc.v1.balance_transactions.list(params={"payout": payout_id, "limit": 100}).auto_paging_iter():
            yield _d(bt)

    def charge_of_payment_intent(self, pi: dict) -> str | None:
        return _id(pi.get("latest_charge"))

    def invoice_of_charge(self, charge: dict) -> str | None:
        """The invoice a charge paid, if any.

        API versions before 2025-03-31 name it on the charge or its payment intent; later
        ones link them through InvoicePayment objects; the customer's invoices name their
        payment intent and charge in the older shape (what the emulator gives).
        """
        pi_id = _id(charge.get("payment_intent"))
        invoice = _id(charge.get("invoice"))
        if invoice is None and pi_id:
            invoice = _id(self.payment_intent(pi_id).get("invoice"))
        if invoice is None and pi_id:
            invoice = self._invoice_payment(pi_id)
        if invoice is None and charge.get("customer"):
            invoice = self._customer_invoices(_id(charge["customer"])).get(pi_id or charge["id"]) or \
                self._customer_invoices(_id(charge["customer"])).get(charge["id"])
        return invoice

    def _invoice_payment(self, pi_id: str) -> str | None:
        try:
            found = self.sc.v1.invoice_payments.list(
                params={"payment": {"type": "payment_intent", "payment_intent": pi_id}, "limit": 1}
            )
        except stripe.StripeError as exc:
            if exc.http_status == 404:  # an API version (or the emulator) without InvoicePayments
                return None
            raise
        return _id(found.data[0].invoice) if found.data else None

    def _customer_invoices(self, customer: str) -> dict[str, str]:
        """payment intent / charge id → invoice id, over the customer's invoices."""
        key = f"invoices:{customer}"
        if key not in self._cache:
            links: dict[str, str] = {}
            for invoice in self.sc.v1.invoices.list(params={"customer": customer, "limit": 100}).auto_paging_iter():
                invoice = _d(invoice)
                for field in ("payment_intent", "charge"):
                    if _id(invoice.get(field)):
                        links[_id(invoice[field])] = invoice["id"]
            self._cache[key] = links
        return self._cache[key]


def _bt_refs(bt: dict) -> dict[str, Any]:
    currency = bt.get("currency", "usd")
    return {
        "balance_transaction": bt.get("id"), "bt_type": bt.get("type"),
        "bt_amount": micros(bt.get("amount", 0), currency), "fee": micros(bt.get("fee", 0), currency),
        "net": micros(bt.get("net", 0), currency), "stripe_currency": currency,
    }


def stripe_findings(*, start: dt.datetime, end: dt.datetime, now: dt.datetime) -> tuple[list[Problem], dict[str, Any]]:
    findings: list[Problem] = []
    meter, meter_summary = meter_findings(start=start, end=end, now=now)
    findings += meter
    if not settings.STRIPE_SECRET_KEY:
        return findings, {"skipped": "STRIPE_SECRET_KEY is not set", "meter_outbox": meter_summary}
    api = _Stripe(client())
    try:
        ledger, ledger_summary = _ledger_to_stripe(api, start=start, end=end)
        payments, stripe_summary = _stripe_to_ledger(api, start=start, end=end, now=now)
        payouts, payout_summary = _payouts(api, start=start, end=end)
    except (stripe.APIConnectionError, stripe.AuthenticationError, stripe.PermissionError) as exc:
        raise StripeUnavailable(f"Stripe could not be asked: {exc.user_message or exc}") from exc
    findings += ledger + payments + payouts
    return findings, {
        "ledger": ledger_summary, "stripe": stripe_summary, "payouts": payout_summary, "meter_outbox": meter_summary,
    }


# --- ledger → Stripe ---------------------------------------------------------------------------------------------


def _ledger_to_stripe(api: _Stripe, *, start: dt.datetime, end: dt.datetime) -> tuple[list[Problem], dict]:
    groups = (
        Transfer.objects.filter(
            status=Transfer.Status.POSTED, finished_at__gte=start, finished_at__lt=end, kind__in=list(STRIPE_KINDS)
        )
        .exclude(stripe_object="")
        .values("kind", "stripe_object", "currency")
        .annotate(amount=Sum("amount"), n=Count("id"))
        .order_by("kind", "stripe_object")
    )
    findings: list[Problem] = []
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"count": 0, "ledger": 0, "stripe": 0, "fee": 0})
    for group in groups:
        kind, obj, amount = group["kind"], group["stripe_object"], group["amount"]
        ids = list(Transfer.objects.filter(kind=kind, stripe_object=obj, status=Transfer.Status.POSTED)
                   .order_by("id").values_list("id", flat=True))
        refs = {"transfers": ids, "kind": kind, "stripe_object": obj, "ledger_amount": amount}
        try:
            matched = _stripe_amount(api, kind=kind, obj=obj)
        except stripe.InvalidRequestError as exc:  # 404: Stripe has no such object
            findings.append(Problem(
                "missing_balance_transaction",
                f"{kind} of {amount} names Stripe object {obj}, which Stripe does not know ({exc.user_message})",
                amount=amount * STRIPE_KINDS[kind], references=refs, currency=group["currency"],
            ))
            continue
        t = totals[kind]
        t["count"] += 1
        t["ledger"] += amount
        if matched is None:  # nothing to compare (included credit is not money Stripe moved)
            t["stripe"] += amount
            continue
        expected, bt_refs, why = matched
        refs.update(bt_refs)
        if why:
            findings.append(Problem("missing_balance_transaction", f"{kind} of {amount} ({obj}): {why}",
                                    amount=amount * STRIPE_KINDS[kind], references=refs, currency=group["currency"]))
            continue
        t["stripe"] += expected
        t["fee"] += bt_refs.get("fee", 0)
        if expected != amount:
            findings.append(Problem(
                "stripe_amount_mismatch",
                f"{kind} {obj}: the ledger moved {amount}, Stripe's balance transaction {expected}",
                amount=(amount - expected) * STRIPE_KINDS[kind], references={**refs, "stripe_amount": expected},
                currency=group["currency"],
            ))
    return findings, dict(totals)


def _stripe_amount(api: _Stripe, *, kind: str, obj: str) -> tuple[int, dict, str] | None:
    """(the micro-units Stripe moved for ``obj`` in the ledger's sign, balance transaction refs, a problem or ""),
    or None when there is nothing to compare."""
    if kind == Transfer.Kind.TOPUP:
        charge_id = obj if obj.startswith(("ch_", "py_")) else None
        if obj.startswith("cs_"):
            obj = _id(api.checkout_session(obj).get("payment_intent")) or obj
        if obj.startswith("pi_"):
            pi = api.payment_intent(obj)
            if pi.get("status") != "succeeded":
                return 0, {"payment_intent": obj}, f"its payment intent is {pi.get('status')}, not succeeded"
            charge_id = api.charge_of_payment_intent(pi)
        if not charge_id:
            return 0, {}, "no charge behind it"
        return _charge_amount(api, charge_id)
    if kind == Transfer.Kind.REFUND:
        refund = api.refund(obj)
        bt_id = _id(refund.get("balance_transaction"))
        if not bt_id:
            return 0, {"refund": obj}, f"refund {obj} ({refund.get('status')}) has no balance transaction"
        bt = api.balance_transaction(bt_id)
        return -micros(bt["amount"], bt["currency"]), {"refund": obj, **_bt_refs(bt)}, ""
    if kind in (Transfer.Kind.DISPUTE, Transfer.Kind.DISPUTE_WON):
        dispute = api.dispute(obj)
        sign = -1 if kind == Transfer.Kind.DISPUTE else +1
        bts = [b if isinstance(b, dict) else api.balance_transaction(b) for b in dispute.get("balance_transactions") or []]
        mine = [b for b in bts if (b.get("amount", 0) < 0) == (sign < 0) and b.get("amount")]
        if not mine:
            return 0, {"dispute": obj}, f"dispute {obj} ({dispute.get('status')}) has no such balance transaction"
        amount = sum(micros(b["amount"], b["currency"]) for b in mine) * sign
        refs = {"dispute": obj, **_bt_refs(mine[0])}
        refs["fee"] = sum(micros(b.get("fee", 0), b["currency"]) for b in mine)
        refs["net"] = sum(micros(b.get("net", 0), b["currency"]) for b in mine)
        return amount, refs, ""
    if kind == Transfer.Kind.OVERAGE_PAYMENT:
        invoice = api.invoice(obj)
        if invoice.get("status") != "paid":
            return 0, {"invoice": obj}, f"invoice {obj} is {invoice.get('status')}, not paid"
        quantity, charged = _metered(invoice)
        refs = {"invoice": obj, "amount_paid": micros(invoice.get("amount_paid", 0), invoice.get("currency", "usd")),
                "metered": quantity, "metered_charged": charged}
        return quantity, refs, ""
    if kind in (Transfer.Kind.INCLUDED, Transfer.Kind.GRANT):
        if not obj.startswith("in_"):
            return None
        invoice = api.invoice(obj)
        if invoice.get("status") != "paid":
            return 0, {"invoice": obj}, f"invoice {obj} is {invoice.get('status')}, not paid"
        return None
    raise AssertionError(kind)


def _charge_amount(api: _Stripe, charge_id: str) -> tuple[int, dict, str]:
    charge = api.charge(charge_id)
    bt_id = _id(charge.get("balance_transaction"))
    if not bt_id:
        return 0, {"charge": charge_id}, f"charge {charge_id} ({charge.get('status')}) has no balance transaction"
    bt = api.balance_transaction(bt_id)
    return micros(bt["amount"], bt["currency"]), {"charge": charge_id, **_bt_refs(bt)}, ""


def _line_price(line: dict) -> str | None:
    """The price id of an invoice line, in any of the shapes Stripe API versions use."""
    pricing = line.get("pricing") or {}
    return _id(line.get("price")) or _id((pricing.get("price_details") or {}).get("price")) or _id(line.get("plan"))


def _metered(invoice: dict) -> tuple[int, int]:
    """(micro-units metered, micro-units charged for them) on the invoice's overage lines.

    The meter counts micro-units of overage; Stripe charges them at a price per
    micro-unit rounded to the cent, so the two may differ by less than a cent. The
    ledger credits back what was metered (``billing.subscriptions``).
    """
    meter_prices = set(Plan.objects.exclude(stripe_meter_price_id="").values_list("stripe_meter_price_id", flat=True))
    quantity = charged = 0
    for line in (invoice.get("lines") or {}).get("data") or []:
        price = line.get("price") if isinstance(line.get("price"), dict) else {}
        if _line_price(line) in meter_prices or (price.get("recurring") or {}).get("usage_type") == "metered":
            quantity += int(line.get("quantity") or 0)
            charged += micros(int(line.get("amount") or 0), line.get("currency") or invoice.get("currency", "usd"))
    return quantity, charged


def _metered_amount(invoice: dict) -> int:
    """Micro-units of money the invoice charged for metered overage."""
    return _metered(invoice)[1]


# --- Stripe → ledger ---------------------------------------------------------------------------------------------


def _ledger_has(*, kinds: Iterable[str], objects: Iterable[str | None], references: Iterable[str] = ()) -> bool:
    objects = [o for o in objects if o]
    query = Q(stripe_object__in=objects) if objects else Q(pk__in=[])
    if references:
        query |= Q(reference__in=list(references))
    return Transfer.objects.filter(query, kind__in=list(kinds), status=Transfer.Status.POSTED).exists()


def _account_for(customer: str | None) -> int | None:
    if not customer:
        return None
    return BillingAccount.objects.filter(stripe_customer_id=customer).values_list("id", flat=True).first()


def _stripe_to_ledger(api: _Stripe, *, start: dt.datetime, end: dt.datetime, now: dt.datetime) -> tuple[list[Problem], dict]:
    grace = dt.timedelta(seconds=settings.RECONCILE_WEBHOOK_GRACE_SECONDS)
    findings: list[Problem] = []
    counts: dict[str, int] = defaultdict(int)
    for bt in api.balance_transactions(start=start, end=end):
        kind, source = bt.get("type"), _id(bt.get("source")) or ""
        counts[f"{kind}_count"] += 1
        counts[f"{kind}_amount"] += micros(bt.get("amount", 0), bt.get("currency", "usd"))
        counts[f"{kind}_fee"] += micros(bt.get("fee", 0), bt.get("currency", "usd"))
        in_flight = dt.datetime.fromtimestamp(bt.get("created", 0), tz=dt.UTC) > now - grace
        if kind in PAYMENT_TYPES:
            problem = _payment_problem(api, bt, source)
        elif kind in REFUND_TYPES:
            problem = _reversal_problem(bt, source, kinds=[Transfer.Kind.REFUND], ref_prefix="re:",
                                        missing="missing_refund", what="refund")
        elif kind in DISPUTE_TYPES and source.startswith(("dp_", "du_")):
            won = bt.get("amount", 0) > 0
            problem = _reversal_problem(
                bt, source, kinds=[Transfer.Kind.DISPUTE_WON if won else Transfer.Kind.DISPUTE],
                ref_prefix="dpw:" if won else "dp:", missing="missing_dispute_reversal" if won else "missing_dispute",
                what="dispute reinstatement" if won else "dispute withdrawal",
            )
        else:
            continue
        if problem is None:
            counts["matched"] += 1
        elif in_flight:
            counts["in_flight"] += 1
        else:
            findings.append(problem)
    return findings, dict(sorted(counts.items()))


def _payment_problem(api: _Stripe, bt: dict, source: str) -> Problem | None:
    amount = micros(bt.get("amount", 0), bt.get("currency", "usd"))
    if not source.startswith(("ch_", "py_")):
        return None
    charge = api.charge(source)
    pi_id = _id(charge.get("payment_intent"))
    invoice_id = api.invoice_of_charge(charge)
    customer = _id(charge.get("customer"))
    refs: dict[str, Any] = {**_bt_refs(bt), "charge": source, "payment_intent": pi_id, "invoice": invoice_id,
                            "customer": customer, "account": _account_for(customer)}
    if invoice_id:
        expected = _invoice_credits(api.invoice(invoice_id))
        # Included credit may land as a grant (the part that paid usage already on the credit line).
        if not expected or _ledger_has(kinds=[*INVOICE_KINDS], objects=[invoice_id]):
            return None
        refs["purpose"] = "invoice"
        refs["expected_kinds"] = sorted(expected)
    else:
        kinds = [Transfer.Kind.TOPUP]
        session = api.session_for_payment_intent(pi_id) if pi_id else None
        session_id = session["id"] if session else None
        references = [f"pi:{pi_id}"] if pi_id else []
        if session_id:
            references.append(f"cs:{session_id}")
        if _ledger_has(kinds=kinds, objects=[pi_id, source, session_id], references=references):
            return None
        refs["checkout_session"] = session_id
        refs["purpose"] = "checkout" if session_id else "payment_intent"
        if refs["account"] is None and session:
            refs["account"] = _account_for(_id(session.get("customer")))
    return Problem(
        "missing_credit",
        f"Stripe payment {source} of {amount} ({refs['purpose']}) has no ledger credit: a dropped or failed webhook",
        amount=amount, references=refs, currency=bt.get("currency", "usd"),
    )


INVOICE_KINDS = (Transfer.Kind.INCLUDED, Transfer.Kind.GRANT, Transfer.Kind.OVERAGE_PAYMENT)


def _invoice_credits(invoice: dict) -> set[str]:
    """The ledger credits a paid invoice should have brought: included credit if it charged a
    plan's fee and the plan includes credit, an overage payment if it billed metered overage."""
    expected: set[str] = set()
    fee_prices = {
        _line_price(line) for line in (invoice.get("lines") or {}).get("data") or [] if int(line.get("amount") or 0) > 0
    }
    if Plan.objects.filter(stripe_price_id__in=[p for p in fee_prices if p], included_credit__gt=0).exists():
        expected.add(Transfer.Kind.INCLUDED)
    if _metered(invoice)[0] > 0:
        expected.add(Transfer.Kind.OVERAGE_PAYMENT)
    return expected


def _reversal_problem(bt: dict, source: str, *, kinds: list[str], ref_prefix: str, missing: str,
                      what: str) -> Problem | None:
    if _ledger_has(kinds=kinds, objects=[source], references=[f"{ref_prefix}{source}"]):
        return None
    amount = micros(bt.get("amount", 0), bt.get("currency", "usd"))
    return Problem(missing, f"Stripe {what} {source} of {amount} has no ledger transfer",
                   amount=amount, references={**_bt_refs(bt), "stripe_object": source}, currency=bt.get("currency", "usd"))


# --- payouts -----------------------------------------------------------------------------------------------------


def _payouts(api: _Stripe, *, start: dt.datetime, end: dt.datetime) -> tuple[list[Problem], dict]:
    findings: list[Problem] = []
    summary = {"count": 0, "amount": 0}
    for payout in api.payouts(start=start, end=end):
        currency = payout.get("currency", "usd")
        summary["count"] += 1
        summary["amount"] += micros(payout["amount"], currency)
        bts = list(api.payout_transactions(payout["id"]))
        own = [b for b in bts if b.get("type") == "payout" and _id(b.get("source")) == payout["id"]]
        paid = [b for b in bts if b.get("type") != "payout"]
        net = sum(b.get("net", 0) for b in paid)
        problems = []
        if net != payout["amount"]:
            problems.append(f"its {len(paid)} balance transactions net {net}, the payout is {payout['amount']}")
        if payout.get("status") != "failed" and [b.get("amount") for b in own] != [-payout["amount"]]:
            problems.append("its own balance transaction is not minus its amount")
        if problems:
            findings.append(Problem(
                "payout_mismatch", f"payout {payout['id']}: " + "; ".join(problems),
                amount=micros(payout["amount"] - net, currency),
                references={"payout": payout["id"], "payout_amount": micros(payout["amount"], currency),
                            "transactions_net": micros(net, currency), "transactions": [b["id"] for b in paid],
                            "status": payout.get("status")},
                currency=currency,
            ))
    return findings, summary


# --- meter outbox ------------------------------------------------------------------------------------------------


def meter_findings(*, start: dt.datetime, end: dt.datetime, now: dt.datetime) -> tuple[list[Problem], dict]:
    rows = MeterOutbox.objects.filter(created_at__gte=start, created_at__lt=end)
    summary = {
        row["status"]: {"count": row["n"], "value": row["v"]}
        for row in rows.values("status").annotate(n=Count("id"), v=Sum("value")).order_by("status")
    }
    unsent_before = now - dt.timedelta(seconds=settings.RECONCILE_METER_GRACE_SECONDS)
    unacked_before = now - dt.timedelta(seconds=settings.RECONCILE_METER_ACK_SECONDS)
    late = rows.filter(
        Q(status=MeterOutbox.Status.FLAGGED)
        | Q(status=MeterOutbox.Status.PENDING, created_at__lt=unsent_before)
        | Q(status=MeterOutbox.Status.SENT, sent_at__lt=unacked_before)
    ).order_by("id")
    findings = []
    for row in late:
        kind, why = {
            MeterOutbox.Status.FLAGGED: ("meter_event_flagged", f"was flagged after {row.attempts} attempts"),
            MeterOutbox.Status.PENDING: ("meter_event_unsent", "is still unsent"),
            MeterOutbox.Status.SENT: ("meter_event_unacknowledged", "was sent but Stripe has not acknowledged it"),
        }[row.status]
        findings.append(Problem(
            kind, f"overage meter event {row.identifier} ({row.value}) {why}",
            amount=row.value,
            references={"outbox": row.id, "identifier": row.identifier, "transfer": row.transfer_id,
                        "account": row.account_id, "status": row.status, "last_error": row.last_error[:200]},
        ))
    return findings, summary
